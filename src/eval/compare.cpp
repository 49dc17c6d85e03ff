// eval --task compare: PandaLM pairwise judging of two sample sets, exit pair by exit pair.
#include <filesystem>
#include <regex>
#include <set>

#include <spdlog/spdlog.h>

#include "sortedllama/eval/tasks.h"
#include "sortedllama/data/records.h"

namespace sl {

namespace fs = std::filesystem;

namespace {
int exit_from_name(const std::string& name) {
  std::smatch m;
  return std::regex_search(name, m, std::regex("exit(\\d+)")) ? std::stoi(m[1]) : 0;
}

void read_samples(const std::string& file, SampleSet& set) {
  const int file_exit = exit_from_name(fs::path(file).filename().string());
  for (const Record& r : read_records(file))
    with_location(r.where, [&] {
      require_object(r.value);
      std::string id = id_string(r.value, "id");
      if (id.empty()) id = id_string(r.value, "question_id");
      if (id.empty()) throw BadRecord("missing field \"id\"");
      int exit = file_exit;
      if (auto it = r.value.find("exit"); it != r.value.end()) {
        if (!it->is_number_integer()) throw BadRecord(type_error("field \"exit\"", *it, "an integer"));
        exit = it->get<int>();
      }
      Sample s{required_string(r.value, "instruction", /*allow_empty=*/true), optional_string(r.value, "input"),
               required_string(r.value, "output", /*allow_empty=*/true)};
      if (!set[exit].emplace(id, std::move(s)).second)
        throw BadRecord("id \"" + id + "\" appears twice for exit " + std::to_string(exit));
    });
}
}  // namespace

SampleSet load_sample_set(const std::string& path) {
  SampleSet set;
  if (fs::is_directory(path)) {
    std::vector<std::string> files;
    for (const auto& f : fs::directory_iterator(path))
      if (std::regex_match(f.path().filename().string(), std::regex("samples_exit\\d+\\.jsonl")))
        files.push_back(f.path().string());
    if (files.empty()) throw std::runtime_error(path + ": no samples_exit<k>.jsonl files (run eval --task instruct first)");
    std::sort(files.begin(), files.end());
    for (const auto& f : files) read_samples(f, set);
  } else {
    read_samples(path, set);
  }
  return set;
}

JudgeFn model_judge(Llama& judge, const Tokenizer& tok, int64_t batch_size, int64_t max_new_tokens) {
  return [judge, &tok, batch_size, max_new_tokens](const std::vector<std::string>& prompts) mutable {
    std::vector<std::vector<int>> ids;
    for (const auto& p : prompts) ids.push_back(tok.encode(p, /*bos=*/true));
    EvalGenOptions o;
    o.decode = DecodeMode::kFull;
    o.batch_size = batch_size;
    o.max_new_tokens = max_new_tokens;
    o.eos_id = judge->config().eos_id;
    o.vocab_limit = tok.vocab_size();
    // The verdict is the first line: stop once a line with content has ended.
    o.stop = [&tok](const std::vector<int>& t) {
      const std::string s = tok.decode(t);
      const size_t first = s.find_first_not_of(" \t\r\n");
      return first != std::string::npos && s.find('\n', first) != std::string::npos;
    };
    const std::vector<ExitGenerations> rows = eval_generate(judge, ids, {}, o);
    std::vector<std::string> out;
    for (const auto& g : rows[0].gens) out.push_back(tok.decode(g.tokens));
    return out;
  };
}

TaskResult eval_compare(const SampleSet& a, const SampleSet& b, const std::vector<std::pair<int, int>>& pairs,
                        const JudgeFn& judge, int64_t limit) {
  TaskResult r("compare");
  Progress progress("compare", (int64_t)pairs.size());
  std::set<int> a_exits, b_exits;
  std::map<std::pair<int, int>, double> scores;
  for (const auto& [ea, eb] : pairs) {
    auto sa = a.find(ea), sb = b.find(eb);
    if (sa == a.end()) throw std::runtime_error("system A has no samples for exit " + std::to_string(ea));
    if (sb == b.end()) throw std::runtime_error("system B has no samples for exit " + std::to_string(eb));
    std::vector<std::string> ids;
    for (const auto& [id, s] : sa->second)
      if (sb->second.count(id)) ids.push_back(id);
    if (ids.empty())
      throw std::runtime_error("systems A (exit " + std::to_string(ea) + ") and B (exit " + std::to_string(eb) +
                               ") share no instruction ids");
    if (ids.size() < std::max(sa->second.size(), sb->second.size()))
      spdlog::warn("exit {} vs {}: judging the {} ids both sets hold ({} and {} samples)", ea, eb, ids.size(),
                   sa->second.size(), sb->second.size());
    if (limit > 0 && (int64_t)ids.size() > limit) ids.resize(limit);
    // Prompts 0..N-1 put A first, N..2N-1 put B first.
    const size_t N = ids.size();
    std::vector<std::string> prompts(2 * N);
    for (size_t i = 0; i < N; ++i) {
      const Sample& x = sa->second.at(ids[i]);
      const std::string ra = strip_special_tokens(x.output), rb = strip_special_tokens(sb->second.at(ids[i]).output);
      prompts[i] = pandalm_prompt(x.instruction, x.input, ra, rb);
      prompts[N + i] = pandalm_prompt(x.instruction, x.input, rb, ra);
    }
    std::vector<std::string> cont = judge(prompts);
    if (cont.size() != 2 * N) throw std::runtime_error("the judge returned a wrong number of verdicts");
    std::vector<int> ab(N), ba(N);
    ResultRow row(std::to_string(ea) + " vs " + std::to_string(eb), ea);
    row.samples_file = "judgements_a" + std::to_string(ea) + "_b" + std::to_string(eb) + ".jsonl";
    for (size_t i = 0; i < 2 * N; ++i) {
      const int v = pandalm_verdict(cont[i]);
      (i < N ? ab[i] : ba[i - N]) = v;
      row.samples.push_back({{"id", ids[i % N]},
                             {"a_exit", ea},
                             {"b_exit", eb},
                             {"order", i < N ? "AB" : "BA"},
                             {"verdict", v},
                             {"judge_output", cont[i]}});
    }
    const PairwiseScore s = pairwise_score(ab, ba);
    row.metrics = {{"wins", s.wins}, {"ties", s.ties}, {"losses", s.losses}, {"n", s.n}, {"score", s.score}};
    r.n_effective = std::max(r.n_effective, s.n);
    r.n_original = std::max<int64_t>(r.n_original, (int64_t)std::max(sa->second.size(), sb->second.size()));
    a_exits.insert(ea);
    b_exits.insert(eb);
    scores[{ea, eb}] = s.score;
    r.rows.push_back(std::move(row));
    progress.add(1);
  }
  // The paper's Figure 1: A's exits as rows, B's as columns, when every combination was judged.
  if (scores.size() == a_exits.size() * b_exits.size() && scores.size() > 1) {
    ojson m = ojson::array();
    for (int ea : a_exits) {
      ojson line = ojson::array();
      for (int eb : b_exits) line.push_back(scores.at({ea, eb}));
      m.push_back(line);
    }
    r.extra["matrix"] = {{"a_exits", a_exits}, {"b_exits", b_exits}, {"score", m}};
  }
  return r;
}

}  // namespace sl
