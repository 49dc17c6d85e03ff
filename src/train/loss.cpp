#include "sortedllama/train/loss.h"

#include "sortedllama/util/stopwatch.h"

namespace sl {

using torch::Tensor;

int64_t target_count(const Example& e) {
  int64_t n = 0;
  for (size_t t = 0; t + 1 < e.tokens.size(); ++t) n += e.target[t + 1] ? 1 : 0;
  return n;
}

Batch collate(const std::vector<const Example*>& examples, torch::Device device) {
  std::vector<LabeledSequence> seqs;
  for (const Example* e : examples) seqs.push_back({&e->tokens, &e->target});
  return right_padded_batch(seqs, device);
}

namespace {
// Per-layer activation checkpointing: keep only each layer's input and recompute the layer during
// the backward pass (the backward of the recomputed layer runs re-entrantly inside this one).
struct CheckpointedLayer : torch::autograd::Function<CheckpointedLayer> {
  static Tensor forward(torch::autograd::AutogradContext* ctx, Tensor x, Tensor cos, Tensor sin, Tensor mask,
                        int64_t layer, int64_t model_ptr) {
    ctx->save_for_backward({x, cos, sin, mask});
    ctx->saved_data["layer"] = layer;
    ctx->saved_data["model"] = model_ptr;
    auto* model = reinterpret_cast<LlamaImpl*>(model_ptr);
    return model->layer((int)layer, x, AttnInputs{cos, sin, mask}, nullptr);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto saved = ctx->get_saved_variables();
    auto* model = reinterpret_cast<LlamaImpl*>(ctx->saved_data["model"].toInt());
    Tensor x = saved[0].detach().requires_grad_(true);
    {
      torch::AutoGradMode enable(true);
      Tensor y = model->layer((int)ctx->saved_data["layer"].toInt(), x, AttnInputs{saved[1], saved[2], saved[3]}, nullptr);
      torch::autograd::backward({y}, {grad_out[0]});
    }
    return {x.grad(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

// The trunk of a training step: layers 1..max(exits), each optionally checkpointed, with layer
// dropout per sequence when layer_keep [n_layers, B] is defined. Dropout lives here rather than in
// the model, so evaluation and decoding (LlamaImpl::forward) cannot apply it.
std::vector<Tensor> trunk_forward(Llama& model, const Batch& b, const std::vector<int>& exits, bool checkpoint,
                                  const Tensor& layer_keep) {
  const int64_t B = b.tokens.size(0), T = b.tokens.size(1);
  AttnInputs in = model->attn_inputs(b.key_mask, B, 0, T);
  Tensor x = model->embed(b.tokens);  // [B,T,D]
  const int deepest = *std::max_element(exits.begin(), exits.end());
  std::vector<Tensor> hidden(exits.size());
  for (int i = 0; i < deepest; ++i) {
    Tensor y = checkpoint ? CheckpointedLayer::apply(x, in.cos, in.sin, in.mask, (int64_t)i, reinterpret_cast<int64_t>(model.get()))
                          : model->layer(i, x, in, nullptr);
    x = layer_keep.defined() ? torch::where(layer_keep[i].view({B, 1, 1}), y, x) : y;
    for (size_t e = 0; e < exits.size(); ++e)
      if (exits[e] == i + 1) hidden[e] = x;
  }
  return hidden;
}
}  // namespace

std::map<int, double> multi_exit_backward(Llama& model, const Batch& batch, const std::vector<int>& exits,
                                          const std::vector<double>& weights, double norm, int64_t chunk,
                                          bool checkpoint_activations, const Tensor& layer_keep, StepPhases* phases) {
  StepPhases local;
  StepPhases& t = phases ? *phases : local;
  Stopwatch clock;
  std::vector<Tensor> hidden = trunk_forward(model, batch, exits, checkpoint_activations, layer_keep);  // each [B,T,D]
  t.trunk_forward += clock.ms();
  clock.restart();
  std::map<int, double> nll;
  std::vector<Tensor> roots, root_grads;
  for (size_t e = 0; e < exits.size(); ++e) {
    // A leaf copy of the exit's hidden state collects this exit's gradient; the trunk's graph stays.
    Tensor leaf = hidden[e].detach().requires_grad_(hidden[e].requires_grad());
    nll[exits[e]] = exit_nll_sum(model, leaf, batch.labels, exits[e], chunk, weights[e] / norm);
    if (leaf.requires_grad() && leaf.grad().defined()) {
      roots.push_back(hidden[e]);
      root_grads.push_back(leaf.grad());
    }
  }
  t.heads += clock.ms();
  clock.restart();
  if (!roots.empty()) torch::autograd::backward(roots, root_grads);
  t.trunk_backward += clock.ms();
  return nll;
}

std::map<int, double> validation_loss(Llama& model, const std::vector<Example>& data, const std::vector<int>& exits,
                                      int64_t batch_size, Dist* dist) {
  torch::NoGradGuard no_grad;
  auto dev = model->device();
  const int rank = dist ? dist->rank() : 0, world = dist ? dist->world() : 1;
  std::vector<const Example*> mine;  // rank r scores examples r, r + world, ...
  for (size_t i = (size_t)rank; i < data.size(); i += (size_t)world) mine.push_back(&data[i]);
  Tensor sums = torch::zeros({(int64_t)exits.size() + 1}, torch::kFloat64);  // per exit, then targets
  for (size_t s = 0; s < mine.size(); s += (size_t)batch_size) {
    std::vector<const Example*> group(mine.begin() + s, mine.begin() + std::min(mine.size(), s + (size_t)batch_size));
    Batch b = collate(group, dev);
    auto hidden = model->forward(b.tokens, exits, b.key_mask);
    for (size_t e = 0; e < exits.size(); ++e)
      sums[e] += exit_nll_sum(model, hidden[e], b.labels, exits[e], default_loss_chunk(model->config().vocab_size));
    sums[(int64_t)exits.size()] += (double)b.targets;
  }
  if (dist) dist->all_reduce_sum(sums);
  std::map<int, double> out;
  for (size_t e = 0; e < exits.size(); ++e)
    out[exits[e]] = sums[e].item<double>() / std::max(1.0, sums[(int64_t)exits.size()].item<double>());
  return out;
}

}  // namespace sl
