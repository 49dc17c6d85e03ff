// Training recipes beyond the paper: exit loss scales, exit curricula, layer dropout and the named
// presets; each step's exits and dropout logged, and every run resumable exactly.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

#include "sortedllama/io/checkpoint.h"
#include "sortedllama/train/config.h"
#include "sortedllama/train/recipe.h"
#include "sortedllama/train/trainer.h"
#include "test_util.h"
#include "train/train_util.h"

namespace fs = std::filesystem;
using torch::Tensor;

namespace {
void expect_weights(const std::vector<double>& got, const std::vector<double>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-12) << "exit index " << i;
}

// The train lines of a run's metrics.jsonl, by step.
std::map<int64_t, nlohmann::json> train_lines(const std::string& out_dir) {
  std::map<int64_t, nlohmann::json> lines;
  std::ifstream m(out_dir + "/metrics.jsonl");
  for (std::string line; std::getline(m, line);)
    if (auto j = nlohmann::json::parse(line); j["type"] == "train") lines[j["step"].get<int64_t>()] = j;
  return lines;
}

// A run "killed" after step 4 and resumed from its step-3 checkpoint repeats the uninterrupted run
// step by step: loss, exits, per-exit losses, dropped layers, and the final weights.
void expect_resume_repeats(nlohmann::json c) {
  c["train"]["max_steps"] = 6;
  c["train"]["grad_accum"] = 2;
  c["train"]["warmup_ratio"] = 0.3;
  c["save"]["every"] = 3;
  c["save"]["keep_last"] = 1;
  auto full = sl::finetune(c, "", torch::kCPU);

  auto d = c;
  d["out_dir"] = sl_test::temp_dir("resume-recipe") + "/out";
  sl::FinetuneHooks stop;
  stop.stop_after = 4;
  auto first = sl::finetune(d, "", torch::kCPU, stop);
  ASSERT_EQ(first.losses.size(), 4u);
  auto rest = sl::finetune(d, "auto", torch::kCPU);
  ASSERT_EQ(rest.losses.size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_NEAR(rest.losses[i], full.losses[3 + i], 1e-6) << "step " << 4 + i;

  const auto a = train_lines(c["out_dir"].get<std::string>()), b = train_lines(d["out_dir"].get<std::string>());
  ASSERT_EQ(a.size(), 6u);
  ASSERT_EQ(b.size(), 6u);
  for (const auto& [step, ja] : a) {
    const nlohmann::json& jb = b.at(step);
    EXPECT_EQ(ja["exits"], jb["exits"]) << "step " << step;
    EXPECT_EQ(ja["layers_dropped"], jb["layers_dropped"]) << "step " << step;
    for (auto& [e, l] : ja["exit_loss"].items()) EXPECT_NEAR(l.get<double>(), jb["exit_loss"][e].get<double>(), 1e-6) << "step " << step << " exit " << e;
  }
  auto ma = sl::load_model(full.final_dir), mb = sl::load_model(rest.final_dir);
  for (auto& p : ma->named_parameters()) EXPECT_LT(sl_test::max_abs_diff(p.value(), mb->named_parameters()[p.key()]), 1e-6) << p.key();
}

std::vector<size_t> logged_exit_indices(const nlohmann::json& line) {
  std::vector<size_t> idx;
  for (const auto& e : line["exits"]) idx.push_back(e.get<size_t>() - 1);  // exits "all": exit k is index k-1
  return idx;
}
}  // namespace

// ---- The arithmetic ----

TEST(Recipes, ExitScalesAreNormalisedWeights) {
  using S = sl::ExitScale;
  const std::vector<int> e = {1, 2, 3, 4, 5};
  expect_weights(sl::exit_scale_weights(S::kUniform, e, 0.5), {0.2, 0.2, 0.2, 0.2, 0.2});
  expect_weights(sl::exit_scale_weights(S::kLinear, e, 0.5), {1 / 15.0, 2 / 15.0, 3 / 15.0, 4 / 15.0, 5 / 15.0});
  const double r = 1 + std::sqrt(2.0) + std::sqrt(3.0) + 2 + std::sqrt(5.0);
  expect_weights(sl::exit_scale_weights(S::kSqrt, e, 0.5), {1 / r, std::sqrt(2.0) / r, std::sqrt(3.0) / r, 2 / r, std::sqrt(5.0) / r});
  expect_weights(sl::exit_scale_weights(S::kInverse, e, 0.5), {60 / 137.0, 30 / 137.0, 20 / 137.0, 15 / 137.0, 12 / 137.0});
  expect_weights(sl::exit_scale_weights(S::kLast, e, 0.6), {0.1, 0.1, 0.1, 0.1, 0.6});
  expect_weights(sl::exit_scale_weights(S::kLast, {40}, 0.6), {1.0});
  for (S s : {S::kUniform, S::kLinear, S::kSqrt, S::kInverse, S::kLast}) {
    double sum = 0;
    for (double w : sl::exit_scale_weights(s, {12, 16, 40}, 0.7)) sum += w;
    EXPECT_NEAR(sum, 1.0, 1e-12);
  }
}

TEST(Recipes, CurriculaAreFunctionsOfSeedAndStep) {
  using C = sl::Curriculum;
  using V = std::vector<size_t>;
  EXPECT_EQ(sl::curriculum_exits(C::kNone, 5, 3, 10, 7, 2), (V{0, 1, 2, 3, 4}));
  // rotational: every period-th exit, shifted by one per step (and by the seed); the last always.
  EXPECT_EQ(sl::curriculum_exits(C::kRotational, 5, 0, 10, 0, 2), (V{0, 2, 4}));
  EXPECT_EQ(sl::curriculum_exits(C::kRotational, 5, 1, 10, 0, 2), (V{1, 3, 4}));
  EXPECT_EQ(sl::curriculum_exits(C::kRotational, 5, 0, 10, 0, 3), (V{0, 3, 4}));
  EXPECT_EQ(sl::curriculum_exits(C::kRotational, 5, 1, 10, 0, 3), (V{2, 4}));
  EXPECT_EQ(sl::curriculum_exits(C::kRotational, 5, 2, 10, 0, 3), (V{1, 4}));
  EXPECT_EQ(sl::curriculum_exits(C::kRotational, 5, 0, 10, 1, 3), sl::curriculum_exits(C::kRotational, 5, 1, 10, 0, 3));
  // gradual: from the last exit down, one more every total / n steps.
  EXPECT_EQ(sl::curriculum_exits(C::kGradual, 5, 0, 10, 0, 2), (V{4}));
  EXPECT_EQ(sl::curriculum_exits(C::kGradual, 5, 1, 10, 0, 2), (V{4}));
  EXPECT_EQ(sl::curriculum_exits(C::kGradual, 5, 2, 10, 0, 2), (V{3, 4}));
  EXPECT_EQ(sl::curriculum_exits(C::kGradual, 5, 9, 10, 0, 2), (V{0, 1, 2, 3, 4}));
  // Every exit trains within any `period` consecutive steps.
  for (int64_t s = 0; s < 20; ++s) {
    std::set<size_t> seen;
    for (int64_t t = s; t < s + 3; ++t)
      for (size_t i : sl::curriculum_exits(C::kRotational, 7, t, 100, 42, 3)) seen.insert(i);
    EXPECT_EQ(seen.size(), 7u) << "from step " << s;
  }
}

TEST(Recipes, LayerDropRatesAndDrawsAreDeterministic) {
  using D = sl::DropSchedule;
  expect_weights(sl::layer_drop_rates(0.2, D::kLinear, 5), {0.0, 0.05, 0.1, 0.15, 0.2});
  expect_weights(sl::layer_drop_rates(0.2, D::kExp, 5),
                 {0.0, 0.2 * (std::pow(2.0, 0.25) - 1), 0.2 * (std::sqrt(2.0) - 1), 0.2 * (std::pow(2.0, 0.75) - 1), 0.2});
  int dropped = 0, same = 0, differs = 0;
  for (int64_t j = 0; j < 20000; ++j) {
    const bool d = sl::layer_dropped(0.3, 42, 7, j, 2);
    dropped += d;
    same += d == sl::layer_dropped(0.3, 42, 7, j, 2);
    differs += d != sl::layer_dropped(0.3, 43, 7, j, 2);
    EXPECT_FALSE(sl::layer_dropped(0.0, 42, 7, j, 2));
  }
  EXPECT_NEAR(dropped / 20000.0, 0.3, 0.015);
  EXPECT_EQ(same, 20000);
  EXPECT_GT(differs, 20000 * 0.3);  // another seed draws other sequences
}

// A dropped layer leaves that sequence's residual stream as it was; the other sequences run it.
TEST(Recipes, DroppedLayerPassesTheResidualThroughPerSequence) {
  auto ex = examples(2);
  sl::Llama m = sl::load_model(sl_test::stories_model_dir());
  Tensor keep = torch::ones({5, 2}, torch::kBool);
  keep[2][0] = false;  // sequence 0 skips layer 3
  sl::Batch both = sl::collate({&ex[0], &ex[1]}, torch::kCPU);
  const double got = sl::multi_exit_backward(m, both, {5}, {1}, (double)both.targets, 64, false, keep)[5];
  const double got_ckpt = sl::multi_exit_backward(m, both, {5}, {1}, (double)both.targets, 64, true, keep)[5];

  torch::NoGradGuard no_grad;
  sl::Batch first = sl::collate({&ex[0]}, torch::kCPU), second = sl::collate({&ex[1]}, torch::kCPU);
  sl::AttnInputs in = m->attn_inputs(first.key_mask, 1, 0, first.tokens.size(1));
  Tensor x = m->embed(first.tokens);
  for (int i : {0, 1, 3, 4}) x = m->layer(i, x, in, nullptr);
  const double want = sl::exit_nll_sum(m, x, first.labels, 5, 64) +
                      sl::exit_nll_sum(m, m->forward(second.tokens, {5}, second.key_mask)[0], second.labels, 5, 64);
  const double undropped = sl::exit_nll_sum(m, m->forward(both.tokens, {5}, both.key_mask)[0], both.labels, 5, 64);
  EXPECT_NEAR(got, want, 1e-5 * want);
  EXPECT_NEAR(got_ckpt, got, 1e-6 * want);
  EXPECT_GT(std::abs(got - undropped), 1e-3 * want);  // the skipped layer matters
}

// ---- Config: presets, overrides, errors ----

TEST(Recipes, NamedRecipesPresetKeysThatExplicitKeysOverride) {
  auto c = sl::resolve_train_config("", {});
  EXPECT_EQ(c["train"]["recipe"], "soft");
  EXPECT_EQ(c["train"]["exit_scale"], "uniform");
  EXPECT_EQ(c["train"]["curriculum"], "none");
  EXPECT_EQ(c["train"]["layer_dropout"], 0.0);
  c = sl::resolve_train_config("", {"train.recipe=layerskip"});
  EXPECT_EQ(c["train"]["exit_scale"], "linear");
  EXPECT_EQ(c["train"]["curriculum"], "rotational");
  EXPECT_GT(c["train"]["layer_dropout"].get<double>(), 0.0);
  EXPECT_EQ(c["train"]["layer_dropout_schedule"], "exp");
  c = sl::resolve_train_config("", {"train.layer_dropout=0", "train.recipe=layerskip"});  // explicit wins, in any order
  EXPECT_EQ(c["train"]["layer_dropout"], 0.0);
  EXPECT_EQ(c["train"]["curriculum"], "rotational");
  EXPECT_EQ(sl::resolve_train_config("", {"train.recipe=lite"})["train"]["exit_scale"], "linear");
  EXPECT_EQ(sl::resolve_train_config("", {"train.recipe=anchored"})["train"]["exit_scale"], "last");

  const std::string dir = sl_test::temp_dir("recipe-cfg");
  sl_test::write_file(dir + "/lite.json", R"({"train": {"recipe": "lite", "exit_scale": "sqrt"}})");
  c = sl::resolve_train_config(dir + "/lite.json", {});
  EXPECT_EQ(c["train"]["recipe"], "lite");
  EXPECT_EQ(c["train"]["exit_scale"], "sqrt");
  EXPECT_EQ(sl::resolve_train_config(dir + "/lite.json", {"train.recipe=soft"})["train"]["exit_scale"], "sqrt");
  EXPECT_EQ(sl::resolve_train_config(dir + "/lite.json", {"train.recipe=soft"})["train"]["recipe"], "soft");
}

TEST(Recipes, BadValuesNameTheKey) {
  auto parse = [&](const std::vector<std::string>& sets) {
    std::vector<std::string> all = {"model=" + sl_test::stories_model_dir(), "data.train=" + alpaca_slice(0, 64)};
    all.insert(all.end(), sets.begin(), sets.end());
    return error_of([&] { sl::parse_train_options(sl::resolve_train_config("", all)); });
  };
  auto has = [](const std::string& err, const std::string& what) {
    EXPECT_NE(err.find(what), std::string::npos) << "got: " << err;
  };
  has(parse({"train.exit_scale=cubic"}), "\"train.exit_scale\": \"cubic\" is not one of uniform, linear, sqrt, inverse, last");
  has(parse({"train.exit_scale_last=0"}), "\"train.exit_scale_last\" must be positive");
  has(parse({"train.exit_scale_last=1.5"}), "\"train.exit_scale_last\" must be in (0, 1]");
  has(parse({"train.curriculum=random"}), "\"train.curriculum\": \"random\" is not one of none, rotational, gradual");
  has(parse({"train.curriculum_period=0"}), "\"train.curriculum_period\" must be positive");
  has(parse({"train.layer_dropout=1"}), "\"train.layer_dropout\" must be below 1");
  has(parse({"train.layer_dropout=-0.1"}), "\"train.layer_dropout\" must not be negative");
  has(parse({"train.layer_dropout_schedule=cosine"}), "\"train.layer_dropout_schedule\": \"cosine\" is not one of linear, exp");
  has(parse({"train.recipe=fast"}), "\"train.recipe\": \"fast\" is not one of soft, layerskip, lite, anchored");
  has(parse({"exit_sample=2", "train.curriculum=gradual"}), "\"exit_sample\" and \"train.curriculum\" exclude each other");
}

// ---- In the trainer ----

TEST(Recipes, ExitScaleWeighsTheLoggedLossAndExplicitWeightsReplaceIt) {
  auto c = tiny_config("soft", 1);
  c["train"]["exit_scale"] = "linear";
  sl::finetune(c, "", torch::kCPU);
  auto j = train_lines(c["out_dir"].get<std::string>()).at(1);
  double want = 0;
  for (int k = 1; k <= 5; ++k) want += k * j["exit_loss"][std::to_string(k)].get<double>() / 15.0;
  EXPECT_NEAR(j["loss"].get<double>(), want, 1e-9);
  EXPECT_NEAR(j["exit_weights"][4].get<double>(), 5 / 15.0, 1e-12);

  c = tiny_config("soft", 1);
  c["train"]["exit_scale"] = "inverse";
  c["exits"] = "5,2";
  c["exit_weights"] = {3.0, 1.0};
  sl::finetune(c, "", torch::kCPU);
  j = train_lines(c["out_dir"].get<std::string>()).at(1);
  EXPECT_NEAR(j["loss"].get<double>(), (3.0 * j["exit_loss"]["5"].get<double>() + j["exit_loss"]["2"].get<double>()) / 4.0, 1e-9);
}

TEST(Recipes, LayerDropoutIsOffInValidation) {
  auto c = tiny_config("soft", 2);
  c["train"]["layer_dropout"] = 0.6;
  c["train"]["layer_dropout_schedule"] = "linear";
  auto r = sl::finetune(c, "", torch::kCPU);
  // The run's validation equals a fresh one of its final model, which has no dropout to apply.
  sl::Tokenizer tok(sl_test::stories_model_dir() + "/tokenizer.model");
  sl::DataOptions o;
  o.format = "text";
  o.max_seq_len = 64;
  auto valid = sl::load_examples(alpaca_slice(1000, 24, true), tok, o, nullptr);
  sl::Llama m = sl::load_model(r.final_dir);
  m->eval();
  auto fresh = sl::validation_loss(m, valid, {1, 2, 3, 4, 5}, 8);
  ASSERT_EQ(r.valid_loss.size(), 5u);
  for (auto& [e, l] : fresh) EXPECT_NEAR(r.valid_loss.at(e), l, 1e-9) << "exit " << e;
  // ... while training did drop layers: none the first, most the last (8 sequences x 2 steps).
  const auto lines = train_lines(c["out_dir"].get<std::string>());
  int64_t first = 0, last = 0;
  for (const auto& [step, j] : lines) {
    first += j["layers_dropped"][0].get<int64_t>();
    last += j["layers_dropped"][4].get<int64_t>();
  }
  EXPECT_EQ(first, 0);
  EXPECT_GT(last, 3);
}

TEST(RecipeResume, RotationalCurriculum) {
  auto c = tiny_config("soft", 6);
  c["train"]["curriculum"] = "rotational";
  c["train"]["curriculum_period"] = 3;
  expect_resume_repeats(c);
  const auto lines = train_lines(c["out_dir"].get<std::string>());
  for (const auto& [step, j] : lines)
    EXPECT_EQ(logged_exit_indices(j), sl::curriculum_exits(sl::Curriculum::kRotational, 5, step - 1, 6, 42, 3)) << "step " << step;
}

TEST(RecipeResume, GradualCurriculum) {
  auto c = tiny_config("soft", 6);
  c["train"]["curriculum"] = "gradual";
  expect_resume_repeats(c);
  const auto lines = train_lines(c["out_dir"].get<std::string>());
  EXPECT_EQ(lines.at(1)["exits"], nlohmann::json({5}));
  EXPECT_EQ(lines.at(4)["exits"], nlohmann::json({3, 4, 5}));  // the resumed run starts mid-curriculum
  EXPECT_EQ(lines.at(6)["exits"], nlohmann::json({1, 2, 3, 4, 5}));
}

TEST(RecipeResume, LayerDropout) {
  auto c = tiny_config("soft", 6);
  c["train"]["layer_dropout"] = 0.5;
  expect_resume_repeats(c);
  int64_t dropped = 0;
  for (const auto& [step, j] : train_lines(c["out_dir"].get<std::string>()))
    for (const auto& n : j["layers_dropped"]) dropped += n.get<int64_t>();
  EXPECT_GT(dropped, 0);
}
