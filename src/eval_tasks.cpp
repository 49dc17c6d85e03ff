// eval tasks loss, triviaqa, instruct and speed, and the results files every task writes.
#include "sortedllama/eval_tasks.h"

#include <unistd.h>

#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <regex>
#include <set>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "sortedllama/data.h"
#include "sortedllama/eval_lm.h"
#include "sortedllama/jsonl.h"

namespace sl {

namespace fs = std::filesystem;

// ---- Results ----

namespace {
std::string iso_date_utc() {
  std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

// Scalar metrics in first-seen order over the rows: the table's columns.
std::vector<std::string> columns(const TaskResult& r) {
  std::vector<std::string> cols;
  for (const auto& row : r.rows)
    for (const auto& [k, v] : row.metrics.items())
      if (v.is_number() && std::find(cols.begin(), cols.end(), k) == cols.end()) cols.push_back(k);
  return cols;
}

std::string cell(const ojson& v) {
  if (v.is_number_integer() || v.is_number_unsigned()) return v.dump();
  if (v.is_number()) return fmt::format("{:.4f}", v.get<double>());
  return "-";
}
}  // namespace

ojson results_json(const TaskResult& r, const RunInfo& run) {
  ojson exits = ojson::object(), samples = ojson::object();
  for (const auto& row : r.rows) {
    exits[row.name] = row.metrics;
    if (!row.samples.empty()) samples[row.name] = row.samples_file;
  }
  // lm-eval's results[task][metric]: the deepest row (the full model when it was evaluated).
  ojson headline = ojson::object();
  if (!r.rows.empty()) {
    headline["exit"] = r.rows.back().name;
    for (const auto& [k, v] : r.rows.back().metrics.items())
      if (v.is_number()) headline[k] = v;
  }
  return ojson{{"task", r.task},
               {"results", {{r.task, headline}}},
               {"exits", exits},
               {"n-samples", {{r.task, {{"original", r.n_original}, {"effective", r.n_effective}}}}},
               {"samples", samples},
               {"details", r.extra},
               {"config", run.config},
               {"model", run.model},
               {"version", std::string("sortedllama ") + SORTEDLLAMA_VERSION},
               {"date", iso_date_utc()},
               {"total_evaluation_time_seconds", run.wall_s}};
}

std::string results_table(const TaskResult& r, bool markdown) {
  const std::vector<std::string> cols = columns(r);
  std::vector<std::string> head = {r.task == "compare" ? "A vs B" : "exit"};
  head.insert(head.end(), cols.begin(), cols.end());
  std::vector<std::vector<std::string>> lines = {head};
  for (const auto& row : r.rows) {
    std::vector<std::string> l = {row.name};
    for (const auto& c : cols) l.push_back(row.metrics.contains(c) ? cell(row.metrics[c]) : "-");
    lines.push_back(l);
  }
  std::string s;
  if (markdown) {
    for (size_t i = 0; i < lines.size(); ++i) {
      s += "|";
      for (const auto& c : lines[i]) s += " " + c + " |";
      s += "\n";
      if (i == 0) {
        s += "|";
        for (size_t c = 0; c < head.size(); ++c) s += c ? " ---: |" : " --- |";
        s += "\n";
      }
    }
    return s;
  }
  std::vector<size_t> w(head.size(), 0);
  w[0] = 6;  // the first column is at least as wide as in `eval --task lm`'s original table
  for (const auto& l : lines)
    for (size_t c = 0; c < l.size(); ++c) w[c] = std::max(w[c], l[c].size());
  for (const auto& l : lines) {
    for (size_t c = 0; c < l.size(); ++c) s += fmt::format("{}{:>{}}", c ? "  " : "", l[c], w[c]);
    s += "\n";
  }
  return s;
}

std::string write_results(const std::string& out, const TaskResult& r, const RunInfo& run) {
  const bool file = out.size() > 5 && out.substr(out.size() - 5) == ".json";
  fs::path dir = file ? fs::path(out).parent_path() : fs::path(out);
  if (dir.empty()) dir = ".";
  fs::create_directories(dir);
  const fs::path json_path = file ? fs::path(out) : dir / "results.json";
  const fs::path md_path = file ? fs::path(out).replace_extension(".md") : dir / "results.md";
  auto write = [](const fs::path& p, const std::string& text) {
    std::ofstream f(p);
    f << text;
    if (!f) throw std::runtime_error("cannot write " + p.string());
  };
  for (const auto& row : r.rows) {
    if (row.samples.empty()) continue;
    std::string text;
    for (const auto& s : row.samples) text += s.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    write(dir / row.samples_file, text);
  }
  write(json_path, results_json(r, run).dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
  write(md_path, fmt::format("# sortedllama eval: {}\n\nmodel: `{}`, {} of {} records, {:.1f} s\n\n{}", r.task, run.model,
                             r.n_effective, r.n_original, run.wall_s, results_table(r, true)));
  spdlog::info("wrote {} and {}", json_path.string(), md_path.string());
  return dir.string();
}

Progress::Progress(std::string label, int64_t total)
    : label_(std::move(label)), total_(std::max<int64_t>(total, 1)), tty_(isatty(STDERR_FILENO)),
      t0_(std::chrono::steady_clock::now()) {}

void Progress::add(int64_t n) {
  done_ = std::min(total_, done_ + n);
  const int64_t pct = 100 * done_ / total_;
  if (!tty_ && pct / 10 == shown_ / 10 && done_ < total_) return;
  if (tty_ && pct == shown_ && done_ < total_) return;
  shown_ = pct;
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  const double eta = done_ ? secs * (double)(total_ - done_) / (double)done_ : 0.0;
  const int bar = (int)(20 * done_ / total_);
  std::string line = fmt::format("{} [{}{}] {}/{} {:3d}% {:.0f}s ETA {:.0f}s", label_, std::string(bar, '#'),
                                 std::string(20 - bar, '.'), done_, total_, pct, secs, eta);
  if (tty_) std::cerr << "\r" << line << (done_ == total_ ? "\n" : "") << std::flush;
  else std::cerr << line << "\n";
}

// ---- loss ----

TaskResult eval_loss(Llama& model, const Tokenizer& tok, const std::string& data, const std::vector<int>& exits,
                     int64_t batch_size, int64_t limit) {
  torch::NoGradGuard no_grad;
  DataOptions o;
  o.format = "alpaca";
  o.max_seq_len = model->config().max_seq_len;
  DataStats st;
  std::vector<Example> ex = load_examples(data, tok, o, &st);
  if (limit > 0 && (int64_t)ex.size() > limit) ex.resize(limit);
  auto dev = model->body->norm->weight.device();
  std::map<int, double> sums;
  int64_t tokens_scored = 0;
  Progress progress("loss", (int64_t)ex.size());
  for (size_t start = 0; start < ex.size(); start += (size_t)batch_size) {
    const size_t end = std::min(ex.size(), start + (size_t)batch_size);
    const int64_t B = (int64_t)(end - start);
    int64_t T = 0;
    for (size_t i = start; i < end; ++i) T = std::max<int64_t>(T, (int64_t)ex[i].tokens.size());
    // Right padding; labels[b,t] = the response token position t predicts, -100 elsewhere.
    torch::Tensor tokens = torch::zeros({B, T}, torch::kInt64), mask = torch::zeros({B, T}, torch::kInt64);
    torch::Tensor labels = torch::full({B, T}, -100, torch::kInt64);
    for (int64_t b = 0; b < B; ++b) {
      const Example& e = ex[start + b];
      for (size_t t = 0; t < e.tokens.size(); ++t) {
        tokens[b][t] = e.tokens[t];
        mask[b][t] = 1;
        if (t + 1 < e.tokens.size() && e.target[t + 1]) labels[b][t] = e.tokens[t + 1];
      }
    }
    std::vector<torch::Tensor> hidden = model->forward(tokens.to(dev), exits, mask.to(dev));  // each [B,T,D]
    labels = labels.to(dev);
    tokens_scored += labels.ge(0).sum().item<int64_t>();
    for (size_t e = 0; e < exits.size(); ++e)
      sums[exits[e]] += exit_nll_sum(model, hidden[e], labels, exits[e]).item<double>();
    progress.add(B);
  }
  TaskResult r("loss", st.records, (int64_t)ex.size());
  for (int e : exits) {
    const double nll = tokens_scored ? sums[e] / (double)tokens_scored : 0.0;
    r.rows.emplace_back(std::to_string(e), e, ojson{{"loss", nll}, {"ppl", std::exp(nll)}, {"tokens", tokens_scored}});
  }
  return r;
}

// ---- triviaqa ----

namespace {
std::string not_a(const std::string& where, const std::string& field, const nlohmann::json& v, const char* expected) {
  return where + ": field \"" + field + "\" is " + v.type_name() + ", not " + expected;
}

// An id field that may be a string or a number; "" when absent.
std::string id_field(const Record& r, const std::string& key) {
  auto it = r.value.find(key);
  if (it == r.value.end() || it->is_null()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_number_integer()) return it->dump();
  throw std::runtime_error(not_a(r.where, key, *it, "a string or an integer"));
}

void require_object(const Record& r) {
  if (!r.value.is_object()) throw std::runtime_error(r.where + ": record is " + r.value.type_name() + ", not a JSON object");
}

std::vector<std::string> string_array(const Record& r, const std::string& key, const nlohmann::json& arr) {
  if (!arr.is_array()) throw std::runtime_error(not_a(r.where, key, arr, "an array of strings"));
  std::vector<std::string> out;
  for (size_t i = 0; i < arr.size(); ++i) {
    if (!arr[i].is_string()) throw std::runtime_error(not_a(r.where, key + "[" + std::to_string(i) + "]", arr[i], "a string"));
    out.push_back(arr[i].get<std::string>());
  }
  return out;
}

double mean_of(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0.0 : s / (double)v.size();
}

// A row for one decoder's generations: plain exit k writes samples_exit<k>.jsonl, the others
// samples_<name>.jsonl.
ResultRow generation_row(const ExitGenerations& eg) {
  ResultRow row(eg.name, eg.exit);
  row.samples_file = "samples_" + (eg.mode == "exit" ? "exit" + eg.name : eg.name) + ".jsonl";
  return row;
}

// Decoding speed and the decoder's own statistics (acceptance, speed-up, agreement, ...).
void add_decode_metrics(ojson& m, const ExitGenerations& eg) {
  m["new_tokens"] = eg.stats.new_tokens;
  m["decode_ms_per_token"] = eg.stats.new_tokens ? eg.stats.decode_ms / (double)eg.stats.new_tokens : 0.0;
  for (const auto& [k, v] : eg.decode) m[k] = v;
}

// The layers behind a sample: the sub-model for plain rows; speculative and dynamic rows emit the
// full model's tokens (verified by it, or leaving early by confidence).
ojson sample_exit_fields(const ExitGenerations& eg, int n_layers) {
  if (eg.mode == "exit") return {{"exit", eg.exit}};
  return {{"exit", n_layers}, {"decoder", eg.name}};
}
}  // namespace

std::vector<TriviaQuestion> load_triviaqa(const std::string& path) {
  std::vector<TriviaQuestion> qs;
  for (const Record& r : read_records(path)) {
    require_object(r);
    TriviaQuestion q;
    q.id = id_field(r, "question_id");
    if (q.id.empty()) q.id = std::to_string(qs.size());
    q.question = string_field(r, "question");
    if (auto it = r.value.find("answers"); it != r.value.end()) {
      q.aliases = string_array(r, "answers", *it);
    } else if (auto a = r.value.find("answer"); a != r.value.end() && a->is_object()) {
      if (auto v = a->find("value"); v != a->end()) q.aliases = string_array(r, "answer.value", nlohmann::json::array({*v}));
      if (auto al = a->find("aliases"); al != a->end())
        for (auto& s : string_array(r, "answer.aliases", *al)) q.aliases.push_back(s);
    } else {
      throw std::runtime_error(r.where + ": missing field \"answers\" (or \"answer\" with \"value\" and \"aliases\")");
    }
    q.aliases.erase(std::remove(q.aliases.begin(), q.aliases.end(), std::string()), q.aliases.end());
    if (q.aliases.empty()) throw std::runtime_error(r.where + ": no non-empty answer alias");
    qs.push_back(std::move(q));
  }
  if (qs.empty()) throw std::runtime_error(path + ": no questions");
  return qs;
}

std::string triviaqa_fewshot(const std::vector<TriviaQuestion>& pool, int64_t n, uint64_t seed,
                             const std::string& exclude_id) {
  std::string ctx;
  int64_t taken = 0;
  for (size_t i : shuffled_indices(pool.size(), seed)) {
    if (taken == n) break;
    if (pool[i].id == exclude_id) continue;
    ctx += triviaqa_prompt(pool[i].question) + " " + pool[i].aliases[0] + "\n\n";
    ++taken;
  }
  if (taken < n)
    throw std::runtime_error("--num-fewshot " + std::to_string(n) + ": the few-shot file has only " +
                             std::to_string(taken) + " usable examples");
  return ctx;
}

ojson triviaqa_metrics(const std::vector<QAScore>& scores) {
  std::vector<double> em, cs, off, f1;
  for (const auto& s : scores) {
    em.push_back(s.exact_match);
    cs.push_back(s.exact_match_case_sensitive);
    off.push_back(s.exact_match_official);
    f1.push_back(s.f1);
  }
  return {{"exact_match", mean_of(em)},
          {"exact_match_case_sensitive", mean_of(cs)},
          {"exact_match_official", mean_of(off)},
          {"f1", mean_of(f1)},
          {"n", (int64_t)scores.size()}};
}

namespace {
ojson triviaqa_sample(const TriviaQuestion& q, const std::string& continuation, const std::string& prediction,
                      const QAScore& s) {
  return {{"question_id", q.id},     {"question", q.question},
          {"continuation", continuation},
          {"prediction", prediction}, {"exact_match", s.exact_match},
          {"exact_match_case_sensitive", s.exact_match_case_sensitive},
          {"exact_match_official", s.exact_match_official},
          {"f1", s.f1}};
}
}  // namespace

TaskResult eval_triviaqa(Llama& model, const Tokenizer& tok, const std::vector<TriviaQuestion>& questions,
                         const std::vector<TriviaQuestion>& fewshot_pool, int64_t num_fewshot,
                         const std::vector<int>& exits, const EvalGenOptions& opt) {
  std::vector<std::vector<int>> prompts;
  for (size_t i = 0; i < questions.size(); ++i) {
    std::string ctx = num_fewshot > 0 ? triviaqa_fewshot(fewshot_pool, num_fewshot, 1234 + i, questions[i].id) : "";
    prompts.push_back(tok.encode(ctx + triviaqa_prompt(questions[i].question), /*bos=*/true));
  }
  EvalGenOptions o = opt;
  o.stop = [&tok](const std::vector<int>& t) { return triviaqa_should_stop(tok.decode(t)); };
  const int L = (int)model->config().n_layers;
  Progress progress("triviaqa", (int64_t)(questions.size() * decode_rows(opt, exits, L).size()));
  o.on_batch = [&](int64_t n) { progress.add(n); };
  TaskResult r("triviaqa", (int64_t)questions.size(), (int64_t)questions.size());
  for (const ExitGenerations& eg : eval_generate(model, prompts, exits, o)) {
    ResultRow row = generation_row(eg);
    std::vector<QAScore> scores;
    for (size_t i = 0; i < questions.size(); ++i) {
      // The generated text follows "Answer:"; sentencepiece drops a leading space when decoding
      // alone, which triviaqa_cut strips anyway.
      const std::string cont = tok.decode(eg.gens[i].tokens), pred = triviaqa_cut(cont);
      scores.push_back(score_triviaqa(pred, questions[i].aliases));
      row.samples.push_back(triviaqa_sample(questions[i], cont, pred, scores.back()));
      row.samples.back().update(sample_exit_fields(eg, L));
    }
    row.metrics = triviaqa_metrics(scores);
    add_decode_metrics(row.metrics, eg);
    r.rows.push_back(std::move(row));
  }
  return r;
}

TaskResult score_triviaqa_predictions(const std::vector<TriviaQuestion>& questions,
                                      const std::vector<std::string>& files, int64_t limit) {
  std::map<std::string, size_t> index;
  for (size_t i = 0; i < questions.size(); ++i) index[questions[i].id] = i;
  std::map<int, std::vector<std::pair<size_t, std::string>>> by_exit;  // exit -> (question, prediction)
  std::map<int, std::set<std::string>> seen;
  for (const auto& file : files) {
    std::smatch m;
    const std::string name = fs::path(file).filename().string();
    const int file_exit = std::regex_search(name, m, std::regex("exit(\\d+)")) ? std::stoi(m[1]) : 0;
    for (const Record& r : read_records(file)) {
      require_object(r);
      const std::string id = id_field(r, "question_id");
      if (id.empty()) throw std::runtime_error(r.where + ": missing field \"question_id\"");
      const std::string pred = string_field(r, "prediction");
      int exit = file_exit;
      if (auto it = r.value.find("exit"); it != r.value.end()) {
        if (!it->is_number_integer()) throw std::runtime_error(not_a(r.where, "exit", *it, "an integer"));
        exit = it->get<int>();
      }
      auto q = index.find(id);
      if (q == index.end())
        throw std::runtime_error(r.where + ": question_id \"" + id + "\" is not in the questions file");
      if (!seen[exit].insert(id).second)
        throw std::runtime_error(r.where + ": question_id \"" + id + "\" has a second prediction for exit " +
                                 std::to_string(exit));
      by_exit[exit].emplace_back(q->second, pred);
    }
  }
  if (by_exit.empty()) throw std::runtime_error("no predictions in " + fmt::format("{}", fmt::join(files, ", ")));
  TaskResult r("triviaqa", (int64_t)questions.size());
  for (auto& [exit, preds] : by_exit) {
    if (limit > 0 && (int64_t)preds.size() > limit) preds.resize(limit);
    if (limit == 0 && preds.size() < questions.size())
      spdlog::warn("exit {}: predictions for {} of {} questions; scoring those", exit, preds.size(), questions.size());
    ResultRow row(exit > 0 ? std::to_string(exit) : "predictions", exit);
    row.samples_file = "samples_" + (exit > 0 ? "exit" + row.name : row.name) + ".jsonl";
    std::vector<QAScore> scores;
    for (const auto& [qi, raw] : preds) {
      const std::string pred = triviaqa_cut(raw);
      scores.push_back(score_triviaqa(pred, questions[qi].aliases));
      row.samples.push_back(triviaqa_sample(questions[qi], raw, pred, scores.back()));
      row.samples.back()["exit"] = exit;
    }
    row.metrics = triviaqa_metrics(scores);
    r.n_effective = std::max(r.n_effective, (int64_t)preds.size());
    r.rows.push_back(std::move(row));
  }
  return r;
}

// ---- instruct ----

std::vector<Instruction> load_instructions(const std::string& path) {
  std::vector<Instruction> items;
  for (const Record& r : read_records(path)) {
    require_object(r);
    const nlohmann::json& v = r.value;
    Instruction it;
    it.id = id_field(r, "id");
    if (it.id.empty()) it.id = id_field(r, "question_id");
    if (it.id.empty()) it.id = std::to_string(items.size());
    auto optional_string = [&](const nlohmann::json& obj, const std::string& key, const std::string& name) {
      auto f = obj.find(key);
      if (f == obj.end() || f->is_null()) return std::string();
      if (!f->is_string()) throw std::runtime_error(not_a(r.where, name, *f, "a string"));
      return f->get<std::string>();
    };
    if (v.contains("instruction")) it.instruction = string_field(r, "instruction");
    else if (v.contains("prompt")) it.instruction = string_field(r, "prompt");  // Koala
    else if (v.contains("turns")) {                                               // Vicuna: first turn
      auto turns = string_array(r, "turns", v["turns"]);
      if (turns.empty()) throw std::runtime_error(r.where + ": field \"turns\" is empty");
      it.instruction = turns[0];
    } else {
      throw std::runtime_error(r.where + ": missing field \"instruction\" (or \"prompt\", \"turns\")");
    }
    if (it.instruction.empty()) throw std::runtime_error(r.where + ": the instruction is empty");
    it.input = optional_string(v, "input", "input");
    it.reference = optional_string(v, "output", "output");
    if (auto inst = v.find("instances"); inst != v.end()) {  // self-instruct: the first instance
      if (!inst->is_array() || inst->empty() || !(*inst)[0].is_object())
        throw std::runtime_error(not_a(r.where, "instances", *inst, "a non-empty array of objects"));
      it.input = optional_string((*inst)[0], "input", "instances[0].input");
      it.reference = optional_string((*inst)[0], "output", "instances[0].output");
    }
    items.push_back(std::move(it));
  }
  if (items.empty()) throw std::runtime_error(path + ": no instructions");
  return items;
}

TaskResult eval_instruct(Llama& model, const Tokenizer& tok, const std::vector<Instruction>& items,
                         const std::vector<int>& exits, const EvalGenOptions& opt) {
  std::vector<std::vector<int>> prompts;
  bool references = true;
  for (const auto& it : items) {
    prompts.push_back(tok.encode(alpaca_prompt(it.instruction, it.input), /*bos=*/true));
    references = references && !it.reference.empty();
  }
  EvalGenOptions o = opt;
  const int L = (int)model->config().n_layers;
  Progress progress("instruct", (int64_t)(items.size() * decode_rows(opt, exits, L).size()));
  o.on_batch = [&](int64_t n) { progress.add(n); };
  TaskResult r("instruct", (int64_t)items.size(), (int64_t)items.size());
  for (const ExitGenerations& eg : eval_generate(model, prompts, exits, o)) {
    ResultRow row = generation_row(eg);
    std::vector<double> rouge, f1, exact, len;
    for (size_t i = 0; i < items.size(); ++i) {
      const std::string out = tok.decode(eg.gens[i].tokens);
      // Exact match after trimming whitespace (for sets with checkable answers, e.g. data synth).
      auto trim = [](const std::string& t) {
        const size_t b = t.find_first_not_of(" \t\r\n"), e = t.find_last_not_of(" \t\r\n");
        return b == std::string::npos ? std::string() : t.substr(b, e - b + 1);
      };
      ojson s = {{"id", items[i].id}, {"instruction", items[i].instruction}, {"input", items[i].input}, {"output", out}};
      s.update(sample_exit_fields(eg, L));
      s["finish_reason"] = eg.gens[i].finish_reason;
      if (references) {
        rouge.push_back(rouge_l(out, items[i].reference));
        f1.push_back(token_f1(out, items[i].reference));
        exact.push_back(trim(out) == trim(items[i].reference) ? 1.0 : 0.0);
        s["reference"] = items[i].reference;
      }
      len.push_back((double)eg.gens[i].tokens.size());
      row.samples.push_back(std::move(s));
    }
    if (references) row.metrics = {{"exact_match", mean_of(exact)}, {"rouge_l", mean_of(rouge)}, {"f1", mean_of(f1)}};
    row.metrics["mean_new_tokens"] = mean_of(len);
    row.metrics["n"] = (int64_t)items.size();
    add_decode_metrics(row.metrics, eg);
    r.rows.push_back(std::move(row));
  }
  return r;
}

// ---- speed ----

TaskResult eval_speed(Llama& model, const std::vector<std::vector<int>>& prompts, const std::vector<int>& exits,
                      int64_t max_new_tokens, int64_t batch_size, int64_t eos_id) {
  GenerateOptions opt;
  opt.max_new_tokens = max_new_tokens;
  opt.eos_id = eos_id;
  generate(model, {prompts.at(0)}, opt);  // warm-up: first calls allocate and tune kernels
  Progress progress("speed", (int64_t)(prompts.size() * exits.size()));
  TaskResult r("speed", (int64_t)prompts.size(), (int64_t)prompts.size());
  for (int e : exits) {
    opt.exit_layer = e;
    GenerateStats st;
    for (size_t b = 0; b < prompts.size(); b += (size_t)batch_size) {
      std::vector<std::vector<int>> batch(prompts.begin() + b,
                                          prompts.begin() + std::min(prompts.size(), b + (size_t)batch_size));
      generate(model, batch, opt, &st);
      progress.add((int64_t)batch.size());
    }
    r.rows.emplace_back(std::to_string(e), e,
                        ojson{{"prefill_ms_per_token", st.prefill_ms / (double)std::max<int64_t>(1, st.prompt_tokens)},
                              {"prefill_tokens_per_s", st.prefill_ms > 0 ? 1000.0 * st.prompt_tokens / st.prefill_ms : 0.0},
                              {"decode_ms_per_token", st.decode_ms / (double)std::max<int64_t>(1, st.new_tokens)},
                              {"decode_tokens_per_s", st.decode_ms > 0 ? 1000.0 * st.new_tokens / st.decode_ms : 0.0},
                              {"prompt_tokens", st.prompt_tokens},
                              {"new_tokens", st.new_tokens}});
  }
  // Speed-up of each exit's decoding over the deepest evaluated exit's.
  const double base = r.rows.back().metrics["decode_ms_per_token"].get<double>();
  for (auto& row : r.rows) {
    const double ms = row.metrics["decode_ms_per_token"].get<double>();
    row.metrics["decode_speedup"] = ms > 0 ? base / ms : 0.0;
  }
  return r;
}

}  // namespace sl
