// What a decoding run did and how long it took, for every strategy; to_json() is the schema that
// generate --json, eval's results.json, eval's speed task and scripts/bench_decoding.py read
// (documented in docs/results_schema.md).
#pragma once
#include <cstdint>
#include <map>
#include <vector>

#include <nlohmann/json.hpp>

namespace sl {

// Plain decoding of one sub-model, self-speculative decoding, or dynamic early exit.
enum class Strategy { kPlain, kSpeculative, kDynamic };
const char* strategy_name(Strategy s);  // "plain" | "speculative" | "dynamic"

struct DecodeStats {
  Strategy strategy = Strategy::kPlain;  // decides which fields to_json() writes
  int64_t prompt_tokens = 0, new_tokens = 0;
  double prefill_ms = 0, decode_ms = 0;

  // Speculative. Rounds count once per running row, so a round of R rows drafting N tokens adds R
  // rounds and R * N drafted tokens.
  int64_t drafted = 0, accepted = 0, rounds = 0;
  int64_t compactions = 0;          // KV-cache compactions (holes squeezed out)
  std::vector<int64_t> proposed_at;  // [j]: rounds that drafted a token at draft position j (0-based)
  std::vector<int64_t> accepted_at;  // [j]: rounds whose draft at position j was accepted
  double draft_ms = 0, verify_ms = 0;  // parts of decode_ms: the draft model's steps, the verifier's pass and acceptance
  // Draft trees: alternatives verified beside the chains (per row, like drafted) and those accepted.
  // drafted, accepted and the per-position counts are the chains' alone.
  int64_t tree_nodes = 0, tree_accepted = 0;

  // Dynamic.
  std::map<int, int64_t> exit_histogram;  // exit layer -> tokens that left there
  int64_t layers_run = 0;                 // full decoder layers run, summed over tokens

  // One speculative round of accepted.size() rows that each drafted `drafts` tokens and accepted
  // accepted[r] of them (a prefix).
  void add_round(int64_t drafts, const std::vector<int64_t>& accepted);
  // Adds another run's counts and times. Stats that have counted nothing take the other's
  // strategy; otherwise the strategies must match (std::invalid_argument).
  void merge(const DecodeStats& other);

  double tokens_per_s() const;          // new tokens per second of decoding
  double ms_per_token() const;          // prefill and decoding over the new tokens
  double decode_ms_per_token() const;   // decoding only, over the new tokens
  double prefill_tokens_per_s() const;  // prompt tokens per second of prefill
  double prefill_ms_per_token() const;  // prefill over the prompt tokens
  double acceptance_rate() const;       // accepted / drafted
  double mean_accepted_per_round() const;  // drafts accepted per round (the bonus token not counted)
  // Tokens committed per round: the accepted drafts (and alternatives) plus the verifier's own token
  // after them (the bonus when every draft was accepted, else the correction).
  double mean_tokens_per_round() const;
  std::vector<double> acceptance_rate_at() const;  // [j]: accepted_at[j] / proposed_at[j]
  double mean_layers_per_token() const;

  // Always: mode, prompt_tokens, new_tokens, prefill_ms, decode_ms, tokens_per_s, ms_per_token,
  // decode_ms_per_token, prefill_tokens_per_s, prefill_ms_per_token. Only for their strategy (the
  // keys are absent otherwise): speculative drafted, accepted, rounds, compactions,
  // acceptance_rate, mean_accepted_per_round, mean_tokens_per_round, draft_ms, verify_ms,
  // tree_nodes, tree_accepted, proposed_at, accepted_at, acceptance_rate_at (arrays by draft
  // position); dynamic
  // exit_histogram ({"<layer>": tokens}), layers_run, mean_layers_per_token.
  nlohmann::json to_json() const;
};

}  // namespace sl
