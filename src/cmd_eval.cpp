// sortedllama eval: per-exit scores of a checkpoint (task lm here; more tasks in src/eval_*.cpp).
#include <chrono>
#include <ctime>
#include <fstream>
#include <iostream>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "cli.h"
#include "sortedllama/eval_lm.h"
#include "sortedllama/exits.h"
#include "sortedllama/jsonl.h"

namespace sl {

namespace {
struct EvalArgs {
  std::string model, tokenizer, task = "lm", data, out, exits = "auto";
  int64_t batch_size = 8, limit = 0;
};

void run_eval_lm(const EvalArgs& a, const GlobalOptions& g) {
  if (a.data.empty()) throw std::runtime_error("eval --task lm needs --data FILE (JSONL {\"text\": ...})");
  auto records = read_records(a.data);
  if (a.limit > 0 && (int64_t)records.size() > a.limit) records.resize(a.limit);
  LoadedModel m = load_model_and_tokenizer(a.model, a.tokenizer, g);
  const auto& cfg = m.model->config();
  std::vector<int> exits = parse_exits(a.exits, (int)cfg.n_layers);
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
  auto t0 = std::chrono::steady_clock::now();
  auto scores = eval_lm(m.model, seqs, exits, a.batch_size);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  nlohmann::ordered_json j = {{"task", "lm"}, {"model", a.model}, {"data", a.data}, {"n_texts", seqs.size()}};
  nlohmann::ordered_json per_exit = nlohmann::ordered_json::object();
  std::cout << fmt::format("{:>6} {:>10} {:>12} {:>10}\n", "exit", "nll", "ppl", "tokens");
  for (int e : exits) {
    const LmScore& s = scores.at(e);
    per_exit[std::to_string(e)] = {{"nll", s.nll}, {"ppl", s.ppl}, {"tokens", s.tokens}};
    std::cout << fmt::format("{:>6} {:>10.4f} {:>12.3f} {:>10}\n", e, s.nll, s.ppl, s.tokens);
  }
  j["exits"] = per_exit;
  j["wall_time_s"] = secs;
  if (!a.out.empty()) {
    std::ofstream f(a.out);
    f << j.dump(2) << "\n";
    if (!f) throw std::runtime_error("cannot write " + a.out);
    spdlog::info("wrote {}", a.out);
  }
}
}  // namespace

void add_eval_command(CLI::App& app, const GlobalOptions& g) {
  auto a = std::make_shared<EvalArgs>();
  CLI::App* cmd = app.add_subcommand("eval", "evaluate every sub-model of a checkpoint");
  cmd->add_option("--model", a->model, "HF model directory")->required()->check(CLI::ExistingDirectory);
  cmd->add_option("--tokenizer", a->tokenizer, "sentencepiece model (default: MODEL/tokenizer.model)");
  cmd->add_option("--task", a->task, "lm");
  cmd->add_option("--data", a->data, "data file")->check(CLI::ExistingFile);
  cmd->add_option("--exits", a->exits, "exit set: auto | all | 4,8,12");
  cmd->add_option("--batch-size", a->batch_size, "sequences per forward pass")->check(CLI::PositiveNumber);
  cmd->add_option("--limit", a->limit, "use only the first N records")->check(CLI::NonNegativeNumber);
  cmd->add_option("--out", a->out, "write results JSON here");
  cmd->callback([a, &g] {
    if (a->task == "lm") return run_eval_lm(*a, g);
    throw std::runtime_error("--task " + a->task + ": unknown task (known: lm)");
  });
}

}  // namespace sl
