// DecodeStats (counts, derived figures, merge, JSON schema) and DecodeOptions validation, without a model.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "sortedllama/decode/options.h"
#include "sortedllama/decode/stats.h"

namespace {
template <typename F>
void expect_invalid(F f, const std::string& part) {
  try {
    f();
    ADD_FAILURE() << "no exception; expected one naming " << part;
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

int64_t sum(const std::vector<int64_t>& v) { return std::accumulate(v.begin(), v.end(), int64_t{0}); }
}  // namespace

TEST(DecodeStats, RoundsFillThePerPositionHistogram) {
  sl::DecodeStats s;
  s.strategy = sl::Strategy::kSpeculative;
  s.add_round(3, {3, 0, 1});  // three rows drafting 3 tokens each
  s.add_round(1, {1, 0});     // two rows, 1 draft
  EXPECT_EQ(s.drafted, 3 * 3 + 2 * 1);
  EXPECT_EQ(s.accepted, 5);
  EXPECT_EQ(s.rounds, 5);
  EXPECT_EQ(s.proposed_at, (std::vector<int64_t>{5, 3, 3}));
  EXPECT_EQ(s.accepted_at, (std::vector<int64_t>{3, 1, 1}));
  EXPECT_EQ(sum(s.proposed_at), s.drafted);
  EXPECT_EQ(sum(s.accepted_at), s.accepted);
  EXPECT_EQ(s.acceptance_rate_at(), (std::vector<double>{0.6, 1.0 / 3, 1.0 / 3}));
  EXPECT_DOUBLE_EQ(s.acceptance_rate(), 5.0 / 11);
  EXPECT_DOUBLE_EQ(s.mean_accepted_per_round(), 1.0);
  EXPECT_DOUBLE_EQ(s.mean_tokens_per_round(), 2.0);
}

TEST(DecodeStats, DerivedFiguresAndEmptyStatsAreZero) {
  sl::DecodeStats s;
  EXPECT_EQ(s.tokens_per_s(), 0.0);
  EXPECT_EQ(s.ms_per_token(), 0.0);
  EXPECT_EQ(s.acceptance_rate(), 0.0);
  EXPECT_EQ(s.mean_layers_per_token(), 0.0);
  s.prompt_tokens = 10, s.new_tokens = 20, s.prefill_ms = 5, s.decode_ms = 40;
  EXPECT_DOUBLE_EQ(s.tokens_per_s(), 500.0);
  EXPECT_DOUBLE_EQ(s.ms_per_token(), 45.0 / 20);
  EXPECT_DOUBLE_EQ(s.decode_ms_per_token(), 2.0);
  EXPECT_DOUBLE_EQ(s.prefill_tokens_per_s(), 2000.0);
  EXPECT_DOUBLE_EQ(s.prefill_ms_per_token(), 0.5);
}

TEST(DecodeStats, MergeAddsEverythingAndAdoptsTheStrategyOnce) {
  sl::DecodeStats a, b;
  b.strategy = sl::Strategy::kSpeculative;
  b.new_tokens = 4, b.decode_ms = 2, b.draft_ms = 1, b.verify_ms = 0.5, b.compactions = 1, b.tree_nodes = 6,
  b.tree_accepted = 1;
  b.add_round(2, {2, 1});
  a.merge(b);  // a counted nothing: it becomes speculative
  EXPECT_EQ(a.strategy, sl::Strategy::kSpeculative);
  sl::DecodeStats c = b;
  c.add_round(4, {4});
  a.merge(c);
  EXPECT_EQ(a.new_tokens, 8);
  EXPECT_EQ(a.drafted, 4 + 4 + 4);
  EXPECT_EQ(a.compactions, 2);
  EXPECT_EQ(a.tree_nodes, 12);
  EXPECT_EQ(a.tree_accepted, 2);
  // Rounds 2 + 2 + 1 committed their accepted drafts (3 + 3 + 4), the alternatives (1 + 1) and a token each.
  EXPECT_DOUBLE_EQ(a.mean_tokens_per_round(), (10.0 + 2 + 5) / 5);
  EXPECT_DOUBLE_EQ(a.draft_ms, 2.0);
  EXPECT_EQ(a.proposed_at, (std::vector<int64_t>{5, 5, 1, 1}));
  EXPECT_EQ(a.accepted_at, (std::vector<int64_t>{5, 3, 1, 1}));

  sl::DecodeStats d, e;
  d.strategy = e.strategy = sl::Strategy::kDynamic;
  d.new_tokens = 3, d.exit_histogram = {{2, 1}, {5, 2}}, d.layers_run = 12;
  e.new_tokens = 1, e.exit_histogram = {{2, 1}}, e.layers_run = 2;
  d.merge(e);
  EXPECT_EQ(d.exit_histogram, (std::map<int, int64_t>{{2, 2}, {5, 2}}));
  EXPECT_DOUBLE_EQ(d.mean_layers_per_token(), 14.0 / 4);
  expect_invalid([&] { d.merge(a); }, "cannot add speculative decoding stats to dynamic ones");
}

TEST(DecodeStats, JsonHasTheCommonKeysAndOnlyItsStrategysOwn) {
  const std::vector<std::string> common = {"mode", "prompt_tokens", "new_tokens", "prefill_ms", "decode_ms", "tokens_per_s",
                                           "ms_per_token", "decode_ms_per_token", "prefill_tokens_per_s", "prefill_ms_per_token"};
  const std::vector<std::string> speculative = {"drafted", "accepted", "rounds", "compactions", "acceptance_rate",
                                                "mean_accepted_per_round", "mean_tokens_per_round", "draft_ms", "verify_ms",
                                                "tree_nodes", "tree_accepted", "proposed_at", "accepted_at", "acceptance_rate_at"};
  const std::vector<std::string> dynamic = {"exit_histogram", "layers_run", "mean_layers_per_token"};
  auto keys_of = [&](sl::Strategy st) {
    sl::DecodeStats s;
    s.strategy = st;
    return s.to_json();
  };
  const nlohmann::json plain = keys_of(sl::Strategy::kPlain), spec = keys_of(sl::Strategy::kSpeculative),
                       dyn = keys_of(sl::Strategy::kDynamic);
  EXPECT_EQ(plain.size(), common.size());
  EXPECT_EQ(spec.size(), common.size() + speculative.size());
  EXPECT_EQ(dyn.size(), common.size() + dynamic.size());
  for (const auto& k : common) EXPECT_TRUE(plain.contains(k) && spec.contains(k) && dyn.contains(k)) << k;
  for (const auto& k : speculative) EXPECT_TRUE(spec.contains(k)) << k;
  for (const auto& k : dynamic) EXPECT_TRUE(dyn.contains(k)) << k;
  EXPECT_EQ(plain["mode"], "plain");
  EXPECT_EQ(spec["mode"], "speculative");
  EXPECT_EQ(dyn["mode"], "dynamic");

  sl::DecodeStats s;
  s.strategy = sl::Strategy::kDynamic;
  s.new_tokens = 2, s.exit_histogram = {{3, 2}}, s.layers_run = 6;
  EXPECT_EQ(s.to_json()["exit_histogram"], (nlohmann::json{{"3", 2}}));
  EXPECT_EQ(s.to_json()["mean_layers_per_token"], 3.0);
  sl::DecodeStats r;
  r.strategy = sl::Strategy::kSpeculative;
  r.add_round(2, {1, 2});
  EXPECT_EQ(r.to_json()["accepted_at"], (nlohmann::json{2, 1}));
  EXPECT_EQ(r.to_json()["acceptance_rate_at"], (nlohmann::json{1.0, 0.5}));
}

TEST(DecodeOptions, ResolvedFillsTheModelsDefaults) {
  sl::DecodeOptions o;
  EXPECT_EQ(o.resolved(5).exit_layer, 5);
  o.strategy = sl::Strategy::kSpeculative;
  EXPECT_EQ(o.resolved(5).speculative.draft_layer, 1);  // the first auto exit
  o.exit_layer = 4;
  o.speculative.draft_layer = 3;
  EXPECT_EQ(o.resolved(5).exit_layer, 4);
  o = sl::DecodeOptions();
  o.strategy = sl::Strategy::kDynamic;
  EXPECT_EQ(sl::format_thresholds(o.resolved(5).dynamic.thresholds), "1:0.95,2:0.95,3:0.9,4:0.9");
  EXPECT_EQ(o.resolved(5).exit_layer, 5);
}

TEST(DecodeOptions, ResolvedNamesTheBadOption) {
  auto with = [](auto change) {
    sl::DecodeOptions o;
    change(o);
    return [o] { o.resolved(5); };
  };
  expect_invalid(with([](auto& o) { o.max_new_tokens = 0; }), "max_new_tokens 0 must be at least 1");
  expect_invalid(with([](auto& o) { o.exit_layer = 6; }), "exit_layer 6 is outside the model's 1..5 layers");
  expect_invalid(with([](auto& o) { o.sampling.temperature = -1; }), "temperature -1");
  expect_invalid(with([](auto& o) { o.sampling.top_p = 1.5; }), "top_p 1.5");
  expect_invalid(with([](auto& o) { o.sampling.top_k = -2; }), "top_k -2");
  expect_invalid(with([](auto& o) {
                   o.strategy = sl::Strategy::kSpeculative;
                   o.exit_layer = 3;
                   o.speculative.draft_layer = 3;
                 }),
                 "draft_layer 3 must be in 1..2 (below the verifier's 3 layers)");
  expect_invalid(with([](auto& o) {
                   o.strategy = sl::Strategy::kSpeculative;
                   o.speculative.draft_tokens = -1;
                 }),
                 "draft_tokens -1");
  expect_invalid(with([](auto& o) {
                   o.strategy = sl::Strategy::kSpeculative;
                   o.speculative.max_draft_tokens = 0;
                 }),
                 "max_draft_tokens 0");
  expect_invalid(with([](auto& o) {
                   o.strategy = sl::Strategy::kDynamic;
                   o.exit_layer = 3;
                 }),
                 "dynamic decoding runs the full model");
  expect_invalid(with([](auto& o) {
                   o.strategy = sl::Strategy::kDynamic;
                   o.dynamic.thresholds = {{3, 0.5}, {2, 0.5}};
                 }),
                 "layers must increase within 1..5");
  expect_invalid(with([](auto& o) {
                   o.strategy = sl::Strategy::kDynamic;
                   o.dynamic.thresholds = {{2, std::nan("")}};
                 }),
                 "a threshold is a confidence");
  // Another strategy's settings are not checked: plain decoding ignores a bad draft layer.
  EXPECT_NO_THROW(with([](auto& o) { o.speculative.draft_layer = 9; })());
}
