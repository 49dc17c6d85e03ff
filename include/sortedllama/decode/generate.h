// Decoding, batched, with a KV cache: one entry point for every strategy (DecodeOptions::strategy).
//   plain:       autoregressive decoding of sub-model exit_layer;
//   speculative: a shallow sub-model of the same checkpoint drafts, sub-model exit_layer verifies
//                a chain of drafts per round, or with speculative.tree_nodes a draft tree (greedy
//                only) that also verifies alternatives where the draft was least sure (greedy
//                output equals plain greedy output; sampling follows the verifier's
//                distribution; see src/decode/speculative.cpp);
//   dynamic:     each token leaves at the first exit that is confident enough, with CALM-style
//                state copying for the layers it skips (see src/decode/dynamic.cpp).
// Every strategy left-pads the prompts into one batch and lets finished rows leave it; a row
// finishes with "eos", "length" or "stop" (StopRule::on_token, which sees every emitted token in
// order). Greedy output equals what full recomputation and unbatched decoding give.
#pragma once
#include <vector>

#include "sortedllama/decode/batch.h"
#include "sortedllama/decode/options.h"
#include "sortedllama/decode/stats.h"
#include "sortedllama/model/llama.h"

namespace sl {

// Checks the options against the model (DecodeOptions::resolved) and decodes; adds to `stats`.
std::vector<Generation> generate(Llama& model, const std::vector<std::vector<int>>& prompts, const DecodeOptions& opt,
                                 DecodeStats* stats = nullptr);

// generate() over consecutive batches of at most batch_size prompts; outputs in prompt order.
std::vector<Generation> generate_in_batches(Llama& model, const std::vector<std::vector<int>>& prompts,
                                            const DecodeOptions& opt, int64_t batch_size, DecodeStats* stats = nullptr);

// The loop of plain decoding with sub-model `exit`, from a cache that already holds the batch's
// prompts: logits [B,V] predict each running row's next token. Writes out[batch.rows[r]]; adds
// the new tokens and the decoding time to stats. Uses opt's stop rule and sampling.
void decode_plain(Llama& model, int exit, DecodeBatch& batch, KVCache& cache, torch::Tensor logits,
                  const DecodeOptions& opt, at::Generator& gen, std::vector<Generation>& out, DecodeStats& stats);

}  // namespace sl
