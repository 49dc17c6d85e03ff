// AdamW across data-parallel ranks, with fp32 master weights and optionally ZeRO stage 2.
//
// Every rank back-propagates its share of the batch into the parameters' .grad. Gradients are
// summed over ranks in buckets (decoder layers last to first, then the rest); during the step's last
// backward pass a bucket of decoder-layer gradients starts its collective as soon as they are all
// final (hooks on their gradient accumulators), so communication overlaps the rest of the backward
// pass. step() then
//   1. completes the sums: all-reduce (every rank updates every parameter), or, when
//      sharded, reduce each parameter's gradient onto the one rank that owns it (the parameters
//      are partitioned whole, balanced by size: Gloo has no reduce-scatter, so this is the
//      reduce-scatter of a parameter partition);
//   2. clips by the global gradient norm;
//   3. runs AdamW (libtorch's formula, one pass per parameter: see adamw_update) on the owned
//      parameters' fp32 master copies (the parameters themselves when they are fp32; a separate
//      fp32 copy when the model computes in bf16, whose gradients autograd accumulates in fp32); a
//      parameter no backward pass reached is left alone;
//   4. broadcasts each updated parameter from its owner (the matching all-gather).
// Per-rank memory, Ψ parameters, N ranks, bf16 model: 2Ψ weights + 4Ψ fp32 gradients + 12Ψ/N for fp32
// master weights and the two moments (fp32 model: 4Ψ + 4Ψ + 8Ψ/N).
#pragma once
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/csrc/autograd/function.h>
#include <torch/torch.h>

#include "sortedllama/train/distributed.h"

namespace sl {

struct AdamWConfig {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;  // decay applies to matrices only
};

// One AdamW step's scalars for one parameter.
struct AdamWStep {
  float beta1, one_minus_beta1, beta2, one_minus_beta2, eps;
  float decay;       // 1 - lr * weight_decay
  float step_size;   // lr / (1 - beta1^step)
  float sqrt_bc2;    // sqrt(1 - beta2^step)
  float grad_scale;  // gradient clipping's factor
  static AdamWStep of(const AdamWConfig& c, double lr, double weight_decay, int64_t step, double grad_scale);
};

// libtorch's AdamW update (as torch::optim::AdamW computes it) of p with gradient grad_scale * g:
//   p *= decay; m = beta1 m + (1 - beta1) g; v = beta2 v + (1 - beta2) g^2;
//   p -= step_size * m / (sqrt(v) / sqrt_bc2 + eps)
// in one pass over fp32 CPU tensors (tensor ops elsewhere), where libtorch streams each tensor
// through about ten ops and a temporary.
void adamw_update(torch::Tensor& p, const torch::Tensor& g, torch::Tensor& m, torch::Tensor& v, const AdamWStep& a);

// sum(g^2) in float64, as a [1] CPU tensor: one pass without a temporary on the CPU.
torch::Tensor sum_of_squares(const torch::Tensor& g);

// The full optimizer state, gathered on rank 0: "<param>.exp_avg", "<param>.exp_avg_sq" and, for
// non-fp32 parameters, "<param>.master" (fp32 CPU tensors), plus each parameter's step count.
struct OptimizerState {
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  nlohmann::json steps = nlohmann::json::object();
};

class DistAdamW {
 public:
  // `params` must list the same tensors in the same order on every rank. A bucket holds at most
  // `bucket_mb` MiB of fp32 gradients (at least one tensor).
  DistAdamW(std::vector<std::pair<std::string, torch::Tensor>> params, const AdamWConfig& cfg, Dist& dist, bool shard,
            double bucket_mb = 25);

  // The next backward pass completes this step's gradients: reduce decoder layers' as they finish.
  void overlap_next_backward();
  int64_t bucket_count() const { return (int64_t)buckets_.size(); }
  int64_t early_buckets() const { return early_; }  // of them, started during the last step's backward

  // Returns the global gradient norm before clipping (clip <= 0: no clipping).
  double step(double lr, double clip);
  // step() in two halves, so that a caller can look at the norm before anything changes:
  // complete and clip the gradients (returns the norm), then update the parameters.
  double reduce_and_clip(double clip);
  void apply(double lr);
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
    torch::Tensor exp_avg, exp_avg_sq;  // AdamW's moments, fp32 like master; undefined before the first step
    int64_t steps = 0;                  // AdamW steps taken
    double weight_decay = 0;            // the config's for matrices, 0 for vectors (norms)
    int owner = -1;        // owning rank; -1 = every rank (not sharded)
  };
  struct Bucket {
    std::vector<size_t> slots;
    int root = -1;  // reduce onto this rank (ZeRO-2), or -1: all-reduce
    size_t ready = 0;
    torch::Tensor flat;  // the gradients in flight, fp32
    std::shared_ptr<Dist::Work> work;
  };
  bool owns(const Slot& s) const { return s.owner < 0 || s.owner == dist_.rank(); }
  void slot_ready(size_t i);  // a hooked gradient is final
  void launch_ready();        // starts, in order, the buckets whose gradients are all final
  void launch(Bucket& b);
  void reduce_gradients();
  void broadcast_parameters();

  std::vector<Slot> slots_;
  AdamWConfig cfg_;
  Dist& dist_;
  bool shard_;
  double grad_scale_ = 1.0;  // reduce_and_clip's clipping factor, applied as apply() reads the gradients
  std::vector<Bucket> buckets_;  // in launch order, the same on every rank
  std::vector<size_t> bucket_of_;
  std::vector<bool> slot_ready_;
  size_t launched_ = 0;  // buckets [0, launched_) are in flight
  bool armed_ = false;
  int64_t early_ = 0;
  std::vector<std::shared_ptr<torch::autograd::Node>> hooked_;  // keeps the hooked accumulators alive
  std::mutex mu_;  // hooks may run on autograd's device threads
};

}  // namespace sl
