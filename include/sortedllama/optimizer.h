// AdamW across data-parallel ranks, with fp32 master weights and optionally ZeRO stage 2.
//
// Every rank back-propagates its share of the batch into the parameters' .grad. step() then
//   1. sums the gradients over ranks: all-reduce (every rank updates every parameter), or, when
//      sharded, reduce each parameter's gradient onto the one rank that owns it (the parameters
//      are partitioned whole, balanced by size: Gloo has no reduce-scatter, so this is the
//      reduce-scatter of a parameter partition);
//   2. clips by the global gradient norm;
//   3. runs torch::optim::AdamW on the owned parameters' fp32 master copies (the parameters
//      themselves when they are fp32; a separate fp32 copy when the model computes in bf16);
//   4. broadcasts each updated parameter from its owner (the matching all-gather).
// Per-rank memory, Ψ parameters, N ranks, bf16 model: 2Ψ weights + 2Ψ gradients + 12Ψ/N for fp32
// master weights and the two moments (fp32 model: 4Ψ + 4Ψ + 8Ψ/N).
#pragma once
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "sortedllama/distributed.h"

namespace sl {

struct AdamWConfig {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;  // decay applies to matrices only
};

// The full optimizer state, gathered on rank 0: "<param>.exp_avg", "<param>.exp_avg_sq" and, for
// non-fp32 parameters, "<param>.master" (fp32 CPU tensors), plus each parameter's step count.
struct OptimizerState {
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  nlohmann::json steps = nlohmann::json::object();
};

class DistAdamW {
 public:
  // `params` must list the same tensors in the same order on every rank.
  DistAdamW(std::vector<std::pair<std::string, torch::Tensor>> params, const AdamWConfig& cfg, Dist& dist, bool shard);

  // Returns the global gradient norm before clipping (clip <= 0: no clipping).
  double step(double lr, double clip);
  void zero_grad();

  // Collective (every rank calls): the complete state on rank 0, empty elsewhere.
  OptimizerState gather_state();
  // Each rank takes its own parameters' entries; `lookup(name)` returns the stored fp32 tensor or
  // an undefined one. Works with any earlier number of ranks. Throws naming the tensor on a mismatch.
  void load_state(const std::function<torch::Tensor(const std::string&)>& lookup, const nlohmann::json& steps,
                  const std::string& source);

  int64_t owned_numel() const;  // elements whose moments this rank holds

 private:
  struct Slot {
    std::string name;
    torch::Tensor param;   // the model's tensor (any dtype)
    torch::Tensor master;  // fp32 copy updated by AdamW (== param when param is fp32); undefined if not owned
    int owner = -1;        // owning rank; -1 = every rank (not sharded)
  };
  bool owns(const Slot& s) const { return s.owner < 0 || s.owner == dist_.rank(); }
  void reduce_gradients();
  void broadcast_parameters();

  std::vector<Slot> slots_;
  Dist& dist_;
  bool shard_;
  std::unique_ptr<torch::optim::AdamW> opt_;
};

}  // namespace sl
