// Auto-tuned self-speculative decoding: the draft layer and draft-length rule that decode fastest
// with the full model verifying, on this machine, for these prompts.
//
//   1. Reference: the full model's greedy output of every prompt (plain decoding, timed).
//   2. Acceptance: one teacher-forced pass per prompt gives each candidate draft layer's greedy
//      token and top probability at every output position. A self-speculative draft shares the
//      verifier's layers 1..K and cache, so while its drafts are accepted its context is the full
//      model's output: a round's acceptance on greedy decoding is exactly these tokens' agreement.
//   3. Latency: per-layer, head and per-call times of T = 1 .. positions per row at the batch size,
//      measured on a real cache (the draft runs T = 1; verification T = N + 1).
//   4. Cost model: every (draft layer, rule) is simulated round by round as the decoder runs it
//      (fixed length N, adaptive, or confidence-stopped) and priced with the latencies:
//        round = (N+1) (call(1) + K layer(1) + d) + N head(1)  +  call(N+1) + (L-K) layer(N+1) + head(N+1) + r
//        plain step = call(1) + L layer(1) + head(1) + p
//      where p, d and r, what the decoders spend beyond these calls, are fitted from one measured
//      plain run and one measured speculative run (its draft and verify times apart).
//   5. Verification: the best predicted few are decoded for real, interleaved with plain decoding
//      (A B A B), and the fastest measured end to end is chosen.
#pragma once
#include <cstdint>
#include <vector>

#include "sortedllama/decode/generate.h"

namespace sl {

// One prompt's reference and each candidate draft layer's predictions along it.
struct PromptTrace {
  std::vector<int> full;              // [n]: the full model's greedy tokens, ending with EOS when it ended there
  std::vector<std::vector<int>> draft;   // [candidate][n]: the draft layer's greedy token at each position
  std::vector<std::vector<float>> top;   // [candidate][n]: its top probability there
};

// Times at one batch size; index T-1 holds T positions per row.
struct LatencyModel {
  int n_layers = 0;
  std::vector<double> layer_ms;  // one decoder layer
  std::vector<double> head_ms;   // the shared norm and head, with the greedy choice
  std::vector<double> call_ms;   // the attention inputs and the embedding of a call
  // What the decoders spend beyond these calls, fitted from measured runs: per plain step, per
  // draft step, per speculative round (acceptance, commit). Negative when the calls measured alone
  // ran slower than inside the decoder.
  double plain_extra_ms = 0, draft_extra_ms = 0, round_extra_ms = 0;

  int64_t max_positions() const { return (int64_t)layer_ms.size(); }
  double plain_step_ms() const;
  double draft_ms(int draft_layer, int64_t drafts) const;   // the pending token and `drafts` drafts through layers 1..K
  double verify_ms(int draft_layer, int64_t drafts) const;  // layers K+1..L over drafts + 1 positions, and the round's rest
};

// A simulated decoding of one batch of prompts; counts as DecodeStats counts them.
struct SimulatedRun {
  int64_t rounds = 0, drafted = 0, accepted = 0;  // per running row, as DecodeStats
  int64_t batch_rounds = 0;                       // rounds of the whole batch
  int64_t draft_steps = 0, plain_steps = 0;       // calls of the draft model; plain decoding's steps
  double draft_ms = 0, verify_ms = 0;             // predicted: the parts of speculative decoding
  double plain_ms = 0;                            // predicted: plain decoding

  double ms() const { return draft_ms + verify_ms; }
  void add(const SimulatedRun& o);
};

// Greedy self-speculative decoding of these prompts together (one batch) with draft layer
// `rows[r]->draft[candidate]`, as src/decode/speculative.cpp runs it. Exact while every row's drafts
// stay within its reference; drafts past a rejection or a row's end are priced but their
// confidence and EOS are the teacher-forced ones.
SimulatedRun simulate_speculative(const std::vector<const PromptTrace*>& rows, size_t candidate, int draft_layer,
                                  const SpeculativeParams& params, int64_t max_new_tokens, int64_t eos_id,
                                  const LatencyModel& cost);

struct TuneOptions {
  std::vector<int> draft_layers;             // candidates below the last layer; empty = the "auto" exits
  int max_draft_tokens = 8;                  // fixed lengths 1..this are candidates
  std::vector<double> confidences = {0.3, 0.5, 0.7, 0.9};  // confidence-stopped candidates (up to 16 drafts)
  bool adaptive = true;                      // the adaptive length (from 4, up to 16) is a candidate
  int verify = 3;                            // best predicted candidates decoded for real
  int repeats = 3;                           // interleaved measurements of each (medians)
  int latency_reps = 7;                      // timings per latency point (medians)
  int64_t max_new_tokens = 64, batch_size = 1, eos_id = 2, vocab_limit = 0;
};

struct TunedCandidate {
  int draft_layer = 0;
  SpeculativeParams params;  // draft_layer, draft_tokens, draft_confidence as generate takes them
  double predicted_speedup = 0;  // plain decoding time / speculative decoding time, from the cost model
  SimulatedRun predicted;        // summed over the batches
  bool measured = false;
  double measured_speedup = 0;   // decoding time (median over repeats of plain / speculative)
  double measured_end_to_end = 0;  // prefill and decoding
  double acceptance_rate = 0, mean_tokens_per_round = 0;  // measured
  bool identical = false;        // measured output == the full model's greedy output
};

struct Tuning {
  LatencyModel latency;
  std::vector<TunedCandidate> candidates;  // by predicted speed-up, best first
  int chosen = -1;                         // index into candidates: the best measured end to end
  DecodeStats plain;                       // the reference run
  int64_t prompts = 0, reference_tokens = 0;
};

// Runs steps 1-5 above; throws std::invalid_argument naming the option when a setting is impossible.
Tuning tune_speculative(Llama& model, const std::vector<std::vector<int>>& prompts, const TuneOptions& opt);

}  // namespace sl
