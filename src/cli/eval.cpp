// sortedllama eval: per-exit scores of a checkpoint on the paper's tasks (src/eval_*.cpp), written
// as results.json (docs/results_schema.md), results.md, samples files and optional SVG plots.
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>

#include <spdlog/spdlog.h>

#include "cli.h"
#include "sortedllama/data/examples.h"
#include "sortedllama/eval/lm.h"
#include "sortedllama/eval/tasks.h"
#include "sortedllama/model/exits.h"
#include "sortedllama/data/records.h"
#include "sortedllama/eval/plot.h"
#include "sortedllama/util/files.h"

namespace sl {

namespace {
namespace fs = std::filesystem;

struct EvalArgs {
  std::string model, tokenizer, task = "lm", data, out, exits = "auto", decode = "exit";
  int64_t batch_size = 8, limit = 0, max_new_tokens = 0;
  // --decode speculative | dynamic
  int draft_layer = 0, draft_tokens = 0, draft_tree = 0;
  double draft_confidence = 0;
  std::string thresholds, confidence = "max_prob", skipped_kv;  // skipped_kv: empty = DynamicParams' default
  bool confidence_given = false, exits_given = false, draft_tokens_given = false, draft_confidence_given = false;
  // triviaqa
  int64_t num_fewshot = 0;
  bool add_bos = false;
  std::string fewshot_file;
  std::vector<std::string> predictions;
  // compare
  std::string samples_a, samples_b, judge, judge_tokenizer, pairs;
  bool matrix = false;
  int64_t judge_max_new_tokens = 16;
  // analysis
  std::string reference;
  int64_t positions = 20;
  // plots
  bool plot = false;
  std::vector<std::string> overlay;
  std::string label;
};

const std::vector<std::string> kTasks = {"lm", "loss", "triviaqa", "instruct", "compare", "analysis", "speed"};

void need(bool ok, const std::string& what) {
  if (!ok) throw std::runtime_error(what);
}

template <typename T>
std::vector<T> first_n(std::vector<T> v, int64_t limit) {
  if (limit > 0 && (int64_t)v.size() > limit) v.resize(limit);
  return v;
}

TaskResult run_lm(const EvalArgs& a, LoadedModel& m, const std::vector<int>& exits) {
  auto records = read_records(a.data);
  const int64_t total = (int64_t)records.size();
  records = first_n(std::move(records), a.limit);
  const auto& cfg = m.model->config();
  std::vector<std::vector<int>> seqs;
  int64_t truncated = 0;
  for (const auto& r : records) {
    auto ids = m.tokenizer->encode(string_field(r, "text"), /*bos=*/true);
    if ((int64_t)ids.size() > cfg.max_seq_len) {
      ids.resize(cfg.max_seq_len);
      ++truncated;
    }
    seqs.push_back(std::move(ids));
  }
  if (truncated) spdlog::warn("{} texts truncated to max_position_embeddings = {}", truncated, cfg.max_seq_len);
  int64_t scored = 0;
  for (const auto& s : seqs) scored += (int64_t)s.size() - 1;  // every token after BOS
  if (scored == 0)
    throw std::runtime_error(a.data + (seqs.empty() ? ": no records" : ": every text is empty (no token to score)"));
  auto scores = eval_lm(m.model, seqs, exits, a.batch_size);
  TaskResult r("lm", total, (int64_t)seqs.size());
  for (int e : exits) {
    const LmScore& s = scores.at(e);
    r.rows.emplace_back(std::to_string(e), e, ojson{{"nll", s.nll}, {"ppl", s.ppl}, {"tokens", s.tokens}});
  }
  return r;
}

std::vector<std::pair<int, int>> compare_pairs(const EvalArgs& a, const SampleSet& A, const SampleSet& B) {
  std::vector<std::pair<int, int>> pairs;
  if (!a.pairs.empty()) {  // "12:12,8:12"
    std::stringstream ss(a.pairs);
    for (std::string item; std::getline(ss, item, ',');) {
      int x = 0, y = 0;
      char colon = 0;
      std::stringstream is(item);
      if (!(is >> x >> colon >> y) || colon != ':' || !is.eof())
        throw std::runtime_error("--pairs \"" + a.pairs + "\": \"" + item + "\" is not A_EXIT:B_EXIT");
      pairs.emplace_back(x, y);
    }
  } else {
    for (const auto& [ea, sa] : A)
      for (const auto& [eb, sb] : B)
        if (a.matrix || ea == eb) pairs.emplace_back(ea, eb);
    need(!pairs.empty(), "--samples-a and --samples-b have no exit in common; give --pairs or --matrix");
  }
  return pairs;
}

TaskResult run_task(const EvalArgs& a, const GlobalOptions& g) {
  if (a.task == "compare") {
    need(!a.samples_a.empty() && !a.samples_b.empty(), "eval --task compare needs --samples-a and --samples-b");
    need(!a.judge.empty(), "eval --task compare needs --judge DIR (an HF LLaMA judge, e.g. PandaLM-7B)");
    SampleSet A = load_sample_set(a.samples_a), B = load_sample_set(a.samples_b);
    auto pairs = compare_pairs(a, A, B);
    LoadedModel judge = load_model_and_tokenizer(a.judge, a.judge_tokenizer, g);
    return eval_compare(A, B, pairs, model_judge(judge.model, *judge.tokenizer, a.batch_size, a.judge_max_new_tokens),
                        a.limit);
  }
  need(!a.data.empty(), "eval --task " + a.task + " needs --data FILE");
  if (a.task == "triviaqa" && !a.predictions.empty())
    return score_triviaqa_predictions(load_triviaqa(a.data), a.predictions, a.limit);
  need(!a.model.empty(), "eval --task " + a.task + " needs --model DIR");
  LoadedModel m = load_model_and_tokenizer(a.model, a.tokenizer, g);
  const auto& cfg = m.model->config();
  const std::vector<int> exits = parse_exits(a.exits, (int)cfg.n_layers);
  auto gen_options = [&](int64_t default_max_new) {
    EvalGenOptions o;
    o.decode = parse_decode_mode(a.decode);
    o.max_new_tokens = a.max_new_tokens > 0 ? a.max_new_tokens : default_max_new;
    check_kv_cache_fits(m.model, a.batch_size, cfg.max_seq_len, o.max_new_tokens);
    o.batch_size = a.batch_size;
    o.eos_id = cfg.eos_id;
    o.vocab_limit = m.tokenizer->vocab_size();
    o.speculative.draft_layer = a.draft_layer;
    o.speculative.draft_tokens = a.draft_tokens;
    o.speculative.draft_confidence = a.draft_confidence;
    if (o.decode == DecodeMode::kSpeculative && !a.exits_given)  // explicit --exits: one row per draft exit
      o.speculative = choose_speculative(
          {a.draft_layer, a.draft_tokens, a.draft_confidence, a.draft_tokens_given, a.draft_confidence_given}, true, m, a.model);
    o.speculative.tree_nodes = a.draft_tree;
    if (o.decode == DecodeMode::kDynamic) {
      o.dynamic = choose_dynamic(a.thresholds, a.confidence, a.confidence_given, m, a.model);
      if (!a.skipped_kv.empty()) o.dynamic.kv = parse_skipped_kv(a.skipped_kv);
    }
    decode_rows(o, exits, (int)cfg.n_layers);  // a bad mode or option fails before any work
    return o;
  };
  if (a.task == "lm") return run_lm(a, m, exits);
  if (a.task == "loss") return eval_loss(m.model, *m.tokenizer, a.data, exits, a.batch_size, a.limit);
  if (a.task == "triviaqa") {
    const auto all = load_triviaqa(a.data);
    std::vector<TriviaQuestion> pool;
    if (a.num_fewshot > 0) {
      need(!a.fewshot_file.empty(), "--num-fewshot needs --fewshot-file (questions with answers to draw from)");
      pool = load_triviaqa(a.fewshot_file);
    }
    TaskResult r = eval_triviaqa(m.model, *m.tokenizer, first_n(all, a.limit), pool, a.num_fewshot, exits, gen_options(50), a.add_bos);
    r.n_original = (int64_t)all.size();
    return r;
  }
  const auto all = load_instructions(a.data);
  const auto items = first_n(all, a.limit);
  TaskResult r;
  if (a.task == "instruct") {
    r = eval_instruct(m.model, *m.tokenizer, items, exits, gen_options(256));
  } else if (a.task == "analysis") {
    need(a.positions > 0, "--positions must be positive");
    if (a.reference.empty()) {
      r = eval_analysis(m.model, *m.tokenizer, items, exits, a.positions, a.batch_size, nullptr);
    } else {
      LoadedModel ref = load_model_and_tokenizer(a.reference, a.tokenizer, g);
      r = eval_analysis(m.model, *m.tokenizer, items, exits, a.positions, a.batch_size, &ref.model);
    }
  } else {  // speed
    std::vector<std::vector<int>> prompts;
    for (const auto& it : items) prompts.push_back(m.tokenizer->encode(alpaca_prompt(it.instruction, it.input), true));
    r = eval_speed(m.model, prompts, exits, a.max_new_tokens > 0 ? a.max_new_tokens : 64, a.batch_size, cfg.eos_id);
  }
  r.n_original = (int64_t)all.size();
  return r;
}


void write_plots(const EvalArgs& a, const TaskResult& r, const std::string& dir) {
  struct Run {
    std::string name;
    std::vector<std::pair<double, ojson>> rows;  // (x, metrics)
  };
  std::vector<Run> runs(1);
  runs[0].name = !a.label.empty() ? a.label : fs::path(a.model.empty() ? a.samples_a : a.model).filename().string();
  if (runs[0].name.empty()) runs[0].name = "this run";
  for (const auto& row : r.rows) runs[0].rows.emplace_back(row.exit, row.metrics);
  for (const auto& path : a.overlay) {
    std::ifstream f(path);
    if (!f) throw std::runtime_error("--overlay " + path + ": cannot open");
    ojson j;
    try {
      j = ojson::parse(f);
    } catch (const std::exception& e) {
      throw std::runtime_error("--overlay " + path + ": not JSON: " + e.what());
    }
    if (!j.contains("task") || j["task"] != r.task || !j.contains("exits") || !j["exits"].is_object())
      throw std::runtime_error("--overlay " + path + ": not a results.json of task " + r.task);
    Run run;  // legend: the run's own --label, else its model and directory
    const std::string label = j.contains("config") && j["config"].is_object() ? j["config"].value("label", "") : "";
    run.name = !label.empty() ? label
                              : fs::path(j.value("model", path)).filename().string() + " (" +
                                    fs::path(path).parent_path().filename().string() + ")";
    for (const auto& [name, m] : j["exits"].items()) {
      char* end = nullptr;
      const double x = std::strtod(name.c_str(), &end);
      if (end == name.c_str() || !(*end == '\0' || std::string(end).rfind(" vs ", 0) == 0) || !std::isfinite(x))
        throw std::runtime_error("--overlay " + path + ": exit \"" + name + "\" is not a layer number");
      if (!m.is_object()) throw std::runtime_error("--overlay " + path + ": the metrics of exit " + name + " are not an object");
      run.rows.emplace_back(x, m);
    }
    std::sort(run.rows.begin(), run.rows.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
    runs.push_back(std::move(run));
  }
  std::set<std::string> done;
  for (const auto& row : r.rows)
    for (const auto& [metric, v] : row.metrics.items()) {
      if (!v.is_number() || metric == "n" || !done.insert(metric).second) continue;
      std::vector<PlotSeries> series;
      for (const auto& run : runs) {
        PlotSeries s;
        s.name = run.name;
        for (const auto& [x, m] : run.rows)
          if (m.contains(metric) && m[metric].is_number()) {
            s.x.push_back(x);
            s.y.push_back(m[metric].get<double>());
          }
        series.push_back(std::move(s));
      }
      const fs::path p = fs::path(dir) / ("plot_" + metric + ".svg");
      write_file_atomic(p.string(), svg_line_chart(r.task + ": " + metric, r.task == "compare" ? "exit layer (A)" : "exit layer",
                                                   metric, series));
    }
  spdlog::info("wrote {} plots into {}", done.size(), dir);
}

void run_eval(const EvalArgs& a, const GlobalOptions& g, const ojson& config) {
  if (std::find(kTasks.begin(), kTasks.end(), a.task) == kTasks.end())
    throw std::runtime_error("--task " + a.task + ": unknown task (known: lm, loss, triviaqa, instruct, compare, analysis, speed)");
  need(!a.plot || !a.out.empty(), "--plot needs --out");
  const auto t0 = std::chrono::steady_clock::now();
  TaskResult r = run_task(a, g);
  RunInfo run{a.model, config, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()};
  std::cout << results_table(r, false) << std::flush;
  if (r.extra.contains("matrix")) std::cout << "score matrix (A exits x B exits): " << r.extra["matrix"].dump() << "\n";
  if (a.out.empty()) return;
  const std::string dir = write_results(a.out, r, run);
  if (a.plot) write_plots(a, r, dir);
}
}  // namespace

void add_eval_command(CLI::App& app, const GlobalOptions& g) {
  auto a = std::make_shared<EvalArgs>();
  CLI::App* cmd = app.add_subcommand("eval", "evaluate every sub-model of a checkpoint");
  cmd->option_defaults()->always_capture_default();  // results.json records every option's value
  cmd->add_option("--model", a->model, "HF model directory")->check(CLI::ExistingDirectory);
  cmd->add_option("--tokenizer", a->tokenizer, "sentencepiece model (default: MODEL/tokenizer.model)");
  cmd->add_option("--task", a->task, "lm | loss | triviaqa | instruct | compare | analysis | speed");
  cmd->add_option("--data", a->data,
                  "lm: {text} JSONL; loss: Alpaca; triviaqa: questions with answers; instruct/analysis/speed: "
                  "an instruction set (Alpaca, PandaLM, Vicuna, Koala, self-instruct)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--exits", a->exits, "exit set: auto | all | 4,8,12");
  cmd->add_option("--decode", a->decode, "generation (triviaqa, instruct): exit (each exit's sub-model) | full | speculative (one row per draft "
                  "layer) | dynamic; the last two add the full model as baseline (speedup, agree_full)");
  cmd->add_option("--draft-layer", a->draft_layer, "speculative: the drafting sub-model (default: the model's tuned profile (sortedllama tune) unless --exits is "
                  "given, else every exit)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--draft-tokens", a->draft_tokens, "speculative: drafts per round (0 = adaptive)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--draft-confidence", a->draft_confidence,
                  "speculative: stop drafting once the draft's top probability falls below P (0 = the adaptive length)")
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--draft-tree", a->draft_tree,
                  "speculative: also verify N alternatives to each round's drafts where the draft was least sure "
                  "(a draft tree; 0 = a chain)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--thresholds", a->thresholds,
                  "dynamic: exit:threshold,... (default: the model's calibrated profile, else the paper's, mapped)");
  cmd->add_option("--confidence", a->confidence, "dynamic: max_prob | margin");
  cmd->add_option("--skipped-kv", a->skipped_kv, "dynamic: recompute (default) | copy (see generate --help)")
      ->check(CLI::IsMember({"recompute", "copy"}));
  cmd->add_option("--batch-size", a->batch_size, "sequences per forward pass")->check(CLI::PositiveNumber);
  cmd->add_option("--limit", a->limit, "use only the first N records")->check(CLI::NonNegativeNumber);
  cmd->add_option("--max-new-tokens", a->max_new_tokens, "default: triviaqa 50, instruct 256, speed 64")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--out", a->out, "output directory (or a .json path for results.json alone)");
  cmd->add_flag("--add-bos", a->add_bos, "triviaqa: start prompts with BOS (lm-evaluation-harness's HF backend adds none)");
  cmd->add_option("--num-fewshot", a->num_fewshot, "triviaqa: solved examples before each question")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--fewshot-file", a->fewshot_file, "triviaqa: where few-shot examples come from")
      ->check(CLI::ExistingFile);
  cmd->add_option("--predictions", a->predictions,
                  "triviaqa: score these JSONL {question_id, prediction[, exit]} files without a model")
      ->check(CLI::ExistingFile);
  cmd->add_option("--samples-a", a->samples_a, "compare: system A (instruct output dir or samples file)")
      ->check(CLI::ExistingPath);
  cmd->add_option("--samples-b", a->samples_b, "compare: system B")->check(CLI::ExistingPath);
  cmd->add_option("--judge", a->judge, "compare: judge model directory (HF LLaMA, e.g. PandaLM-7B)")
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--judge-tokenizer", a->judge_tokenizer, "compare: judge tokenizer (default: JUDGE/tokenizer.model)");
  cmd->add_option("--judge-max-new-tokens", a->judge_max_new_tokens, "compare: judge tokens per verdict")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--pairs", a->pairs, "compare: exit pairs A:B,... (default: equal exits)");
  cmd->add_flag("--matrix", a->matrix, "compare: every exit of A against every exit of B");
  cmd->add_option("--reference", a->reference, "analysis: also KL against this checkpoint's last layer")
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--positions", a->positions, "analysis: generated positions (default 20)");
  cmd->add_flag("--plot", a->plot, "write plot_<metric>.svg against the exit layer into --out");
  cmd->add_option("--overlay", a->overlay, "plot: other runs' results.json drawn in the same charts")
      ->check(CLI::ExistingFile);
  cmd->add_option("--label", a->label, "plot: this run's legend name");
  cmd->callback([a, cmd, &g] {
    a->confidence_given = cmd->count("--confidence") > 0;
    a->exits_given = cmd->count("--exits") > 0;
    a->draft_tokens_given = cmd->count("--draft-tokens") > 0;
    a->draft_confidence_given = cmd->count("--draft-confidence") > 0;
    run_eval(*a, g, recorded_options(*cmd));
  });
}

}  // namespace sl
