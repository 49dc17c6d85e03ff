// eval --task lm: per-exit negative log-likelihood of plain text.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "sortedllama/model/llama.h"

namespace sl {

struct LmScore {
  double nll = 0;      // mean next-token NLL (natural log) per scored token
  double ppl = 0;      // exp(nll)
  int64_t tokens = 0;  // tokens scored (every token after BOS)
};

// Each sequence is BOS + text tokens (truncated to the model's max_seq_len); batched.
std::map<int, LmScore> eval_lm(Llama& model, const std::vector<std::vector<int>>& sequences,
                               const std::vector<int>& exits, int64_t batch_size);

}  // namespace sl
