#include "sortedllama/eval/lm.h"

#include "sortedllama/model/objective.h"

namespace sl {

std::map<int, LmScore> eval_lm(Llama& model, const std::vector<std::vector<int>>& sequences,
                               const std::vector<int>& exits, int64_t batch_size) {
  torch::NoGradGuard no_grad;
  const int64_t chunk = default_loss_chunk(model->config().vocab_size);
  std::map<int, LmScore> scores;
  std::map<int, double> sums;
  for (size_t start = 0; start < sequences.size(); start += (size_t)batch_size) {
    std::vector<LabeledSequence> group;
    for (size_t i = start; i < std::min(sequences.size(), start + (size_t)batch_size); ++i) group.push_back({&sequences[i]});
    const Batch b = right_padded_batch(group, model->device());
    const auto hidden = model->forward(b.tokens, exits, b.key_mask);
    for (size_t e = 0; e < exits.size(); ++e) {
      sums[exits[e]] += exit_nll_sum(model, hidden[e], b.labels, exits[e], chunk);
      scores[exits[e]].tokens += b.targets;
    }
  }
  for (auto& [exit, s] : scores) {
    s.nll = s.tokens ? sums[exit] / (double)s.tokens : 0.0;
    s.ppl = std::exp(s.nll);
  }
  return scores;
}

}  // namespace sl
