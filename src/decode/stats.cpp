#include "sortedllama/decode/stats.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace sl {

namespace {
double ratio(double num, double den) { return den > 0 ? num / den : 0.0; }

void add_into(std::vector<int64_t>& into, const std::vector<int64_t>& from) {
  if (into.size() < from.size()) into.resize(from.size(), 0);
  for (size_t j = 0; j < from.size(); ++j) into[j] += from[j];
}
}  // namespace

const char* strategy_name(Strategy s) {
  switch (s) {
    case Strategy::kPlain: return "plain";
    case Strategy::kSpeculative: return "speculative";
    case Strategy::kDynamic: return "dynamic";
  }
  return "?";
}

void DecodeStats::add_round(int64_t drafts, const std::vector<int64_t>& accepted_per_row) {
  const auto rows = (int64_t)accepted_per_row.size();
  if (proposed_at.size() < (size_t)drafts) {
    proposed_at.resize(drafts, 0);
    accepted_at.resize(drafts, 0);
  }
  for (int64_t j = 0; j < drafts; ++j) proposed_at[j] += rows;
  for (int64_t a : accepted_per_row) {
    for (int64_t j = 0; j < a; ++j) ++accepted_at[j];
    accepted += a;
  }
  drafted += rows * drafts;
  rounds += rows;
}

void DecodeStats::merge(const DecodeStats& o) {
  const bool counted_nothing = prompt_tokens == 0 && new_tokens == 0 && prefill_ms == 0 && decode_ms == 0;
  if (counted_nothing) strategy = o.strategy;
  else if (strategy != o.strategy)
    throw std::invalid_argument(std::string("cannot add ") + strategy_name(o.strategy) + " decoding stats to " +
                                strategy_name(strategy) + " ones");
  prompt_tokens += o.prompt_tokens, new_tokens += o.new_tokens;
  prefill_ms += o.prefill_ms, decode_ms += o.decode_ms;
  drafted += o.drafted, accepted += o.accepted, rounds += o.rounds, compactions += o.compactions;
  add_into(proposed_at, o.proposed_at);
  add_into(accepted_at, o.accepted_at);
  draft_ms += o.draft_ms, verify_ms += o.verify_ms;
  tree_nodes += o.tree_nodes, tree_accepted += o.tree_accepted;
  for (const auto& [k, n] : o.exit_histogram) exit_histogram[k] += n;
  layers_run += o.layers_run;
}

double DecodeStats::tokens_per_s() const { return ratio(1000.0 * (double)new_tokens, decode_ms); }
double DecodeStats::ms_per_token() const { return ratio(prefill_ms + decode_ms, (double)new_tokens); }
double DecodeStats::decode_ms_per_token() const { return ratio(decode_ms, (double)new_tokens); }
double DecodeStats::prefill_tokens_per_s() const { return ratio(1000.0 * (double)prompt_tokens, prefill_ms); }
double DecodeStats::prefill_ms_per_token() const { return ratio(prefill_ms, (double)prompt_tokens); }
double DecodeStats::acceptance_rate() const { return ratio((double)accepted, (double)drafted); }
double DecodeStats::mean_accepted_per_round() const { return ratio((double)accepted, (double)rounds); }
double DecodeStats::mean_tokens_per_round() const {
  return ratio((double)(accepted + tree_accepted + rounds), (double)rounds);
}
double DecodeStats::mean_layers_per_token() const { return ratio((double)layers_run, (double)new_tokens); }

std::vector<double> DecodeStats::acceptance_rate_at() const {
  std::vector<double> r(proposed_at.size());
  for (size_t j = 0; j < r.size(); ++j) r[j] = ratio((double)accepted_at[j], (double)proposed_at[j]);
  return r;
}

nlohmann::json DecodeStats::to_json() const {
  nlohmann::json j = {{"mode", strategy_name(strategy)},
                      {"prompt_tokens", prompt_tokens},
                      {"new_tokens", new_tokens},
                      {"prefill_ms", prefill_ms},
                      {"decode_ms", decode_ms},
                      {"tokens_per_s", tokens_per_s()},
                      {"ms_per_token", ms_per_token()},
                      {"decode_ms_per_token", decode_ms_per_token()},
                      {"prefill_tokens_per_s", prefill_tokens_per_s()},
                      {"prefill_ms_per_token", prefill_ms_per_token()}};
  if (strategy == Strategy::kSpeculative) {
    j.update({{"drafted", drafted},
              {"accepted", accepted},
              {"rounds", rounds},
              {"compactions", compactions},
              {"acceptance_rate", acceptance_rate()},
              {"mean_accepted_per_round", mean_accepted_per_round()},
              {"mean_tokens_per_round", mean_tokens_per_round()},
              {"draft_ms", draft_ms},
              {"verify_ms", verify_ms},
              {"tree_nodes", tree_nodes},
              {"tree_accepted", tree_accepted},
              {"proposed_at", proposed_at},
              {"accepted_at", accepted_at},
              {"acceptance_rate_at", acceptance_rate_at()}});
  }
  if (strategy == Strategy::kDynamic) {
    nlohmann::json hist = nlohmann::json::object();
    for (const auto& [k, n] : exit_histogram) hist[std::to_string(k)] = n;
    j.update({{"exit_histogram", hist}, {"layers_run", layers_run}, {"mean_layers_per_token", mean_layers_per_token()}});
  }
  return j;
}

}  // namespace sl
