// Calibrated dynamic exit: the Learn-then-Test p-values and fixed-sequence testing as pure
// functions (expected values computed exactly with Python's fractions.Fraction and math.comb),
// the thresholds calibrate_dynamic chooses meeting their target on held-out prompts, and the
// decoding profile's round trip through config.json.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "sortedllama/eval/calibrate.h"
#include "sortedllama/eval/risk_control.h"
#include "sortedllama/io/checkpoint.h"
#include "sortedllama/io/tokenizer.h"
#include "sortedllama/util/files.h"
#include "test_util.h"

namespace {
void expect_rel(double got, double want, const std::string& what) { EXPECT_NEAR(got, want, 1e-9 * want) << what; }
}  // namespace

TEST(RiskControl, BinomialCdfIsExact) {
  // sum(comb(n, i) * p**i * (1 - p)**(n - i) for i in range(k + 1)) with p a Fraction
  expect_rel(sl::binomial_cdf(3, 20, 0.1), 0.8670466765656649, "3 of 20 at 0.1");
  expect_rel(sl::binomial_cdf(0, 100, 0.01), 0.3660323412732295, "0 of 100 at 0.01");
  expect_rel(sl::binomial_cdf(10, 1000, 0.02), 0.010236548159763444, "10 of 1000 at 0.02");
  expect_rel(sl::binomial_cdf(45, 50, 0.9), 0.5688015931709381, "45 of 50 at 0.9");
  EXPECT_EQ(sl::binomial_cdf(-1, 10, 0.5), 0.0);
  EXPECT_EQ(sl::binomial_cdf(10, 10, 0.5), 1.0);
}

TEST(RiskControl, PValuesMatchExactValues) {
  // hoeffding: exp(-n h(min(mean, a), a)); bentkus: min(1, e * P(Bin(n, a) <= ceil(n mean)))
  expect_rel(sl::hoeffding_p_value(0.0, 400, 0.01), 0.017950553275044735, "hoeffding, no loss");
  expect_rel(sl::bentkus_p_value(0.0, 400, 0.01), 0.048794662778341366, "bentkus, no loss");
  expect_rel(sl::hoeffding_p_value(0.02, 200, 0.1), 3.5245285407225264e-05, "hoeffding 0.02");
  expect_rel(sl::bentkus_p_value(0.02, 200, 0.1), 2.28781349350816e-05, "bentkus 0.02");
  expect_rel(sl::hoeffding_p_value(0.05, 50, 0.1), 0.4337334695745524, "hoeffding 0.05");
  expect_rel(sl::bentkus_p_value(0.05, 50, 0.1), 0.6803693763269134, "bentkus 0.05");
  EXPECT_EQ(sl::hoeffding_p_value(0.15, 100, 0.1), 1.0);  // the mean is above alpha: no evidence
  EXPECT_EQ(sl::bentkus_p_value(0.15, 100, 0.1), 1.0);
  expect_rel(sl::binomial_p_value(0, 300, 0.01), 0.049040894071285854, "binomial, 0 of 300");

  // risk_p_value: hb is the smaller; a mean that is an integer over n is not rounded up.
  std::vector<double> losses(200, 0.0);
  for (int i = 0; i < 4; ++i) losses[i] = 1.0;  // mean 0.02
  expect_rel(sl::risk_p_value(sl::PValue::kHoeffdingBentkus, losses, 0.1), 2.28781349350816e-05, "hb");
  expect_rel(sl::risk_p_value(sl::PValue::kHoeffding, losses, 0.1), 3.5245285407225264e-05, "hoeffding");
  EXPECT_THROW(sl::risk_p_value(sl::PValue::kBinomial, {0.5}, 0.1), std::invalid_argument);
  EXPECT_THROW(sl::risk_p_value(sl::PValue::kBentkus, {1.5}, 0.1), std::invalid_argument);
  EXPECT_THROW(sl::risk_p_value(sl::PValue::kBentkus, {}, 0.1), std::invalid_argument);
  EXPECT_THROW(sl::hoeffding_p_value(0.0, 10, 1.0), std::invalid_argument);
  EXPECT_EQ(sl::parse_p_value("hb"), sl::PValue::kHoeffdingBentkus);
  EXPECT_THROW(sl::parse_p_value("exact"), std::runtime_error);
}

TEST(RiskControl, FixedSequenceStopsAtTheFirstNonRejection) {
  const std::vector<double> p = {0.001, 0.01, 0.049, 0.2, 0.001};
  int calls = 0;
  auto fs = sl::fixed_sequence_test(p.size(), 0.05, [&](size_t j) {
    ++calls;
    return p[j];
  });
  EXPECT_EQ(fs.last_rejected, 2);  // candidate 4's small p-value is never looked at
  EXPECT_EQ(calls, 4);
  EXPECT_EQ(fs.p_values, std::vector<double>(p.begin(), p.begin() + 4));
  EXPECT_EQ(sl::fixed_sequence_test(3, 0.05, [](size_t) { return 0.5; }).last_rejected, -1);
  EXPECT_EQ(sl::fixed_sequence_test(3, 0.05, [](size_t) { return 0.0; }).last_rejected, 2);
  EXPECT_EQ(sl::fixed_sequence_test(0, 0.05, [](size_t) { return 0.0; }).last_rejected, -1);
  EXPECT_THROW(sl::fixed_sequence_test(1, 0.0, [](size_t) { return 0.0; }), std::invalid_argument);
}

TEST(Calibrate, DisagreementCountsDifferingAndMissingPositions) {
  EXPECT_EQ(sl::disagreement({1, 2, 3}, {1, 2, 3}), 0.0);
  EXPECT_EQ(sl::disagreement({1, 9, 3, 4}, {1, 2, 3, 4}), 0.25);
  EXPECT_EQ(sl::disagreement({1, 2}, {1, 2, 3, 4}), 0.5);
  EXPECT_EQ(sl::disagreement({1, 2, 3, 4}, {}), 1.0);
  EXPECT_EQ(sl::disagreement({}, {}), 0.0);
}

// The damped stories model has exits that agree with the full model often but not always, so a
// target in between certifies real early exits. 400 prompts: 200 hold out, 100 order, 100 test.
TEST(Calibrate, ThresholdsMeetTheTargetOnHeldOutPrompts) {
  const std::string dir = sl_test::stories_model_dir();
  sl::Llama m = sl_test::damped_stories_model(dir);
  sl::Tokenizer tok(dir + "/tokenizer.model");
  std::vector<std::vector<int>> prompts;
  for (const char* who : {"Tom", "Lily", "a little cat", "the big dog", "Ben", "a bird", "Sue", "the old man"})
    for (const char* did : {"saw", "had", "wanted", "found", "liked"})
      for (const char* what : {"a ball", "a tree", "the sun", "a red box", "some cake", "a toy", "the park", "a boat", "a dog", "a hat"})
        prompts.push_back(tok.encode(std::string("One day, ") + who + " " + did + " " + what, true));
  ASSERT_EQ(prompts.size(), 400u);
  sl::CalibrateOptions o;
  o.agreement = 0.8;
  o.confidence = 0.9;
  o.holdout = 0.5;
  o.max_new_tokens = 12;
  o.path_steps = 12;
  o.seed = 3;
  o.vocab_limit = tok.vocab_size();
  const sl::Calibration r = sl::calibrate_dynamic(m, prompts, o);
  EXPECT_EQ(r.n_holdout, 200);
  EXPECT_EQ(r.n_path, 100);
  EXPECT_EQ(r.n_test, 100);
  ASSERT_GE(r.chosen, 0) << "nothing certified";
  EXPECT_LT(r.holdout.mean_layers_per_token, 5.0) << "the chosen thresholds never exit early";
  EXPECT_GE(r.holdout.agreement, o.agreement) << sl::format_thresholds(r.thresholds);
  EXPECT_GE(r.calibration.agreement, o.agreement);
  // The path runs from conservative to aggressive: no threshold rises along it.
  for (size_t j = 1; j < r.path.size(); ++j)
    for (size_t e = 0; e < r.path[j].thresholds.size(); ++e)
      EXPECT_LE(r.path[j].thresholds[e].threshold, r.path[j - 1].thresholds[e].threshold);
  // Every tested candidate up to the chosen one was rejected; the next tested one (if any) was not.
  for (int j = 0; j <= r.chosen; ++j) EXPECT_LE(r.path[(size_t)j].p_value, 1 - o.confidence);
  if ((size_t)r.chosen + 1 < r.path.size()) {
    ASSERT_TRUE(r.path[(size_t)r.chosen + 1].tested);
    EXPECT_GT(r.path[(size_t)r.chosen + 1].p_value, 1 - o.confidence);
  }
  EXPECT_THROW(sl::calibrate_dynamic(m, {prompts[0]}, o), std::invalid_argument);  // empty splits
  o.agreement = 1.0;
  EXPECT_THROW(sl::calibrate_dynamic(m, prompts, o), std::invalid_argument);
}

TEST(DecodingProfile, RoundTripsThroughConfigJsonKeepingEveryOtherKey) {
  const std::string dir = sl_test::temp_dir("profile");
  nlohmann::json cfg = {{"hidden_size", 8},         {"intermediate_size", 16}, {"num_hidden_layers", 4},
                        {"num_attention_heads", 2}, {"vocab_size", 32},        {"custom_key", {{"kept", true}}}};
  sl::write_file_atomic(dir + "/config.json", cfg.dump());
  sl::DynamicProfile p;
  p.thresholds = {{1, 0.97}, {3, 2.0}};
  p.confidence = "margin";
  p.calibrated = {{"agreement", 0.99}, {"confidence", 0.95}, {"n_tokens", 1234}};
  sl::write_dynamic_profile(dir, p);
  const nlohmann::json back = sl::read_json_file(dir + "/config.json");
  EXPECT_EQ(back["custom_key"]["kept"], true);
  EXPECT_EQ(back["hidden_size"], 8);
  EXPECT_EQ(back["decoding"]["dynamic"]["thresholds"][0]["threshold"], 0.97);
  const sl::ModelConfig c = sl::ModelConfig::from_file(dir + "/config.json");
  ASSERT_TRUE(c.dynamic_profile);
  EXPECT_EQ(c.dynamic_profile->thresholds, p.thresholds);
  EXPECT_EQ(c.dynamic_profile->confidence, "margin");
  EXPECT_EQ(c.dynamic_profile->calibrated["n_tokens"], 1234);
  // to_json writes it back the same way (a saved or converted model keeps its profile).
  const sl::ModelConfig again = sl::ModelConfig::from_json(c.to_json(), "to_json");
  ASSERT_TRUE(again.dynamic_profile);
  EXPECT_EQ(again.dynamic_profile->thresholds, p.thresholds);
  EXPECT_EQ(again.dynamic_profile->calibrated, p.calibrated);
  // A profile this model cannot use is refused before anything is written.
  p.thresholds = {{5, 0.9}};
  EXPECT_THROW(sl::write_dynamic_profile(dir, p), std::runtime_error);
  EXPECT_EQ(sl::read_json_file(dir + "/config.json"), back);
}

TEST(DecodingProfile, BadProfilesNameTheKey) {
  const nlohmann::json base = {{"hidden_size", 8}, {"intermediate_size", 16}, {"num_hidden_layers", 4},
                               {"num_attention_heads", 2}, {"vocab_size", 32}};
  auto error_of = [&](const nlohmann::json& decoding) {
    nlohmann::json j = base;
    j["decoding"] = decoding;
    try {
      sl::ModelConfig::from_json(j, "cfg.json");
    } catch (const std::runtime_error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  auto t = [](int layer, double threshold) { return nlohmann::json{{"layer", layer}, {"threshold", threshold}}; };
  EXPECT_NE(error_of({{"dynamic", {{"thresholds", {t(2, 0.9), t(2, 0.8)}}}}}).find("layers must increase"), std::string::npos);
  EXPECT_NE(error_of({{"dynamic", {{"thresholds", {t(7, 0.9)}}}}}).find("within 1..4"), std::string::npos);
  EXPECT_NE(error_of({{"dynamic", {{"thresholds", {t(2, -1)}}}}}).find("threshold must be"), std::string::npos);
  EXPECT_NE(error_of({{"dynamic", {{"thresholds", "2:0.9"}}}}).find("decoding.dynamic.thresholds"), std::string::npos);
  EXPECT_NE(error_of({{"dynamic", {{"thresholds", {t(2, 0.9)}}, {"confidence", "entropy"}}}}).find("decoding.dynamic.confidence"),
            std::string::npos);
  EXPECT_NE(error_of({{"dynamic", {{"thresholds", {t(2, 0.9)}}, {"threshold", 1}}}}).find("decoding.dynamic.threshold\""),
            std::string::npos);
  EXPECT_NE(error_of({{"speculative", {}}}).find("decoding.speculative"), std::string::npos);
  EXPECT_NE(error_of({{"speculative", {{"draft_layer", 4}}}}).find("decoding.speculative.draft_layer 4 is not in 1..3"),
            std::string::npos);
  EXPECT_NE(error_of({{"speculative", {{"draft_tokens", 3}}}}).find("\"draft_layer\""), std::string::npos);
  EXPECT_NE(error_of({{"speculative", {{"draft_layer", 2}, {"draft_confidence", 1.0}}}}).find("draft_confidence"),
            std::string::npos);
  EXPECT_NE(error_of({{"speculative", {{"draft_layer", 2}, {"draft_tokens", -1}}}}).find("draft_tokens"), std::string::npos);
  EXPECT_NE(error_of({{"speculative", {{"draft_layer", 2}, {"draft_length", 3}}}}).find("decoding.speculative.draft_length"),
            std::string::npos);
  EXPECT_NE(error_of({{"speculative", {{"draft_layer", 2}, {"tuned", 3}}}}).find("decoding.speculative.tuned"), std::string::npos);
  EXPECT_NE(error_of(nlohmann::json::object()).find("holds no profile"), std::string::npos);
  EXPECT_NE(error_of({{"static", 1}}).find("unknown key \"decoding.static\""), std::string::npos);
  EXPECT_EQ(error_of({{"dynamic", {{"thresholds", {t(2, 0.9)}}}}}), "no error");
  EXPECT_EQ(error_of({{"speculative", {{"draft_layer", 2}, {"draft_tokens", 0}, {"draft_confidence", 0.5}}}}), "no error");
}
