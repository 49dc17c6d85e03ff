// The training objective of every method: the weighted multi-exit loss of one batch and its
// gradients, and the validation loss per exit.
#pragma once
#include <map>
#include <vector>

#include <torch/torch.h>

#include "sortedllama/data/examples.h"
#include "sortedllama/model/llama.h"
#include "sortedllama/model/objective.h"
#include "sortedllama/train/distributed.h"

namespace sl {

// The examples as one right-padded batch (model/objective.h).
Batch collate(const std::vector<const Example*>& examples, torch::Device device);
int64_t target_count(const Example& e);  // the labels >= 0 that collate() gives this example

// Where a training step's wall time goes, in milliseconds; the phases are timed with a steady clock
// only between them, which is cheap enough to leave on. `heads` is every exit's final norm, head and
// cross-entropy, forward and backward together.
struct StepPhases {
  double data = 0, trunk_forward = 0, heads = 0, trunk_backward = 0, optimizer = 0;
};

// The multi-exit loss and its gradients for one batch, without ever holding logits for more than
// `chunk` positions of one exit: the trunk runs once; each exit's loss is back-propagated on its
// own into the head, the final norm and a detached copy of its hidden state; then one backward
// through the trunk takes all exits' hidden-state gradients together. The batch contributes
// weight[e] * sum_NLL_e / norm to the gradient (norm = target tokens of the whole optimizer step,
// so gradient accumulation equals one big batch). layer_keep [n_layers, B] bool (undefined = keep
// all) is layer dropout: where it is false, that sequence's residual stream passes the layer
// unchanged. Returns each exit's summed NLL; adds the time of its phases to `phases` when given.
std::map<int, double> multi_exit_backward(Llama& model, const Batch& batch, const std::vector<int>& exits,
                                          const std::vector<double>& weights, double norm, int64_t chunk,
                                          bool checkpoint_activations, const torch::Tensor& layer_keep = {},
                                          StepPhases* phases = nullptr);

// Mean response-token NLL per exit over `data` (no gradients). With `dist`, each rank scores every
// world-th example and the sums are all-reduced.
std::map<int, double> validation_loss(Llama& model, const std::vector<Example>& data, const std::vector<int>& exits,
                                      int64_t batch_size, Dist* dist = nullptr);

}  // namespace sl
