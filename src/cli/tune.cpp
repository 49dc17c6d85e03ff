// sortedllama tune: the self-speculative settings that decode fastest with the full model
// verifying (eval/tune.h says how), stored as the decoding profile of the checkpoint's
// config.json, which generate --speculative and eval --decode speculative use.
#include <chrono>

#include <spdlog/spdlog.h>

#include "cli.h"
#include "sortedllama/eval/results.h"
#include "sortedllama/eval/tune.h"
#include "sortedllama/io/checkpoint.h"
#include "sortedllama/model/exits.h"
#include "sortedllama/util/files.h"

namespace sl {

namespace {
using ojson = nlohmann::ordered_json;

struct TuneArgs {
  std::string model, tokenizer, prompts, out, draft_layers = "auto", confidences = "0.3,0.5,0.7,0.9";
  int max_draft_tokens = 8, verify = 3, repeats = 3;
  int64_t new_tokens = 64, batch_size = 1;
  bool no_adaptive = false, json = false, no_write = false;
};

std::vector<double> parse_confidences(const std::string& spec) {
  std::vector<double> c;
  if (spec == "none") return c;
  size_t start = 0;
  while (start <= spec.size()) {
    const size_t end = std::min(spec.find(',', start), spec.size());
    const std::string item = spec.substr(start, end - start);
    size_t used = 0;
    double v = 0;
    try {
      v = std::stod(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (item.empty() || used != item.size() || !(v > 0 && v < 1))
      throw std::runtime_error("--confidences: \"" + item + "\" is not a probability in (0, 1) (or give \"none\")");
    c.push_back(v);
    start = end + 1;
  }
  return c;
}

std::string rule_name(const SpeculativeParams& p) {
  if (p.draft_confidence > 0) return fmt::format("confidence {}", p.draft_confidence);
  if (p.draft_tokens > 0) return fmt::format("{} drafts", p.draft_tokens);
  return "adaptive";
}

ojson candidate_json(const TunedCandidate& c) {
  ojson j = {{"draft_layer", c.draft_layer},
             {"draft_tokens", c.params.draft_tokens},
             {"draft_confidence", c.params.draft_confidence},
             {"rule", rule_name(c.params)},
             {"predicted_speedup", c.predicted_speedup},
             {"predicted_rounds", c.predicted.rounds},
             {"predicted_acceptance_rate", c.predicted.drafted ? (double)c.predicted.accepted / (double)c.predicted.drafted : 0.0},
             {"measured", c.measured}};
  if (c.measured) {
    j["measured_speedup"] = c.measured_speedup;
    j["measured_end_to_end"] = c.measured_end_to_end;
    j["acceptance_rate"] = c.acceptance_rate;
    j["mean_tokens_per_round"] = c.mean_tokens_per_round;
    j["identical"] = c.identical;
  }
  return j;
}

ojson latency_json(const LatencyModel& m) {
  return {{"positions", m.max_positions()},
          {"layer_ms", m.layer_ms},
          {"head_ms", m.head_ms},
          {"call_ms", m.call_ms},
          {"plain_extra_ms", m.plain_extra_ms},
          {"draft_extra_ms", m.draft_extra_ms},
          {"round_extra_ms", m.round_extra_ms},
          {"plain_step_ms", m.plain_step_ms()}};
}

// What the profile's "tuned" block records: the evidence for the choice.
nlohmann::json tuned_json(const Tuning& r, const TunedCandidate& c, const TuneArgs& a) {
  return {{"predicted_speedup", c.predicted_speedup},
          {"measured_speedup", c.measured_speedup},
          {"measured_end_to_end", c.measured_end_to_end},
          {"acceptance_rate", c.acceptance_rate},
          {"mean_tokens_per_round", c.mean_tokens_per_round},
          {"speedup", "plain decoding time of the full model / speculative decoding time, greedy, medians of interleaved runs"},
          {"prompts", a.prompts},
          {"n_prompts", r.prompts},
          {"reference_tokens", r.reference_tokens},
          {"max_new_tokens", a.new_tokens},
          {"threads", torch::get_num_threads()},
          {"date", iso_date_utc()},
          {"version", std::string("sortedllama ") + SORTEDLLAMA_VERSION}};
}

std::string table(const Tuning& r, const TuneArgs& a) {
  const LatencyModel& m = r.latency;
  std::string s = fmt::format("latency at batch {}: layer {:.4f} ms (1 position) .. {:.4f} ms ({} positions), head {:.4f} .. {:.4f} ms\n"
                              "beyond the calls (fitted): {:.4f} ms per plain step, {:.4f} per draft step, {:.4f} per round; "
                              "plain step {:.4f} ms\n",
                              a.batch_size, m.layer_ms.front(), m.layer_ms.back(), m.max_positions(), m.head_ms.front(),
                              m.head_ms.back(), m.plain_extra_ms, m.draft_extra_ms, m.round_extra_ms, m.plain_step_ms());
  s += fmt::format("{} prompts, {} reference tokens; speed-up = plain decoding time / speculative decoding time\n\n", r.prompts,
                   r.reference_tokens);
  s += fmt::format("{:>4}  {:>5}  {:<15}  {:>9}  {:>9}  {:>10}  {:>10}  {:>12}  {:>9}\n", "rank", "draft", "rule", "predicted",
                   "measured", "end to end", "acceptance", "tokens/round", "identical");
  for (size_t j = 0; j < r.candidates.size() && j < 12; ++j) {
    const TunedCandidate& c = r.candidates[j];
    s += fmt::format("{:>4}  {:>5}  {:<15}  {:>8.2f}x", j + 1, c.draft_layer, rule_name(c.params), c.predicted_speedup);
    if (c.measured)
      s += fmt::format("  {:>8.2f}x  {:>9.2f}x  {:>10.3f}  {:>12.2f}  {:>9}{}", c.measured_speedup, c.measured_end_to_end,
                       c.acceptance_rate, c.mean_tokens_per_round, c.identical ? "yes" : "NO", (int)j == r.chosen ? "  <- chosen" : "");
    s += "\n";
  }
  return s;
}

void run_tune(const TuneArgs& a, const CLI::App& cmd, const GlobalOptions& g) {
  const auto started = std::chrono::steady_clock::now();
  TuneOptions o;
  o.max_draft_tokens = a.max_draft_tokens;
  o.confidences = parse_confidences(a.confidences);
  o.adaptive = !a.no_adaptive;
  o.verify = a.verify;
  o.repeats = a.repeats;
  o.max_new_tokens = a.new_tokens;
  o.batch_size = a.batch_size;
  const std::vector<std::string> texts = read_prompts(a.prompts, "--prompts");
  LoadedModel m = load_model_and_tokenizer(a.model, a.tokenizer, g);
  const int L = (int)m.model->config().n_layers;
  std::vector<int> layers;
  try {
    layers = parse_exits(a.draft_layers, L);
  } catch (const std::exception& e) {
    throw std::runtime_error(std::string("--draft-layers: ") + e.what());
  }
  for (int k : layers)
    if (k < L) o.draft_layers.push_back(k);
  if (o.draft_layers.empty())
    throw std::runtime_error("--draft-layers " + a.draft_layers + " holds no layer below the last (" + std::to_string(L) + ")");
  o.eos_id = m.model->config().eos_id;
  o.vocab_limit = m.tokenizer->vocab_size();
  const std::vector<std::vector<int>> ids =
      encode_prompts(texts, m, a.batch_size, a.new_tokens + SpeculativeParams{}.max_draft_tokens + 1);

  Tuning r;
  try {
    r = tune_speculative(m.model, ids, o);
  } catch (const std::invalid_argument& e) {
    throw std::runtime_error(std::string("tune: ") + e.what() + " (--prompts " + a.prompts + ")");
  }
  if (r.chosen < 0)
    throw std::runtime_error("tune: no verified candidate reproduced the full model's greedy output; config.json is unchanged");
  const TunedCandidate& best = r.candidates[(size_t)r.chosen];
  if (best.measured_end_to_end < 1)
    spdlog::warn("tune: the fastest setting measured is {:.2f}x plain decoding: speculative decoding does not pay on this model, "
                 "machine and batch size", best.measured_end_to_end);
  SpeculativeProfile profile;
  profile.draft_layer = best.draft_layer;
  profile.draft_tokens = best.params.draft_tokens;
  profile.draft_confidence = best.params.draft_confidence;
  profile.batch_size = a.batch_size;
  profile.tuned = tuned_json(r, best, a);
  if (!a.no_write) {
    write_speculative_profile(a.model, profile);
    spdlog::info("decoding profile written to {}/config.json (decoding.speculative): draft layer {}, {}", a.model,
                 best.draft_layer, rule_name(best.params));
  }

  ojson candidates = ojson::array();
  for (const TunedCandidate& c : r.candidates) candidates.push_back(candidate_json(c));
  ojson result = {{"task", "tune"},
                  {"model", a.model},
                  {"batch_size", a.batch_size},
                  {"prompts", r.prompts},
                  {"reference_tokens", r.reference_tokens},
                  {"plain", r.plain.to_json()},
                  {"latency", latency_json(r.latency)},
                  {"candidates", candidates},
                  {"chosen", candidate_json(best)},
                  {"profile_written", !a.no_write},
                  {"config", recorded_options(cmd)},
                  {"version", std::string("sortedllama ") + SORTEDLLAMA_VERSION},
                  {"date", iso_date_utc()},
                  {"total_time_seconds", std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count()}};
  emit_results(result, a.out, a.json, table(r, a));
}
}  // namespace

void add_tune_command(CLI::App& app, const GlobalOptions& g) {
  auto a = std::make_shared<TuneArgs>();
  CLI::App* cmd = app.add_subcommand("tune", "measure and store the fastest self-speculative settings for this model and machine");
  add_profile_source_options(cmd, a->model, a->tokenizer, a->prompts);
  cmd->add_option("--draft-layers", a->draft_layers, "candidate draft layers: auto | all | 2,4 (those below the last layer)");
  cmd->add_option("--max-draft-tokens", a->max_draft_tokens, "fixed draft lengths 1..N are candidates")->check(CLI::PositiveNumber);
  cmd->add_option("--confidences", a->confidences, "confidence-stopped candidates: P,P,... in (0, 1), or none");
  cmd->add_flag("--no-adaptive", a->no_adaptive, "leave the adaptive draft length out of the candidates");
  cmd->add_option("--new-tokens", a->new_tokens, "max new tokens per prompt")->check(CLI::PositiveNumber);
  cmd->add_option("--batch-size", a->batch_size, "prompts decoded together (latency is measured at this size)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--verify", a->verify, "best predicted candidates decoded for real")->check(CLI::PositiveNumber);
  cmd->add_option("--repeats", a->repeats, "interleaved measurements of each verified candidate (medians)")->check(CLI::PositiveNumber);
  cmd->add_option("--out", a->out, "also write the JSON results to this file");
  cmd->add_flag("--json", a->json, "print the JSON results instead of the table");
  cmd->add_flag("--no-write", a->no_write, "leave config.json as it is");
  cmd->callback([a, cmd, &g] { run_tune(*a, *cmd, g); });
}

}  // namespace sl
