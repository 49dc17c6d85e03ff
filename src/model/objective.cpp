#include "sortedllama/model/objective.h"

#include "sortedllama/model/softmax_rows.h"

namespace sl {

using torch::Tensor;
namespace F = torch::nn::functional;

Batch right_padded_batch(const std::vector<LabeledSequence>& seqs, torch::Device device) {
  const int64_t B = (int64_t)seqs.size();
  int64_t T = 0;
  for (const auto& s : seqs) T = std::max<int64_t>(T, (int64_t)s.tokens->size());
  Tensor tokens = torch::zeros({B, T}, torch::kInt64), mask = torch::zeros({B, T}, torch::kInt64);
  Tensor labels = torch::full({B, T}, kIgnoreLabel, torch::kInt64);
  auto tok = tokens.accessor<int64_t, 2>(), msk = mask.accessor<int64_t, 2>(), lab = labels.accessor<int64_t, 2>();
  int64_t targets = 0;
  for (int64_t b = 0; b < B; ++b) {
    const std::vector<int>& t = *seqs[b].tokens;
    const std::vector<uint8_t>* tg = seqs[b].targets;
    for (size_t i = 0; i < t.size(); ++i) {
      tok[b][i] = t[i];
      msk[b][i] = 1;
      if (i + 1 < t.size() && (!tg || (*tg)[i + 1])) {
        lab[b][i] = t[i + 1];
        ++targets;
      }
    }
  }
  return {tokens.to(device), mask.to(device), labels.to(device), targets};
}

namespace {
// In place on one chunk's fp32 logits [m,V] and labels [m,1]: the NLL sum, and with grad the
// logits turned into grad_scale * (softmax - onehot). CPU rows take softmax_nll_rows; elsewhere
// (CUDA) tensor ops do the same.
double chunk_nll(Tensor& logits, const Tensor& lab, double grad_scale, bool grad) {
  if (logits.is_cpu()) {
    const Tensor l = lab.contiguous();
    return softmax_nll_rows(logits.data_ptr<float>(), l.data_ptr<int64_t>(), logits.size(0), logits.size(1), grad_scale,
                            grad);
  }
  Tensor target = logits.gather(1, lab), top = std::get<0>(logits.max(1, /*keepdim=*/true));
  Tensor sum_exp = logits.sub_(top).exp_().sum(1, /*keepdim=*/true);  // logits now exp(logit - max)
  const double nll = (sum_exp.log() + top - target).sum().item<double>();
  if (grad)
    logits.mul_(sum_exp.reciprocal().mul_(grad_scale)).scatter_add_(1, lab, torch::full_like(target, -grad_scale));
  return nll;
}

// The fp32 logits buffer of a chunk. On the CPU one per thread is kept between calls: a fresh one
// (tens of MiB, so mapped anew each time) costs its page faults and zeroing at every exit of every step.
Tensor logits_buffer(int64_t rows, int64_t V, torch::Device device) {
  auto opts = torch::dtype(torch::kFloat32).device(device);
  if (!device.is_cpu()) return torch::empty({rows, V}, opts);
  thread_local Tensor kept;
  if (!kept.defined() || kept.numel() < rows * V) kept = torch::empty({rows * V}, opts);
  return kept.narrow(0, 0, rows * V).view({rows, V});
}

// The head and cross-entropy of n normed positions as one autograd node. Forward runs a chunk of
// positions at a time and, when gradients are wanted, turns each chunk's fp32 logits in place into
// grad_scale * (softmax - onehot), the gradient of the scaled NLL with respect to them, which feeds
// the two gradient GEMMs at once: no log-softmax, no second logits-sized tensor, and one fp32
// head gradient accumulated across the chunks. Outputs: grad_scale * NLL sum (differentiable; its
// backward hands out the gradients computed here) and the NLL sum (float64, not differentiable).
struct FusedHeadNll : torch::autograd::Function<FusedHeadNll> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, Tensor h, Tensor w,
                                                Tensor labels, int64_t chunk, double grad_scale) {
    const int64_t n = h.size(0);
    const bool want_h = grad_scale != 0 && ctx->needs_input_grad(0), want_w = grad_scale != 0 && ctx->needs_input_grad(1);
    Tensor gh = want_h ? torch::empty_like(h) : Tensor();                                      // [n,D]
    Tensor gw = want_w ? torch::zeros(w.sizes(), w.options().dtype(torch::kFloat32)) : Tensor();  // [V,D]
    Tensor buffer = logits_buffer(std::min(chunk, n), w.size(0), w.device());  // one for every chunk
    double nll = 0;
    for (int64_t s = 0; s < n; s += chunk) {
      const int64_t m = std::min(chunk, n - s);
      Tensor hc = h.narrow(0, s, m), lab = labels.narrow(0, s, m).unsqueeze(1);  // [m,D], [m,1]
      Tensor logits = buffer.narrow(0, 0, m);                                     // [m,V]
      if (w.scalar_type() == torch::kFloat32) torch::mm_out(logits, hc, w.t());
      else logits.copy_(torch::mm(hc, w.t()));
      nll += chunk_nll(logits, lab, grad_scale, want_h || want_w);
      if (!want_h && !want_w) continue;
      if (want_h) {
        Tensor rows = gh.narrow(0, s, m);
        torch::mm_out(rows, logits.to(w.scalar_type()), w);
      }
      if (want_w) gw.addmm_(logits.t(), hc.to(torch::kFloat32));
    }
    Tensor nll_t = torch::tensor(nll, torch::kFloat64);
    ctx->mark_non_differentiable({nll_t});
    ctx->saved_data["gh"] = gh;
    ctx->saved_data["gw"] = gw.defined() ? gw.to(w.scalar_type()) : gw;
    return {torch::tensor(grad_scale * nll, h.options().dtype(torch::kFloat32)), nll_t};
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    Tensor gh = ctx->saved_data["gh"].toTensor(), gw = ctx->saved_data["gw"].toTensor();
    if (grad_out[0].item<double>() != 1.0) {  // backward() of the loss itself passes 1
      if (gh.defined()) gh = gh * grad_out[0];
      if (gw.defined()) gw = gw * grad_out[0];
    }
    return {gh, gw, Tensor(), Tensor(), Tensor()};
  }
};
}  // namespace

double exit_nll_sum(Llama& model, const Tensor& hidden, const Tensor& labels, int exit, int64_t chunk,
                    double grad_scale) {
  Tensor flat_labels = labels.reshape({-1});            // [B*T]
  Tensor pos = flat_labels.ge(0).nonzero().squeeze(1);  // [N] labelled positions
  if (pos.size(0) == 0) return 0;
  Tensor normed = model->body->norm(hidden.reshape({-1, hidden.size(-1)}).index_select(0, pos));  // [N,D]
  auto out = FusedHeadNll::apply(normed, model->head_weight(exit), flat_labels.index_select(0, pos), chunk, grad_scale);
  if (grad_scale != 0 && out[0].requires_grad()) out[0].backward();
  return out[1].item<double>();
}

int64_t default_loss_chunk(int64_t vocab_size) { return std::max<int64_t>(32, (64 << 20) / (4 * vocab_size)); }

}  // namespace sl
