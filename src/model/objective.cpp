#include "sortedllama/model/objective.h"

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

double exit_nll_sum(Llama& model, const Tensor& hidden, const Tensor& labels, int exit, int64_t chunk,
                    double grad_scale) {
  Tensor flat_labels = labels.reshape({-1});                   // [B*T]
  Tensor pos = flat_labels.ge(0).nonzero().squeeze(1);         // [N] labelled positions
  Tensor flat_hidden = hidden.reshape({-1, hidden.size(-1)});  // [B*T,D]
  double sum = 0;
  for (int64_t s = 0; s < pos.size(0); s += chunk) {
    Tensor p = pos.narrow(0, s, std::min(chunk, pos.size(0) - s));                      // [n]
    Tensor logits = model->head(flat_hidden.index_select(0, p), exit).to(torch::kFloat32);  // [n,V]
    Tensor loss = F::cross_entropy(logits, flat_labels.index_select(0, p),
                                   F::CrossEntropyFuncOptions().reduction(torch::kSum));
    sum += loss.item<double>();
    if (grad_scale != 0 && loss.requires_grad()) (loss * grad_scale).backward();
  }
  return sum;
}

int64_t default_loss_chunk(int64_t vocab_size) { return std::max<int64_t>(32, (8 << 20) / (4 * vocab_size)); }

}  // namespace sl
