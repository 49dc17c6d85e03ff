// finetune: SoFT (sorted loss over nested sub-models), SFT, SFT+ICT and extracted fine-tuning.
#pragma once
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "sortedllama/data.h"
#include "sortedllama/distributed.h"
#include "sortedllama/model.h"
#include "sortedllama/train_config.h"

namespace sl {

// One right-padded batch. labels[b,t] is the token position t must predict (tokens[b,t+1] when
// that token is a loss target), -100 elsewhere.
struct Batch {
  torch::Tensor tokens;    // [B,T] int64
  torch::Tensor key_mask;  // [B,T] int64, 1 = real token
  torch::Tensor labels;    // [B,T] int64
  int64_t targets = 0;     // labels >= 0
};
Batch collate(const std::vector<const Example*>& examples, torch::Device device);
int64_t target_count(const Example& e);  // the labels >= 0 that collate() gives this example

// Linear warmup from 0, then cosine decay to lr * min_ratio (HF's cosine schedule with a floor).
double lr_at(int64_t step, int64_t total, int64_t warmup, double lr, double min_ratio);

// The multi-exit loss and its gradients for one batch, without ever holding logits for more than
// `chunk` positions of one exit: the trunk runs once; each exit's loss is back-propagated on its
// own into the head, the final norm and a detached copy of its hidden state; then one backward
// through the trunk takes all exits' hidden-state gradients together. The batch contributes
// weight[e] * sum_NLL_e / norm to the gradient (norm = target tokens of the whole optimizer step,
// so gradient accumulation equals one big batch). Returns each exit's summed NLL.
std::map<int, double> multi_exit_backward(Llama& model, const Batch& batch, const std::vector<int>& exits,
                                          const std::vector<double>& weights, double norm, int64_t chunk,
                                          bool checkpoint_activations);

// Mean response-token NLL per exit over `data` (no gradients). With `dist`, each rank scores every
// world-th example and the sums are all-reduced.
std::map<int, double> validation_loss(Llama& model, const std::vector<Example>& data, const std::vector<int>& exits,
                                      int64_t batch_size, Dist* dist = nullptr);

struct FinetuneResult {
  std::string final_dir;
  int64_t steps = 0;                    // optimizer steps taken in total (including before a resume)
  std::vector<double> losses;           // training loss of each step run in this call
  std::map<int, double> valid_loss;     // per exit, at the end (empty without validation data)
};

struct FinetuneHooks {
  int64_t stop_after = 0;  // tests: end (as if killed) after this many steps, without the final save
};

// Runs the finetune described by a resolved config (train_config.h). resume: "" = fresh start,
// "auto" = the latest checkpoint in out_dir, else a checkpoint directory. Under torchrun-style
// environment variables (RANK, WORLD_SIZE, ...) it is one data-parallel rank: train.batch_size is
// the global micro-batch, split over the ranks; rank 0 logs and writes.
FinetuneResult finetune(const nlohmann::json& config, const std::string& resume, torch::Device device,
                        const FinetuneHooks& hooks = {});

}  // namespace sl
