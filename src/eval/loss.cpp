#include "sortedllama/eval/tasks.h"

#include "sortedllama/data/examples.h"
#include "sortedllama/model/objective.h"

namespace sl {

TaskResult eval_loss(Llama& model, const Tokenizer& tok, const std::string& data, const std::vector<int>& exits,
                     int64_t batch_size, int64_t limit) {
  torch::NoGradGuard no_grad;
  DataOptions o;
  o.format = "alpaca";
  o.max_seq_len = model->config().max_seq_len;
  DataStats st;
  std::vector<Example> ex = load_examples(data, tok, o, &st);
  if (limit > 0 && (int64_t)ex.size() > limit) ex.resize(limit);
  const int64_t chunk = default_loss_chunk(model->config().vocab_size);
  std::map<int, double> sums;
  int64_t tokens_scored = 0;
  Progress progress("loss", (int64_t)ex.size());
  for (size_t start = 0; start < ex.size(); start += (size_t)batch_size) {
    std::vector<LabeledSequence> group;
    for (size_t i = start; i < std::min(ex.size(), start + (size_t)batch_size); ++i)
      group.push_back({&ex[i].tokens, &ex[i].target});
    const Batch b = right_padded_batch(group, model->device());
    const std::vector<torch::Tensor> hidden = model->forward(b.tokens, exits, b.key_mask);  // each [B,T,D]
    tokens_scored += b.targets;
    for (size_t e = 0; e < exits.size(); ++e) sums[exits[e]] += exit_nll_sum(model, hidden[e], b.labels, exits[e], chunk);
    progress.add((int64_t)group.size());
  }
  TaskResult r("loss", st.records, (int64_t)ex.size());
  for (int e : exits) {
    const double nll = tokens_scored ? sums[e] / (double)tokens_scored : 0.0;
    r.rows.emplace_back(std::to_string(e), e, ojson{{"loss", nll}, {"ppl", std::exp(nll)}, {"tokens", tokens_scored}});
  }
  return r;
}

}  // namespace sl
