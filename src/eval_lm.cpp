#include "sortedllama/eval_lm.h"

namespace sl {

torch::Tensor exit_nll_sum(Llama& model, const torch::Tensor& hidden, const torch::Tensor& labels, int exit,
                           int64_t chunk) {
  torch::Tensor flat_labels = labels.reshape({-1});                        // [B*T]
  torch::Tensor pos = flat_labels.ge(0).nonzero().squeeze(1);              // [N] labelled positions
  torch::Tensor h = hidden.reshape({-1, hidden.size(-1)}).index_select(0, pos);  // [N,D]
  torch::Tensor y = flat_labels.index_select(0, pos);                      // [N]
  torch::Tensor total = torch::zeros({}, hidden.options().dtype(torch::kFloat32));
  for (int64_t s = 0; s < h.size(0); s += chunk) {
    const int64_t n = std::min(chunk, h.size(0) - s);
    torch::Tensor logits = model->head(h.narrow(0, s, n), exit).to(torch::kFloat32);  // [n,V]
    total = total + torch::nn::functional::cross_entropy(
                        logits, y.narrow(0, s, n),
                        torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
  }
  return total;
}

std::map<int, LmScore> eval_lm(Llama& model, const std::vector<std::vector<int>>& sequences,
                               const std::vector<int>& exits, int64_t batch_size) {
  torch::NoGradGuard no_grad;
  auto dev = model->body->norm->weight.device();
  std::map<int, LmScore> scores;
  std::map<int, double> sums;
  for (size_t start = 0; start < sequences.size(); start += batch_size) {
    const size_t end = std::min(sequences.size(), start + (size_t)batch_size);
    int64_t T = 0;
    for (size_t i = start; i < end; ++i) T = std::max<int64_t>(T, (int64_t)sequences[i].size());
    const int64_t B = (int64_t)(end - start);
    torch::Tensor tokens = torch::zeros({B, T}, torch::kInt64), mask = torch::zeros({B, T}, torch::kInt64);
    torch::Tensor labels = torch::full({B, T}, -100, torch::kInt64);
    for (int64_t b = 0; b < B; ++b) {
      const auto& s = sequences[start + b];
      for (size_t t = 0; t < s.size(); ++t) {
        tokens[b][t] = s[t];
        mask[b][t] = 1;
        if (t + 1 < s.size()) labels[b][t] = s[t + 1];
      }
    }
    auto hidden = model->forward(tokens.to(dev), exits, mask.to(dev));
    labels = labels.to(dev);
    const int64_t n = labels.ge(0).sum().item<int64_t>();
    for (size_t e = 0; e < exits.size(); ++e) {
      sums[exits[e]] += exit_nll_sum(model, hidden[e], labels, exits[e]).item<double>();
      scores[exits[e]].tokens += n;
    }
  }
  for (auto& [exit, s] : scores) {
    s.nll = s.tokens ? sums[exit] / (double)s.tokens : 0.0;
    s.ppl = std::exp(s.nll);
  }
  return scores;
}

}  // namespace sl
