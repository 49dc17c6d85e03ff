// Dynamic early exit: thresholds above 1 give the full model, a zero first threshold gives that
// static exit, and mixed exits match a cache-free recomputation: of the full model's states when
// skipped layers' K/V are recomputed, with CALM state copying when they are copied (so no token
// ever attends to a missing or stale key/value entry).
#include <gtest/gtest.h>

#include <cmath>

#include "sortedllama/io/checkpoint.h"
#include "sortedllama/decode/generate.h"
#include "sortedllama/io/tokenizer.h"
#include "test_util.h"

namespace {
std::vector<std::vector<int>> story_prompts(const sl::Tokenizer& tok) {
  std::vector<std::vector<int>> p;
  for (const char* s : {"", "Once upon a time, a cat", "Tom had a red ball", "The sun",
                        "One day, a little bird flew over the big tree and"})
    p.push_back(tok.encode(s, true));
  return p;
}

sl::DecodeOptions plain(int64_t max_new, int exit = 0) {
  sl::DecodeOptions o;
  o.max_new_tokens = max_new;
  o.exit_layer = exit;
  return o;
}

sl::DecodeOptions dyn(int64_t max_new, std::vector<sl::ExitThreshold> t, const std::string& confidence = "max_prob",
                      sl::SkippedKV kv = sl::SkippedKV::kRecompute) {
  sl::DecodeOptions o;
  o.dynamic.kv = kv;
  o.strategy = sl::Strategy::kDynamic;
  o.max_new_tokens = max_new;
  o.dynamic.thresholds = t;
  o.dynamic.confidence = sl::parse_confidence(confidence);
  return o;
}

void expect_same(const std::vector<sl::Generation>& got, const std::vector<sl::Generation>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].tokens, want[i].tokens) << what << ", prompt " << i;
    EXPECT_EQ(got[i].finish_reason, want[i].finish_reason) << what << ", prompt " << i;
  }
}
}  // namespace

TEST(DynamicThresholds, DefaultsMapThePaperOntoTheExitSet) {
  EXPECT_EQ(sl::format_thresholds(sl::default_thresholds(40)), "12:0.95,16:0.95,20:0.9,24:0.9,28:0.8,32:0.8,36:0.7");
  EXPECT_EQ(sl::format_thresholds(sl::default_thresholds(5)), "1:0.95,2:0.95,3:0.9,4:0.9");
  EXPECT_EQ(sl::format_thresholds(sl::parse_thresholds("2:0.5,4:1.5", 5)), "2:0.5,4:1.5");
  EXPECT_THROW(sl::parse_thresholds("2:0.5,2:0.6", 5), std::runtime_error);
  EXPECT_THROW(sl::parse_thresholds("7:0.5", 5), std::runtime_error);
  EXPECT_THROW(sl::parse_thresholds("2=0.5", 5), std::runtime_error);
  EXPECT_THROW(sl::parse_thresholds("2:x", 5), std::runtime_error);
}

TEST(DynamicGreedy, ThresholdsAboveOneEqualFullGreedy) {
  std::string dir = sl_test::stories_model_dir();
  sl::Llama m = sl::load_model(dir);
  sl::Tokenizer tok(dir + "/tokenizer.model");
  auto prompts = story_prompts(tok);
  auto want = sl::generate(m, prompts, plain(80));
  for (sl::SkippedKV kv : {sl::SkippedKV::kRecompute, sl::SkippedKV::kCopy})
    for (const char* conf : {"max_prob", "margin"}) {
      const std::string what = std::string(sl::skipped_kv_name(kv)) + ", " + conf;
      sl::DecodeStats st;
      expect_same(sl::generate(m, prompts, dyn(80, {{1, 1.01}, {2, 1.01}, {3, 1.5}, {4, 2.0}}, conf, kv), &st), want, what);
      ASSERT_EQ(st.exit_histogram.size(), 1u);
      EXPECT_EQ(st.exit_histogram.begin()->first, 5);
      EXPECT_DOUBLE_EQ(st.mean_layers_per_token(), 5.0);
    }
  // Sampling consumes the generator exactly as plain decoding does.
  auto p = plain(40);
  p.sampling.temperature = 1.0;
  p.seed = 9;
  for (sl::SkippedKV kv : {sl::SkippedKV::kRecompute, sl::SkippedKV::kCopy}) {
    auto o = dyn(40, {{2, 3.0}}, "max_prob", kv);
    o.sampling.temperature = 1.0;
    o.seed = 9;
    expect_same(sl::generate(m, prompts, o), sl::generate(m, prompts, p), std::string("sampling, ") + sl::skipped_kv_name(kv));
  }
}

// bf16 weights take the general layer path (the decoding step's loops are fp32) and a bf16 stream
// of owed states: never exiting early is still the full model, a zero first threshold its exit.
TEST(DynamicGreedy, Bf16MatchesPlainDecoding) {
  std::string dir = sl_test::stories_model_dir();
  sl::Llama m = sl::load_model(dir);
  m->to(torch::kBFloat16);
  sl::Tokenizer tok(dir + "/tokenizer.model");
  auto prompts = story_prompts(tok);
  const auto full = sl::generate(m, prompts, plain(40)), exit2 = sl::generate(m, prompts, plain(40, 2));
  ASSERT_EQ(full[1].tokens.size(), 40u) << "a story prompt decodes to the length limit";
  for (sl::SkippedKV kv : {sl::SkippedKV::kRecompute, sl::SkippedKV::kCopy}) {
    const std::string what = std::string("bf16, ") + sl::skipped_kv_name(kv);
    expect_same(sl::generate(m, prompts, dyn(40, {{2, 1.5}, {4, 2.0}}, "max_prob", kv)), full, what + ", never early");
    expect_same(sl::generate(m, prompts, dyn(40, {{2, 0.0}}, "max_prob", kv)), exit2, what + ", exit 2");
  }
}

TEST(DynamicGreedy, ZeroFirstThresholdEqualsStaticExit) {
  std::string dir = sl_test::stories_model_dir();
  sl::Llama m = sl::load_model(dir);
  sl::Tokenizer tok(dir + "/tokenizer.model");
  auto prompts = story_prompts(tok);
  for (int k : {1, 3})
    for (sl::SkippedKV kv : {sl::SkippedKV::kRecompute, sl::SkippedKV::kCopy}) {
      const std::string what = "exit " + std::to_string(k) + ", " + sl::skipped_kv_name(kv);
      auto want = sl::generate(m, prompts, plain(60, k));
      sl::DecodeStats st;
      expect_same(sl::generate(m, prompts, dyn(60, {{k, 0.0}, {4, 0.5}}, "max_prob", kv), &st), want, what);
      ASSERT_EQ(st.exit_histogram.size(), 1u);
      EXPECT_EQ(st.exit_histogram.begin()->first, k);
      // Batch size 1: no layer deeper than k runs whole (copy appends only their K/V).
      std::vector<sl::Generation> one;
      const int64_t layer_runs = sl_test::count_op_calls("sl::decoder_layer", [&] {  // full decoder layers run
        one = sl::generate(m, {prompts[1]}, dyn(60, {{k, 0.0}}, "max_prob", kv));
      });
      EXPECT_EQ(one[0].tokens, want[1].tokens) << what;
      const int64_t steps = (int64_t)one[0].tokens.size() - (one[0].finish_reason == "length");
      if (kv == sl::SkippedKV::kCopy) EXPECT_EQ(layer_runs, 5 + steps * k) << what << ": prefill runs 5 layers once, then k per token";
      else EXPECT_EQ(layer_runs, (1 + steps) * k) << what << ": the prompt and every token run k layers";
    }
}

// Reference semantics, recomputed from scratch for every token (no cache). Recomputed K/V: every
// position's states are the full model's. Copied K/V: position j's input to layer i is its own
// layer-i state if it ran that layer, else its exit state (CALM state copying); prompt positions
// run every layer. The newest position runs all layers and takes the first exit whose confidence
// reaches the threshold.
TEST(DynamicCache, MixedExitsMatchCacheFreeRecomputation) {
  std::string dir = sl_test::stories_model_dir();
  sl::Llama m = sl::load_model(dir);
  sl::Tokenizer tok(dir + "/tokenizer.model");
  auto prompts = story_prompts(tok);
  // Exit 1 is left out: stories260K's tied head reads layer-1 states as "repeat the input" with
  // near-certainty. These thresholds spread tokens over exits 2..5.
  const std::vector<sl::ExitThreshold> thr = {{2, 0.9}, {3, 0.5}, {4, 0.5}};
  struct Decision {
    int exit;
    double confidence;
  };
  using Case = std::pair<sl::SkippedKV, const char*>;
  for (const auto& [kv, conf] : {Case{sl::SkippedKV::kRecompute, "max_prob"}, Case{sl::SkippedKV::kRecompute, "margin"},
                                 Case{sl::SkippedKV::kCopy, "max_prob"}, Case{sl::SkippedKV::kCopy, "margin"}}) {
    auto o = dyn(48, thr, conf, kv);
    std::vector<std::vector<Decision>> seen(prompts.size());
    o.dynamic.on_exit = [&](size_t row, int exit, double c) { seen[row].push_back({exit, c}); };
    sl::DecodeStats st;
    auto gens = sl::generate(m, prompts, o, &st);
    EXPECT_GE(st.exit_histogram.size(), 3u) << "too few distinct exits to test skipped layers";

    torch::NoGradGuard g;
    const int L = 5;
    for (size_t b = 0; b < prompts.size(); ++b) {
      std::vector<int> seq = prompts[b], exit_of(seq.size(), L);  // per position: the exit it decided at
      const size_t steps = gens[b].tokens.size() + (gens[b].finish_reason == "eos");
      ASSERT_EQ(seen[b].size(), steps);
      for (size_t t = 0; t < steps; ++t) {
        const int64_t S = (int64_t)seq.size();
        torch::Tensor ids = torch::tensor(std::vector<int64_t>(seq.begin(), seq.end())).unsqueeze(0);
        torch::Tensor exits = torch::tensor(std::vector<int64_t>(exit_of.begin(), exit_of.end())).view({1, S, 1});
        sl::AttnInputs in = m->attn_inputs({}, 1, 0, S);
        torch::Tensor x = m->embed(ids), state = x;  // [1,S,D]
        int exit = 0, token = -1;
        double c = 0;
        for (int i = 0; i < L && exit == 0; ++i) {
          // Positions that exited at or before layer i feed their exit state to it.
          torch::Tensor frozen = (exits <= i).logical_and(torch::arange(S).view({1, S, 1}) < S - 1);
          x = m->layer(i, torch::where(frozen, state, x), in, nullptr);
          state = torch::where(exits == i + 1, x, state);
          double thr_i = i + 1 == L ? -1.0 : 2.0;  // the last layer always accepts; 2 = not an exit
          for (const auto& e : thr)
            if (e.layer == i + 1) thr_i = e.threshold;
          torch::Tensor probs = m->head(x[0][S - 1], i + 1).softmax(-1);
          torch::Tensor top = std::get<0>(probs.topk(2));
          double ci = std::string(conf) == "margin" ? (top[0] - top[1]).item<double>() : top[0].item<double>();
          if (ci >= thr_i) {
            exit = i + 1;
            c = ci;
            token = (int)probs.argmax().item<int64_t>();
          }
        }
        const std::string where = std::string(sl::skipped_kv_name(kv)) + ", " + conf + ", prompt " + std::to_string(b) +
                                  ", token " + std::to_string(t);
        EXPECT_EQ(exit, seen[b][t].exit) << where;
        EXPECT_NEAR(c, seen[b][t].confidence, 1e-4) << where;
        if (t < gens[b].tokens.size()) {
          EXPECT_EQ(token, gens[b].tokens[t]) << where;
        }
        if (exit != seen[b][t].exit || t >= gens[b].tokens.size()) break;
        // Copying: the position that decided this token exited there (the prompt's last one ran
        // every layer). Recomputing: every position's states stay the full model's.
        if (t > 0 && kv == sl::SkippedKV::kCopy) exit_of[S - 1] = exit;
        seq.push_back(token);
        exit_of.push_back(L);  // the newest position, still running
      }
    }
  }
}
