// Self-speculative decoding: a shallow sub-model of the same checkpoint drafts, a deeper one verifies.
//
// Round (all running rows together, cache slots n.. shared by every row):
//   1. The pending token (emitted last round, not yet in the cache) and N drafted tokens run through
//      layers 1..K one position at a time (the draft sub-model K, with the KV cache); the draft head
//      proposes each next token. The layer-K hidden states of all N+1 positions are kept.
//   2. The verifier (sub-model `exit_layer`, default the full model) runs only layers K+1..L over
//      those N+1 states in one call, starting from the draft's layer-K states (LayerSkip's "exit
//      query cache"): layers 1..K are never recomputed and there is one KV cache, no second model.
//      Every layer's cache therefore advances by the same N+1 slots per round.
//   3. Row b accepts its longest agreeing prefix a_b <= N plus the verifier's own token after it, so
//      a round gives a_b + 1 tokens (N + 1 when all drafts are accepted: the last position's
//      verifier output is a free bonus token).
//   4. Rows keep slots n..n+A (A = max a_b); every layer's cache is cropped to n+A+1. A row that
//      accepted fewer marks its rejected slots n+a_b+1..n+A as holes (key_mask 0): rotary positions
//      come from the cumulative key_mask, so holes shift nothing, and attention never sees them.
//      When holes fill the cache, it is compacted: each row's real entries move to the end, holes
//      to the front (like left padding), and columns that are holes in every row are dropped.
//
// Exactness: greedy output is token-for-token the greedy output of `generate` with the same
// exit_layer (accept iff the verifier's argmax equals the draft). With temperature > 0 the standard
// speculative-sampling rule (accept d with probability min(1, p(d)/q(d)), else resample from the
// normalised max(0, p - q); bonus token from p) makes the output distribution equal to sampling
// from the verifier; p and q are sl::sampling_probs of the verifier and draft logits with the same
// temperature / top-k / top-p.
//
// Draft length: fixed (draft_tokens > 0), or adaptive as in HF assisted generation: start at 4,
// +2 after a round in which some row accepted every draft, -1 otherwise, within [1, max_draft_tokens].
// A round never drafts more than the most tokens any row may still emit, minus the bonus token.
#pragma once
#include <vector>

#include "sortedllama/decode/plain.h"

namespace sl {

struct SpeculativeOptions : GenerateOptions {  // exit_layer = the verifier (0 = full model)
  int draft_layer = 0;          // K, the drafting sub-model; 0 = the first "auto" exit below the verifier
  int draft_tokens = 0;         // N per round; 0 = adaptive
  int max_draft_tokens = 16;    // upper bound of the adaptive length
};

struct SpeculativeStats {
  int64_t prompt_tokens = 0, new_tokens = 0;
  double prefill_ms = 0, decode_ms = 0;
  int64_t drafted = 0;      // draft tokens proposed, summed over rows
  int64_t accepted = 0;     // of those, accepted by the verifier
  int64_t rounds = 0;       // draft/verify rounds, summed over rows (a row's rounds count once each)
  int64_t compactions = 0;  // KV-cache compactions (holes squeezed out)
  double acceptance_rate() const { return drafted ? (double)accepted / drafted : 0.0; }
  double mean_accepted_per_round() const { return rounds ? (double)accepted / rounds : 0.0; }
  double tokens_per_s() const { return decode_ms > 0 ? 1000.0 * new_tokens / decode_ms : 0.0; }
  double ms_per_token() const { return new_tokens ? (prefill_ms + decode_ms) / new_tokens : 0.0; }
};

// Same conventions as generate(): left-padded batch, per-row finish ("eos", "length", "stop" via
// on_token, which sees every emitted token in order), finished rows leave the batch. Stats add up.
std::vector<Generation> generate_speculative(Llama& model, const std::vector<std::vector<int>>& prompts,
                                             const SpeculativeOptions& opt, SpeculativeStats* stats = nullptr);

}  // namespace sl
