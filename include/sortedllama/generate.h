// Plain autoregressive decoding of one sub-model, batched, with a KV cache.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "sortedllama/model.h"
#include "sortedllama/sampling.h"

namespace sl {

struct GenerateOptions {
  int exit_layer = 0;  // sub-model to run; 0 = the full model
  int64_t max_new_tokens = 256;
  SamplingParams sampling;
  uint64_t seed = 0;
  int64_t eos_id = 2;
  // Called after each new token of sequence `row` (streaming, stop strings); returning true ends
  // that sequence with finish_reason "stop".
  std::function<bool(size_t row, const std::vector<int>& tokens)> on_token;
};

struct Generation {
  std::vector<int> tokens;    // new tokens only (EOS excluded)
  std::string finish_reason;  // "eos", "length" or "stop"
};

struct GenerateStats {
  int64_t prompt_tokens = 0, new_tokens = 0;
  double prefill_ms = 0, decode_ms = 0;
};

// Left-pads the prompts into one batch; finished sequences leave the batch. Greedy output equals
// what full recomputation (and unbatched decoding) gives.
std::vector<Generation> generate(Llama& model, const std::vector<std::vector<int>>& prompts,
                                 const GenerateOptions& opt, GenerateStats* stats = nullptr);

}  // namespace sl
