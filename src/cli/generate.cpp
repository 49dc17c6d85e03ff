// sortedllama generate: text from one sub-model (plain decoding), or from the full model with the
// shallow sub-models' help: self-speculative decoding (--speculative) or early exit (--dynamic).
#include <iostream>

#include <spdlog/spdlog.h>

#include "cli.h"
#include "sortedllama/decode/generate.h"

namespace sl {

namespace {
struct GenerateArgs {
  std::string model, tokenizer, prompt, prompt_file;
  bool prompt_given = false, exit_layer_given = false, draft_layer_given = false, draft_tokens_given = false,
       draft_confidence_given = false, thresholds_given = false,
       confidence_given = false;
  int exit_layer = 0;
  int64_t max_new_tokens = 256, batch_size = 8, top_k = 0;
  double temperature = 0.0, top_p = 1.0;
  std::string seed = "0";
  bool json = false;
  bool speculative = false, dynamic = false, compare_baseline = false;
  int draft_layer = 0, draft_tokens = 0, draft_tree = 0;
  double draft_confidence = 0;
  std::string thresholds, confidence = "max_prob", skipped_kv;  // skipped_kv: empty = DynamicParams' default
};

// One batch decoded in the chosen mode: outputs, batch-level stats for --json, a stderr summary.
struct BatchRun {
  std::vector<Generation> gens;
  std::vector<std::vector<int>> exits;  // --dynamic: each token's exit layer
  DecodeStats stats;
  nlohmann::json json;  // stats.to_json() and the mode's settings
  std::string summary;
};

std::string summary(const DecodeOptions& o, const DecodeStats& st) {
  const std::string speed = fmt::format("{:.1f} tokens/s, {:.2f} ms/token", st.tokens_per_s(), st.ms_per_token());
  switch (o.strategy) {
    case Strategy::kSpeculative:
      return fmt::format("speculative (draft layer {}, verifier {}{}{}): drafted {}, accepted {} ({:.1f}%), {}{} rounds, "
                         "{:.2f} accepted/round, draft {:.1f} ms, verify {:.1f} ms, {}",
                         o.speculative.draft_layer, o.exit_layer,
                         o.speculative.draft_confidence > 0 ? fmt::format(", draft confidence {}", o.speculative.draft_confidence) : "",
                         o.speculative.tree_nodes > 0 ? fmt::format(", draft tree {}", o.speculative.tree_nodes) : "",
                         st.drafted, st.accepted, 100 * st.acceptance_rate(),
                         o.speculative.tree_nodes > 0
                             ? fmt::format("tree nodes {}, accepted from the tree {}, ", st.tree_nodes, st.tree_accepted)
                             : "",
                         st.rounds, st.mean_accepted_per_round(), st.draft_ms, st.verify_ms, speed);
    case Strategy::kDynamic: {
      std::string hist;
      for (const auto& [k, n] : st.exit_histogram) hist += fmt::format("{}{}:{}", hist.empty() ? "" : " ", k, n);
      return fmt::format("dynamic ({}, {}, {} skipped K/V): exits {}, {:.2f} layers/token, {}",
                         format_thresholds(o.dynamic.thresholds), confidence_name(o.dynamic.confidence),
                         skipped_kv_name(o.dynamic.kv), hist, st.mean_layers_per_token(), speed);
    }
    case Strategy::kPlain: break;
  }
  return fmt::format("exit {}: {} prompt tokens, {} new tokens, {}", o.exit_layer, st.prompt_tokens, st.new_tokens, speed);
}

// The settings of the mode beside its stats in --json.
void add_settings(nlohmann::json& j, const DecodeOptions& o) {
  if (o.strategy == Strategy::kSpeculative) {
    j["draft_layer"] = o.speculative.draft_layer;
    j["draft_tokens"] = o.speculative.draft_tokens               ? nlohmann::json(o.speculative.draft_tokens)
                        : o.speculative.draft_confidence > 0 ? nlohmann::json("confidence")
                                                             : nlohmann::json("adaptive");
    if (o.speculative.draft_confidence > 0) j["draft_confidence"] = o.speculative.draft_confidence;
    if (o.speculative.tree_nodes > 0) j["draft_tree"] = o.speculative.tree_nodes;
  }
  if (o.strategy == Strategy::kDynamic) {
    j["thresholds"] = format_thresholds(o.dynamic.thresholds);
    j["confidence"] = confidence_name(o.dynamic.confidence);
    j["skipped_kv"] = skipped_kv_name(o.dynamic.kv);
  }
}

BatchRun run_batch(Llama& model, const std::vector<std::vector<int>>& ids, const DecodeOptions& opt) {
  BatchRun run;
  DecodeOptions o = opt;
  if (o.strategy == Strategy::kDynamic) {
    run.exits.resize(ids.size());
    o.dynamic.on_exit = [&](size_t row, int exit, double) { run.exits[row].push_back(exit); };
  }
  run.gens = generate(model, ids, o, &run.stats);
  run.json = run.stats.to_json();
  add_settings(run.json, o);
  run.summary = summary(o, run.stats);
  return run;
}

// The decoding options the arguments ask for, checked against the model.
DecodeOptions plan_options(const GenerateArgs& a, const LoadedModel& m) {
  const auto& cfg = m.model->config();
  if (a.exit_layer_given && (a.exit_layer < 1 || a.exit_layer > cfg.n_layers))
    throw std::runtime_error("--exit-layer " + std::to_string(a.exit_layer) + " is outside the model's 1.." +
                             std::to_string(cfg.n_layers) + " layers");
  if (a.thresholds_given && a.thresholds.empty()) throw std::runtime_error("--thresholds is empty (omit it for the defaults)");
  if (a.draft_layer_given && a.draft_layer < 1) throw std::runtime_error("--draft-layer must be at least 1");
  DecodeOptions opt;
  opt.strategy = a.speculative ? Strategy::kSpeculative : a.dynamic ? Strategy::kDynamic : Strategy::kPlain;
  opt.exit_layer = a.exit_layer;
  opt.max_new_tokens = a.max_new_tokens;
  opt.sampling = {a.temperature, a.top_p, a.top_k};
  opt.seed = parse_u64(a.seed, "--seed");
  opt.eos_id = cfg.eos_id;
  opt.sampling.vocab_limit = m.tokenizer->vocab_size();
  if (a.speculative)
    opt.speculative = choose_speculative({a.draft_layer, a.draft_tokens, a.draft_confidence, a.draft_tokens_given, a.draft_confidence_given},
                                         !a.exit_layer_given || a.exit_layer == cfg.n_layers, m, a.model);
  opt.speculative.tree_nodes = a.draft_tree;
  if (a.dynamic) {
    opt.dynamic = choose_dynamic(a.thresholds, a.confidence, a.confidence_given, m, a.model);
    if (!a.skipped_kv.empty()) opt.dynamic.kv = parse_skipped_kv(a.skipped_kv);
  }
  return opt.resolved((int)cfg.n_layers);
}

// One batch's prompts as token ids, checked against the model's memory and context; prompts that may
// run past the context are counted in past_context, and the run's first one is named.
std::vector<std::vector<int>> encode_batch(const std::vector<std::string>& prompts, size_t start, size_t end,
                                           const LoadedModel& m, const DecodeOptions& opt, size_t& past_context) {
  std::vector<std::vector<int>> ids;
  size_t longest = 0;
  for (size_t i = start; i < end; ++i) {
    ids.push_back(m.tokenizer->encode(prompts[i], /*bos=*/true));
    longest = std::max(longest, ids.back().size());
  }
  check_kv_cache_fits(m.model, (int64_t)ids.size(), (int64_t)longest, opt.max_new_tokens);
  const int64_t context = m.model->config().max_seq_len;
  for (size_t i = 0; i < ids.size(); ++i)
    if ((int64_t)ids[i].size() + opt.max_new_tokens > context && past_context++ == 0)
      spdlog::warn("prompt {} has {} tokens; with --max-new-tokens {} it runs past the model's {} positions "
                   "(max_position_embeddings): quality degrades there (the prompts that do are counted at the end)",
                   start + i + 1, ids[i].size(), opt.max_new_tokens, context);
  return ids;
}

// --compare-baseline: plain decoding of the same sub-model (the full model for --dynamic).
std::vector<Generation> compare_with_baseline(LoadedModel& m, const std::vector<std::vector<int>>& ids,
                                              const DecodeOptions& opt, BatchRun& run) {
  DecodeOptions plain = opt;
  plain.strategy = Strategy::kPlain;
  DecodeStats st;
  std::vector<Generation> base = generate(m.model, ids, plain, &st);
  const double speedup = run.stats.ms_per_token() > 0 ? st.ms_per_token() / run.stats.ms_per_token() : 0.0;
  int same = 0;
  for (size_t i = 0; i < ids.size(); ++i) same += run.gens[i].tokens == base[i].tokens;
  run.json["baseline"] = st.to_json();
  run.json["speedup"] = speedup;
  run.json["identical_to_baseline"] = same;
  run.summary += fmt::format("; baseline (exit {}) {:.2f} ms/token, speedup {:.2f}x, {}/{} outputs identical",
                             opt.exit_layer, st.ms_per_token(), speedup, same, ids.size());
  return base;
}

// --json: one object per prompt with its text, tokens and the batch's decoding statistics.
nlohmann::json generation_json(const std::string& prompt, const std::string& text, const Generation& gen, size_t i,
                               const std::vector<std::vector<int>>& ids, const BatchRun& run, const GenerateArgs& a,
                               const DecodeOptions& opt, const std::vector<Generation>& base) {
  nlohmann::json st = run.json;
  st["prompt_tokens"] = ids[i].size();
  st["new_tokens"] = gen.tokens.size();
  st["batch_size"] = run.gens.size();
  nlohmann::json j = {{"prompt", prompt},           {"text", text},   {"tokens", gen.tokens}, {"exit_layer", opt.exit_layer},
                      {"finish_reason", gen.finish_reason}, {"stats", st}};
  if (a.dynamic) {
    std::vector<int> exits = run.exits[i];
    exits.resize(gen.tokens.size());  // drop the EOS decision
    j["token_exits"] = exits;
  }
  if (a.compare_baseline) j["matches_baseline"] = gen.tokens == base[i].tokens;
  return j;
}

void run_generate(GenerateArgs a, const GlobalOptions& g) {
  if (a.prompt_given == !a.prompt_file.empty())
    throw std::runtime_error("generate needs exactly one of --prompt and --prompt-file");
  std::vector<std::string> prompts = a.prompt_given ? std::vector<std::string>{a.prompt} : read_prompts(a.prompt_file, "--prompt-file");
  LoadedModel m = load_model_and_tokenizer(a.model, a.tokenizer, g);
  const DecodeOptions opt = plan_options(a, m);
  const bool stream = prompts.size() == 1 && !a.json;
  std::string shown;  // text already printed while streaming
  DecodeOptions streaming = opt;
  if (stream)
    streaming.on_token = [&](size_t, const std::vector<int>& toks) {
      std::string text = m.tokenizer->decode(toks);
      // Hold back an incomplete UTF-8 sequence (decoded as U+FFFD) until its bytes arrive.
      if (text.size() >= 3 && text.compare(text.size() - 3, 3, "\xEF\xBF\xBD") == 0) return false;
      if (text.compare(0, shown.size(), shown) == 0) {
        std::cout << text.substr(shown.size()) << std::flush;
        shown = text;
      }
      return false;
    };
  if (a.compare_baseline) {  // warm-up: the first timed run must not pay for set-up
    DecodeOptions w = opt;
    w.strategy = Strategy::kPlain;
    w.max_new_tokens = 2;
    generate(m.model, {m.tokenizer->encode(prompts[0], true)}, w);
  }
  size_t past_context = 0;
  for (size_t start = 0; start < prompts.size(); start += (size_t)a.batch_size) {
    const std::vector<std::vector<int>> ids =
        encode_batch(prompts, start, std::min(prompts.size(), start + (size_t)a.batch_size), m, opt, past_context);
    BatchRun run = run_batch(m.model, ids, streaming);
    const std::vector<Generation> base = a.compare_baseline ? compare_with_baseline(m, ids, opt, run) : std::vector<Generation>{};
    for (size_t i = 0; i < run.gens.size(); ++i) {
      const std::string text = m.tokenizer->decode(run.gens[i].tokens);
      if (a.json)
        std::cout << generation_json(prompts[start + i], text, run.gens[i], i, ids, run, a, opt, base)
                         .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
                  << "\n";
      else
        std::cout << (stream ? text.substr(std::min(shown.size(), text.size())) : text) << "\n";
    }
    std::cout << std::flush;
    spdlog::info("{} prompts: {}", run.gens.size(), run.summary);
  }
  if (past_context > 0)
    spdlog::warn("{} of {} prompts ran with --max-new-tokens {} past the model's {} positions", past_context,
                 prompts.size(), opt.max_new_tokens, m.model->config().max_seq_len);
}
}  // namespace

void add_generate_command(CLI::App& app, const GlobalOptions& g) {
  auto a = std::make_shared<GenerateArgs>();
  CLI::App* cmd = app.add_subcommand("generate", "generate text with one sub-model of a checkpoint");
  cmd->add_option("--model", a->model, "HF model directory")->required()->check(CLI::ExistingDirectory);
  cmd->add_option("--tokenizer", a->tokenizer, "sentencepiece model (default: MODEL/tokenizer.model)");
  cmd->add_option("--prompt", a->prompt, "prompt text (BOS is prepended; \"\" = BOS alone)");
  cmd->add_option("--prompt-file", a->prompt_file, "prompts: .jsonl with {\"prompt\": ...}, else one per line")
      ->check(CLI::ExistingFile);
  cmd->add_option("--exit-layer", a->exit_layer, "run sub-model K = first K layers (default: all)");
  cmd->add_option("--max-new-tokens", a->max_new_tokens, "at most this many new tokens")->check(CLI::PositiveNumber);
  cmd->add_option("--temperature", a->temperature, "0 = greedy")->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-p", a->top_p, "nucleus sampling mass")->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--top-k", a->top_k, "sample among the k most likely tokens (0 = all)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--seed", a->seed, "sampling seed (0 .. 2^64-1)");
  cmd->add_option("--batch-size", a->batch_size, "prompts decoded together")->check(CLI::PositiveNumber);
  cmd->add_flag("--json", a->json, "one JSON object per prompt on stdout");
  auto* spec = cmd->add_flag("--speculative", a->speculative,
                             "self-speculative decoding: sub-model --draft-layer drafts, the full model (or --exit-layer) verifies");
  auto* dyn = cmd->add_flag("--dynamic", a->dynamic, "instance-aware early exit: each token leaves at the first confident exit");
  spec->excludes(dyn);
  cmd->add_option("--draft-layer", a->draft_layer, "speculative: layers of the drafting sub-model (default: the model's tuned profile (sortedllama tune), else the first auto exit)")->needs(spec);
  cmd->add_option("--draft-tokens", a->draft_tokens, "speculative: tokens drafted per round (0 = adaptive, from 4)")
      ->check(CLI::NonNegativeNumber)
      ->needs(spec);
  cmd->add_option("--draft-confidence", a->draft_confidence,
                  "speculative: stop a round's drafting once the draft's top probability falls below P (instead of the "
                  "adaptive length; up to --draft-tokens, else 16)")
      ->check(CLI::Range(0.0, 1.0))
      ->needs(spec);
  cmd->add_option("--draft-tree", a->draft_tree,
                  "speculative, greedy: also verify N alternatives to each round's drafts where the draft was least "
                  "sure (a draft tree; 0 = a chain)")
      ->check(CLI::NonNegativeNumber)
      ->needs(spec);
  cmd->add_option("--thresholds", a->thresholds,
                  "dynamic: LAYER:THRESHOLD,... (default: the model's calibrated profile (sortedllama calibrate), else the "
                  "paper's 12:0.95,...,36:0.7 mapped onto this depth)")
      ->needs(dyn);
  cmd->add_option("--confidence", a->confidence, "dynamic: max_prob (top-1) or margin (top-1 minus top-2)")
      ->check(CLI::IsMember({"max_prob", "margin"}))
      ->needs(dyn);
  cmd->add_option("--skipped-kv", a->skipped_kv,
                  "dynamic: how a skipped layer gets a token's K/V: recompute (default; when a later token first needs that "
                  "layer; the cache stays the full model's, and the prompt runs only as deep as asked) or copy (from "
                  "the exit state, CALM)")
      ->check(CLI::IsMember({"recompute", "copy"}))
      ->needs(dyn);
  cmd->add_flag("--compare-baseline", a->compare_baseline, "also run plain decoding and report the speedup");
  cmd->callback([a, cmd, &g] {
    a->prompt_given = cmd->count("--prompt") > 0;
    a->exit_layer_given = cmd->count("--exit-layer") > 0;
    a->draft_layer_given = cmd->count("--draft-layer") > 0;
    a->draft_tokens_given = cmd->count("--draft-tokens") > 0;
    a->draft_confidence_given = cmd->count("--draft-confidence") > 0;
    a->thresholds_given = cmd->count("--thresholds") > 0;
    a->confidence_given = cmd->count("--confidence") > 0;
    run_generate(*a, g);
  });
}

}  // namespace sl
