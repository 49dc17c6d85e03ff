#include "sortedllama/eval/tasks.h"

#include <cmath>
#include <filesystem>
#include <regex>
#include <set>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "sortedllama/data/examples.h"
#include "sortedllama/data/records.h"
#include "sortedllama/util/rng.h"
#include "task_rows.h"

namespace sl {

namespace fs = std::filesystem;

std::vector<TriviaQuestion> load_triviaqa(const std::string& path) {
  std::vector<TriviaQuestion> qs;
  for (const Record& r : read_records(path)) {
    TriviaQuestion q = with_location(r.where, [&] {
      TriviaQuestion t;
      require_object(r.value);
      t.id = id_string(r.value, "question_id");
      if (t.id.empty()) t.id = std::to_string(qs.size());
      t.question = required_string(r.value, "question", /*allow_empty=*/true);
      t.aliases = triviaqa_aliases(r.value);
      t.fewshot_target = t.aliases[0];
      if (auto a = r.value.find("answer"); a != r.value.end() && a->contains("aliases"))
        for (const auto& s : (*a)["aliases"])
          if (!s.get<std::string>().empty()) {
            t.fewshot_target = s.get<std::string>();
            break;
          }
      return t;
    });
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
    ctx += triviaqa_prompt(pool[i].question) + " " + pool[i].fewshot_target + "\n\n";
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
  ojson m = {{"exact_match", mean_of(em)},
          {"exact_match_case_sensitive", mean_of(cs)},
          {"exact_match_official", mean_of(off)},
          {"f1", mean_of(f1)},
          {"n", (int64_t)scores.size()}};
  // lm-evaluation-harness 0.4's keys for its triviaqa task: metric,filter and the sample standard
  // error of the mean (ddof 1), so that its tooling reads these files.
  m["exact_match,remove_whitespace"] = m["exact_match"];
  if (em.size() >= 2) {
    const double mu = mean_of(em);
    double ss = 0;
    for (double x : em) ss += (x - mu) * (x - mu);
    m["exact_match_stderr,remove_whitespace"] = std::sqrt(ss / (double)(em.size() - 1) / (double)em.size());
  }
  return m;
}

namespace {
// The toolkit's fields, then lm-evaluation-harness's per-sample ones (doc_id, doc, target, arguments,
// resps, filtered_resps); `prompt` is empty for predictions scored without a model.
ojson triviaqa_sample(size_t doc_id, const TriviaQuestion& q, const std::string& prompt, const std::string& continuation,
                      const std::string& prediction, const QAScore& s) {
  ojson j = {{"question_id", q.id},     {"question", q.question},
          {"continuation", continuation},
          {"prediction", prediction}, {"exact_match", s.exact_match},
          {"exact_match_case_sensitive", s.exact_match_case_sensitive},
          {"exact_match_official", s.exact_match_official},
          {"f1", s.f1}};
  j["doc_id"] = doc_id;
  j["doc"] = {{"question", q.question}, {"question_id", q.id}, {"answer", {{"aliases", q.aliases}}}};
  j["target"] = q.aliases;
  if (!prompt.empty())
    j["arguments"] = ojson::array({ojson::array({prompt, {{"until", {"\n", ".", ","}}, {"do_sample", false}}})});
  j["resps"] = ojson::array({ojson::array({continuation})});
  j["filtered_resps"] = ojson::array({prediction});
  return j;
}
}  // namespace

TaskResult eval_triviaqa(Llama& model, const Tokenizer& tok, const std::vector<TriviaQuestion>& questions,
                         const std::vector<TriviaQuestion>& fewshot_pool, int64_t num_fewshot,
                         const std::vector<int>& exits, const EvalGenOptions& opt, bool add_bos) {
  std::vector<std::vector<int>> prompts;
  std::vector<std::string> texts;
  for (size_t i = 0; i < questions.size(); ++i) {
    std::string ctx = num_fewshot > 0 ? triviaqa_fewshot(fewshot_pool, num_fewshot, 1234 + i, questions[i].id) : "";
    texts.push_back(ctx + triviaqa_prompt(questions[i].question));
    prompts.push_back(tok.encode(texts.back(), add_bos));
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
      row.samples.push_back(triviaqa_sample(i, questions[i], texts[i], cont, pred, scores.back()));
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
      std::string id, pred;
      int exit = file_exit;
      with_location(r.where, [&] {
        require_object(r.value);
        id = id_string(r.value, "question_id");
        if (id.empty()) throw BadRecord("missing field \"question_id\"");
        pred = required_string(r.value, "prediction", /*allow_empty=*/true);
        if (auto it = r.value.find("exit"); it != r.value.end()) {
          if (!it->is_number_integer()) throw BadRecord(type_error("field \"exit\"", *it, "an integer"));
          exit = it->get<int>();
          if (exit < 1) throw BadRecord("field \"exit\" is " + std::to_string(exit) + ", not a layer number (1 or more)");
        }
      });
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
      row.samples.push_back(triviaqa_sample(qi, questions[qi], "", raw, pred, scores.back()));
      row.samples.back()["exit"] = exit;
    }
    row.metrics = triviaqa_metrics(scores);
    r.n_effective = std::max(r.n_effective, (int64_t)preds.size());
    r.rows.push_back(std::move(row));
  }
  return r;
}

}  // namespace sl
