// sortedllama calibrate: thresholds for dynamic early exit with a statistical guarantee of
// agreement with the full model (eval/calibrate.h says what it covers), stored as the decoding
// profile of the checkpoint's config.json, which generate --dynamic and eval --decode dynamic use.
#include <chrono>

#include <spdlog/spdlog.h>

#include "cli.h"
#include "sortedllama/eval/calibrate.h"
#include "sortedllama/eval/results.h"
#include "sortedllama/io/checkpoint.h"
#include "sortedllama/model/exits.h"
#include "sortedllama/util/files.h"

namespace sl {

namespace {
using ojson = nlohmann::ordered_json;

struct CalibrateArgs {
  std::string model, tokenizer, prompts, out, seed = "0", measure = "max_prob", p_value = "hb", exits = "auto";
  double agreement = 0.99, confidence = 0.95, holdout = 0.2, path_fraction = 0.5;
  int64_t new_tokens = 32, batch_size = 16;
  int steps = 24;
  bool json = false, no_write = false;
};

ojson check_json(const AgreementCheck& c, int n_layers) {
  ojson hist = ojson::object();
  for (const auto& [k, n] : c.exit_histogram) hist[std::to_string(k)] = n;
  return {{"prompts", c.prompts},
          {"positions", c.positions},
          {"agreement", c.agreement},
          {"token_agreement", c.token_agreement},
          {"identical", c.identical},
          {"mean_layers_per_token", c.mean_layers_per_token},
          {"estimated_speedup", c.mean_layers_per_token > 0 ? n_layers / c.mean_layers_per_token : 0.0},
          {"ms_per_token", c.ms_per_token},
          {"full_ms_per_token", c.full_ms_per_token},
          {"measured_speedup", c.ms_per_token > 0 ? c.full_ms_per_token / c.ms_per_token : 0.0},
          {"exit_histogram", hist}};
}

ojson thresholds_json(const std::vector<ExitThreshold>& t) {
  ojson j = ojson::array();
  for (const auto& e : t) j.push_back({{"layer", e.layer}, {"threshold", e.threshold}});
  return j;
}

// What the profile's "calibrated" block records: the guarantee and the evidence for it.
nlohmann::json calibrated_json(const Calibration& r, const CalibrateArgs& a) {
  return {{"agreement", a.agreement},
          {"confidence", a.confidence},
          {"certified", r.chosen >= 0},
          {"loss", "per prompt: fraction of output positions where greedy dynamic decoding differs from the full model's greedy output"},
          {"p_value", a.p_value},
          {"max_new_tokens", a.new_tokens},
          {"skipped_kv", skipped_kv_name(DynamicParams().kv)},  // the rule the test decoding used
          {"prompts", a.prompts},
          {"n_tokens", r.test_tokens},
          {"n_test_prompts", r.n_test},
          {"test_agreement", r.calibration.agreement},
          {"holdout_prompts", r.n_holdout},
          {"holdout_agreement", r.n_holdout > 0 ? nlohmann::json(r.holdout.agreement) : nlohmann::json()},
          {"date", iso_date_utc()},
          {"version", std::string("sortedllama ") + SORTEDLLAMA_VERSION}};
}

std::string table(const Calibration& r, const CalibrateArgs& a, int n_layers) {
  std::string s = fmt::format("target: agreement >= {} with probability >= {} ({} p-values; {} prompts order the candidates, "
                              "{} test them ({} full-model tokens), {} held out)\n",
                              a.agreement, a.confidence, a.p_value, r.n_path, r.n_test, r.test_tokens, r.n_holdout);
  s += fmt::format("{:>9}  {:>9}  {:>9}  {:>9}  {:>12}  thresholds\n", "candidate", "rate", "p-value", "agreement", "layers/token");
  for (size_t j = 0; j < r.path.size(); ++j) {
    const Candidate& c = r.path[j];
    if (!c.tested) break;
    s += fmt::format("{:>9}  {:>9.2e}  {:>9.3g}  {:>9.4f}  {:>12.2f}  {}{}\n", j, c.rate, c.p_value, c.test.agreement,
                     c.test.mean_layers_per_token, format_thresholds(c.thresholds), (int)j == r.chosen ? "  <- chosen" : "");
  }
  if (r.chosen < 0) s += "no candidate passed: never exit early (the full model's output, which meets any target)\n";
  s += fmt::format("\n{:>5}  {:>9}\n", "exit", "threshold");
  for (const auto& t : r.thresholds) s += fmt::format("{:>5}  {:>9}\n", t.layer, t.threshold > 1 ? "never" : fmt::format("{:.6g}", t.threshold));
  s += fmt::format("\n{:<11}  {:>7}  {:>9}  {:>15}  {:>9}  {:>15}  {:>14}  {:>17}\n", "split", "prompts", "agreement",
                   "token agreement", "identical", "mean exit layer", "est. speed-up", "measured speed-up");
  auto row = [&](const char* name, const AgreementCheck& c) {
    s += fmt::format("{:<11}  {:>7}  {:>9.4f}  {:>15.4f}  {:>9.3f}  {:>15.2f}  {:>13.2f}x  {:>16.2f}x\n", name, c.prompts,
                     c.agreement, c.token_agreement, c.identical, c.mean_layers_per_token,
                     c.mean_layers_per_token > 0 ? n_layers / c.mean_layers_per_token : 0.0,
                     c.ms_per_token > 0 ? c.full_ms_per_token / c.ms_per_token : 0.0);
  };
  row("calibration", r.calibration);
  if (r.n_holdout > 0) row("held-out", r.holdout);
  s += fmt::format("speed measured with --batch-size {}: a batch runs each layer while any of its rows needs it, so "
                   "one prompt at a time gains more\n",
                   a.batch_size);
  return s;
}

void run_calibrate(const CalibrateArgs& a, const CLI::App& cmd, const GlobalOptions& g) {
  const auto started = std::chrono::steady_clock::now();
  CalibrateOptions o;
  auto open01 = [](double v, const char* option) {
    if (!(v > 0 && v < 1)) throw std::runtime_error(std::string(option) + " " + fmt::format("{}", v) + " must be in (0, 1)");
  };
  open01(a.agreement, "--agreement");
  open01(a.confidence, "--confidence");
  open01(a.path_fraction, "--path-fraction");
  if (!(a.holdout >= 0 && a.holdout < 1)) throw std::runtime_error(fmt::format("--holdout {} must be in [0, 1)", a.holdout));
  o.agreement = a.agreement;
  o.confidence = a.confidence;
  o.holdout = a.holdout;
  o.path_fraction = a.path_fraction;
  o.path_steps = a.steps;
  o.measure = parse_confidence(a.measure);
  o.p_value = parse_p_value(a.p_value);
  o.max_new_tokens = a.new_tokens;
  o.batch_size = a.batch_size;
  o.seed = parse_u64(a.seed, "--seed");
  const std::vector<std::string> texts = read_prompts(a.prompts, "--prompts");
  LoadedModel m = load_model_and_tokenizer(a.model, a.tokenizer, g);
  const int L = (int)m.model->config().n_layers;
  for (int k : parse_exits(a.exits, L))
    if (k < L) o.exits.push_back(k);
  o.eos_id = m.model->config().eos_id;
  o.vocab_limit = m.tokenizer->vocab_size();
  const std::vector<std::vector<int>> ids = encode_prompts(texts, m, a.batch_size, a.new_tokens);

  Calibration r;
  try {
    r = calibrate_dynamic(m.model, ids, o);
  } catch (const std::invalid_argument& e) {
    throw std::runtime_error(std::string("calibrate: ") + e.what() + " (--prompts " + a.prompts + ", --holdout, --path-fraction)");
  }
  if (r.chosen < 0)
    spdlog::warn("no candidate met agreement {} with probability {} on {} test prompts: the profile never exits early "
                 "(more prompts, a lower --agreement or a lower --confidence can certify earlier exits)",
                 a.agreement, a.confidence, r.n_test);

  DynamicProfile profile;
  for (const auto& t : r.thresholds) profile.thresholds.emplace_back(t.layer, t.threshold);
  profile.confidence = a.measure;
  profile.calibrated = calibrated_json(r, a);
  if (!a.no_write) {
    write_dynamic_profile(a.model, profile);
    spdlog::info("decoding profile written to {}/config.json (decoding.dynamic): thresholds {}", a.model,
                 format_thresholds(r.thresholds));
  }

  ojson path = ojson::array();
  for (const Candidate& c : r.path) {
    ojson j = {{"rate", c.rate}, {"thresholds", thresholds_json(c.thresholds)}, {"tested", c.tested}};
    if (c.tested) {
      j["p_value"] = c.p_value;
      j["rejected"] = c.p_value <= 1 - a.confidence;
      j["test"] = check_json(c.test, L);
    }
    path.push_back(j);
  }
  ojson result = {
      {"task", "calibrate"},
      {"model", a.model},
      {"target", {{"agreement", a.agreement}, {"confidence", a.confidence}, {"p_value", a.p_value}, {"measure", a.measure}}},
      {"splits", {{"path", r.n_path}, {"test", r.n_test}, {"holdout", r.n_holdout}}},
      {"path", path},
      {"chosen", r.chosen >= 0 ? ojson(r.chosen) : ojson()},
      {"thresholds", thresholds_json(r.thresholds)},
      {"calibration", check_json(r.calibration, L)},
      {"holdout", r.n_holdout > 0 ? check_json(r.holdout, L) : ojson()},
      {"profile_written", !a.no_write},
      {"config", recorded_options(cmd)},
      {"version", std::string("sortedllama ") + SORTEDLLAMA_VERSION},
      {"date", iso_date_utc()},
      {"total_time_seconds", std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count()}};
  emit_results(result, a.out, a.json, table(r, a, L));
}
}  // namespace

void add_calibrate_command(CLI::App& app, const GlobalOptions& g) {
  auto a = std::make_shared<CalibrateArgs>();
  CLI::App* cmd = app.add_subcommand("calibrate", "choose dynamic early-exit thresholds with a guaranteed agreement with the full model");
  add_profile_source_options(cmd, a->model, a->tokenizer, a->prompts);
  cmd->add_option("--agreement", a->agreement, "target agreement with the full model's greedy output, in (0, 1)");
  cmd->add_option("--confidence", a->confidence, "probability of meeting the target, in (0, 1)");
  cmd->add_option("--new-tokens", a->new_tokens, "max new tokens per prompt (the guarantee holds for this budget)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--holdout", a->holdout, "fraction of the prompts held out for the reported check, in [0, 1)");
  cmd->add_option("--path-fraction", a->path_fraction, "of the other prompts, the share that orders the candidates (the rest tests them)");
  cmd->add_option("--steps", a->steps, "disagreement rates on the path (plus half as many conservative steps)")->check(CLI::PositiveNumber);
  cmd->add_option("--exits", a->exits, "exits that may accept early: auto | all | 2,4 (the last layer always accepts)");
  cmd->add_option("--measure", a->measure, "confidence measure: max_prob (top-1) or margin (top-1 minus top-2)")
      ->check(CLI::IsMember({"max_prob", "margin"}));
  cmd->add_option("--p-value", a->p_value, "hb (Hoeffding-Bentkus), hoeffding or bentkus: valid for losses in [0, 1]")
      ->check(CLI::IsMember({"hb", "hoeffding", "bentkus"}));
  cmd->add_option("--seed", a->seed, "seed of the random split (0 .. 2^64-1)");
  cmd->add_option("--batch-size", a->batch_size, "prompts decoded together")->check(CLI::PositiveNumber);
  cmd->add_option("--out", a->out, "also write the JSON results to this file");
  cmd->add_flag("--json", a->json, "print the JSON results instead of the table");
  cmd->add_flag("--no-write", a->no_write, "leave config.json as it is");
  cmd->callback([a, cmd, &g] { run_calibrate(*a, *cmd, g); });
}

}  // namespace sl
