// Auto-tuned speculative decoding: the simulation predicts the decoder's rounds exactly from one
// teacher-forced pass, the cost model prices them as documented, and tune chooses a verified
// setting that round-trips through config.json.
#include <gtest/gtest.h>

#include "sortedllama/eval/teacher_forced.h"
#include "sortedllama/eval/tune.h"
#include "sortedllama/io/checkpoint.h"
#include "sortedllama/io/tokenizer.h"
#include "sortedllama/util/files.h"
#include "test_util.h"

namespace {
std::vector<std::vector<int>> prompts_of(const sl::Tokenizer& tok) {
  std::vector<std::vector<int>> p;
  for (const char* s : {"Once upon a time, a cat", "Tom had a red ball", "The sun", "One day, a little bird flew over the",
                        "Lily and Ben went to the park. They saw", "The dog was sad because"})
    p.push_back(tok.encode(s, true));
  return p;
}

sl::DecodeOptions greedy(int64_t max_new, int64_t eos) {
  sl::DecodeOptions o;
  o.max_new_tokens = max_new;
  o.eos_id = eos;
  return o;
}

// Traces for draft layers `layers` of these prompts, from the full model's greedy output.
std::vector<sl::PromptTrace> traces(sl::Llama& m, const std::vector<std::vector<int>>& prompts, const std::vector<int>& layers,
                                    int64_t max_new, int64_t eos) {
  const std::vector<sl::Generation> ref = sl::generate(m, prompts, greedy(max_new, eos));
  std::vector<int> exits;
  exits.reserve(layers.size() + 1);
  exits.insert(exits.end(), layers.begin(), layers.end());
  exits.push_back((int)m->config().n_layers);
  std::vector<sl::PromptTrace> out;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto pred = sl::teacher_forced(m, prompts[i], ref[i], exits, 0);
    sl::PromptTrace t;
    t.full = pred.back().token;
    for (size_t c = 0; c < layers.size(); ++c) {
      t.draft.push_back(pred[c].token);
      t.top.push_back(pred[c].top1);
    }
    out.push_back(t);
  }
  return out;
}

sl::LatencyModel unit_costs(int layers, int64_t positions) {
  sl::LatencyModel m;
  m.n_layers = layers;
  for (int64_t t = 1; t <= positions; ++t) {
    m.layer_ms.push_back(1.0 + 0.1 * (double)(t - 1));
    m.head_ms.push_back(2.0);
    m.call_ms.push_back(0.5);
  }
  return m;
}
}  // namespace

// With an EOS id the model never predicts, every row ends by length, so nothing the simulation
// cannot see (drafts past a rejection or past a row's end) decides a round: its counts equal the
// decoder's for fixed, adaptive and confidence-stopped lengths alone, and for fixed lengths batched
// (there a row that is done may still accept drafts, which changes the other two rules' lengths).
TEST(TuneSimulation, PredictsTheDecodersRoundsExactly) {
  const std::string dir = sl_test::stories_model_dir();
  sl::Tokenizer tok(dir + "/tokenizer.model");
  const auto prompts = prompts_of(tok);
  sl::Llama m = sl_test::damped_stories_model(dir);
  const int64_t eos = 0, max_new = 20;  // <unk>: never chosen
  const std::vector<int> layers = {1, 3};
  const std::vector<sl::PromptTrace> tr = traces(m, prompts, layers, max_new, eos);
  for (const auto& t : tr)
    for (const auto& d : t.draft) ASSERT_EQ(std::count(d.begin(), d.end(), (int)eos), 0) << "the chosen EOS id is predicted";
  const sl::LatencyModel cost = unit_costs(5, 17);
  int64_t accepted_any = 0;
  for (size_t c = 0; c < layers.size(); ++c) {
    for (auto [tokens, confidence] : {std::pair<int, double>{1, 0}, {3, 0}, {0, 0}, {0, 0.5}}) {
      sl::SpeculativeParams p;
      p.draft_layer = layers[c];
      p.draft_tokens = tokens;
      p.draft_confidence = confidence;
      sl::DecodeOptions o = greedy(max_new, eos);
      o.strategy = sl::Strategy::kSpeculative;
      o.speculative = p;
      const std::string what = "draft layer " + std::to_string(layers[c]) + ", tokens " + std::to_string(tokens) +
                               ", confidence " + std::to_string(confidence);
      for (size_t batch : {size_t(1), size_t(3)}) {
        if (batch > 1 && tokens == 0) continue;
        for (size_t s = 0; s < prompts.size(); s += batch) {
          const std::vector<std::vector<int>> rows_p(prompts.begin() + (std::ptrdiff_t)s, prompts.begin() + (std::ptrdiff_t)(s + batch));
          std::vector<const sl::PromptTrace*> rows;
          for (size_t i = s; i < s + batch; ++i) rows.push_back(&tr[i]);
          sl::DecodeStats st;
          sl::generate(m, rows_p, o, &st);
          const sl::SimulatedRun sim = sl::simulate_speculative(rows, c, layers[c], p, max_new, eos, cost);
          const std::string at = what + ", batch " + std::to_string(batch) + " from prompt " + std::to_string(s);
          EXPECT_EQ(sim.rounds, st.rounds) << at;
          if (batch == 1) {
            EXPECT_EQ(sim.accepted, st.accepted) << at;
            if (confidence == 0) {
              EXPECT_EQ(sim.drafted, st.drafted) << at;
            }
          }
          accepted_any += st.accepted;
        }
      }
    }
  }
  EXPECT_GT(accepted_any, 0) << "no draft was ever accepted: the test exercises nothing";
}

// One prompt, three output tokens after the prefill's; the draft agrees with the first two.
// Fixed length 2: round 1 accepts both and adds the bonus (3 tokens), ending the row.
TEST(TuneSimulation, PricesRoundsWithTheLatencyModel) {
  sl::PromptTrace t;
  t.full = {10, 11, 12, 13};
  t.draft = {{10, 11, 12, 99}};
  t.top = {{0.9f, 0.9f, 0.9f, 0.9f}};
  sl::LatencyModel cost = unit_costs(4, 3);
  sl::SpeculativeParams p;
  p.draft_tokens = 2;
  const sl::SimulatedRun s = sl::simulate_speculative({&t}, 0, 1, p, 64, 2, cost);
  EXPECT_EQ(s.batch_rounds, 1);
  EXPECT_EQ(s.drafted, 2);
  EXPECT_EQ(s.accepted, 2);
  // Draft: 3 steps of 1 layer (1.5 ms each) and 2 heads; verify: 3 positions of 3 layers (1.2 ms
  // each), a call and a head.
  EXPECT_EQ(s.draft_steps, 3);
  EXPECT_EQ(s.plain_steps, 3);
  EXPECT_DOUBLE_EQ(s.draft_ms, 3 * 1.5 + 2 * 2.0);
  EXPECT_DOUBLE_EQ(s.verify_ms, 0.5 + 3 * 1.2 + 2.0);
  EXPECT_DOUBLE_EQ(s.plain_ms, 3 * (0.5 + 4 * 1.0 + 2.0));
  EXPECT_DOUBLE_EQ(cost.plain_step_ms(), 6.5);
  // The fitted extras: per draft step, per round, per plain step.
  cost.draft_extra_ms = 0.25;
  cost.round_extra_ms = 1;
  cost.plain_extra_ms = -0.5;
  const sl::SimulatedRun e = sl::simulate_speculative({&t}, 0, 1, p, 64, 2, cost);
  EXPECT_DOUBLE_EQ(e.ms(), s.ms() + 3 * 0.25 + 1);
  EXPECT_DOUBLE_EQ(e.plain_ms, 3 * 6.0);
  // A disagreeing draft: length 1 per round, the round accepts nothing and adds the verifier's token.
  t.draft = {{10, 98, 97, 96}};
  p.draft_tokens = 1;
  const sl::SimulatedRun r = sl::simulate_speculative({&t}, 0, 1, p, 64, 2, cost);
  EXPECT_EQ(r.batch_rounds, 3);
  EXPECT_EQ(r.accepted, 0);
}

TEST(Tune, ChoosesAVerifiedSettingThatRoundTripsThroughConfigJson) {
  const std::string dir = sl_test::stories_model_dir();
  sl::Tokenizer tok(dir + "/tokenizer.model");
  sl::Llama m = sl_test::damped_stories_model(dir);
  sl::TuneOptions o;
  o.draft_layers = {1, 3};
  o.max_draft_tokens = 3;
  o.confidences = {0.5};
  o.verify = 2;
  o.repeats = 1;
  o.latency_reps = 2;
  o.max_new_tokens = 12;
  o.batch_size = 2;
  const sl::Tuning r = sl::tune_speculative(m, prompts_of(tok), o);
  ASSERT_EQ(r.candidates.size(), 2u * (3 + 1 + 1));
  for (size_t j = 1; j < r.candidates.size(); ++j) EXPECT_GE(r.candidates[j - 1].predicted_speedup, r.candidates[j].predicted_speedup);
  ASSERT_GE(r.chosen, 0);
  ASSERT_LT(r.chosen, 2);
  const sl::TunedCandidate& best = r.candidates[(size_t)r.chosen];
  EXPECT_TRUE(best.measured && best.identical);
  EXPECT_GT(best.measured_end_to_end, 0);
  EXPECT_FALSE(r.candidates[2].measured);
  EXPECT_EQ(r.latency.max_positions(), 17);

  const std::string out = sl_test::temp_dir("tuned");
  sl::write_file_atomic(out + "/config.json", sl::read_json_file(dir + "/config.json").dump());
  sl::DynamicProfile dyn;
  dyn.thresholds = {{2, 0.9}};
  sl::write_dynamic_profile(out, dyn);
  sl::SpeculativeProfile p;
  p.draft_layer = best.draft_layer;
  p.draft_tokens = best.params.draft_tokens;
  p.draft_confidence = best.params.draft_confidence;
  p.batch_size = 2;
  p.tuned = {{"measured_end_to_end", best.measured_end_to_end}};
  sl::write_speculative_profile(out, p);
  const sl::ModelConfig c = sl::ModelConfig::from_file(out + "/config.json");
  ASSERT_TRUE(c.speculative_profile);
  EXPECT_EQ(c.speculative_profile->draft_layer, p.draft_layer);
  EXPECT_EQ(c.speculative_profile->draft_tokens, p.draft_tokens);
  EXPECT_EQ(c.speculative_profile->draft_confidence, p.draft_confidence);
  EXPECT_EQ(c.speculative_profile->batch_size, 2);
  EXPECT_EQ(c.speculative_profile->tuned, p.tuned);
  ASSERT_TRUE(c.dynamic_profile) << "writing one profile drops the other";
  EXPECT_EQ(c.dynamic_profile->thresholds, dyn.thresholds);
  p.draft_layer = 5;  // the full model cannot draft for itself
  EXPECT_THROW(sl::write_speculative_profile(out, p), std::runtime_error);
}

TEST(Tune, ImpossibleOptionsNameTheOption) {
  const std::string dir = sl_test::stories_model_dir();
  sl::Llama m = sl::load_model(dir);
  auto error_of = [&](const sl::TuneOptions& o) {
    try {
      sl::tune_speculative(m, {{1, 2, 3}}, o);
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  sl::TuneOptions o;
  o.draft_layers = {5};
  EXPECT_NE(error_of(o).find("draft layers"), std::string::npos);
  o.draft_layers = {};
  o.confidences = {1.5};
  EXPECT_NE(error_of(o).find("confidences"), std::string::npos);
  o.confidences = {};
  o.max_draft_tokens = 0;
  EXPECT_NE(error_of(o).find("max_draft_tokens"), std::string::npos);
}
