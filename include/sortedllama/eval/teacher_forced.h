// Every exit's prediction along the full model's greedy continuation of a prompt, in one
// teacher-forced pass: what calibrate and tune learn from, since a greedy decoder that agrees with
// the full model so far sees exactly this context.
#pragma once
#include <cstdint>
#include <vector>

#include "sortedllama/decode/batch.h"
#include "sortedllama/model/llama.h"

namespace sl {

struct ExitPredictions {
  std::vector<int> token;         // [n]: the exit's greedy choice
  std::vector<float> top1, top2;  // [n]: its two highest probabilities (softmax over the decodable ids)
};

// Positions P-1 .. P+n-2 of prompt + continuation predict the continuation's tokens, and EOS after
// them when it ended there (n = its tokens, plus one for that EOS). One entry per exit, in the
// order given; ids at or above vocab_limit (> 0) are never chosen.
std::vector<ExitPredictions> teacher_forced(Llama& model, const std::vector<int>& prompt, const Generation& continuation,
                                            const std::vector<int>& exits, int64_t vocab_limit);

}  // namespace sl
