// Plain autoregressive decoding of one sub-model, batched, with a KV cache.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "sortedllama/decode/batch.h"
#include "sortedllama/decode/sampling.h"
#include "sortedllama/model/llama.h"

namespace sl {

struct GenerateOptions : StopRule {
  int exit_layer = 0;  // sub-model to run; 0 = the full model
  SamplingParams sampling;
  uint64_t seed = 0;
};

struct GenerateStats {
  int64_t prompt_tokens = 0, new_tokens = 0;
  double prefill_ms = 0, decode_ms = 0;
};

// Left-pads the prompts into one batch; finished sequences leave the batch. Greedy output equals
// what full recomputation (and unbatched decoding) gives.
std::vector<Generation> generate(Llama& model, const std::vector<std::vector<int>>& prompts,
                                 const GenerateOptions& opt, GenerateStats* stats = nullptr);

// The decoding loop of generate(), from a cache that already holds the batch's prompts:
// logits [B,V] predict each running row's next token. Writes out[batch.rows[r]]; adds the new
// tokens and the decoding time to stats (may be null).
void decode_plain(Llama& model, int exit, DecodeBatch& batch, KVCache& cache, torch::Tensor logits,
                  const GenerateOptions& opt, at::Generator& gen, std::vector<Generation>& out, GenerateStats* stats);

}  // namespace sl
