// The results files every eval task writes (schema in docs/results_schema.md).
#include "sortedllama/eval/results.h"

#include <ctime>
#include <filesystem>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "sortedllama/util/files.h"

namespace sl {

namespace fs = std::filesystem;

std::string iso_date_utc() {
  std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

namespace {

// Scalar metrics in first-seen order over the rows: the table's columns.
std::vector<std::string> columns(const TaskResult& r) {
  std::vector<std::string> cols;
  for (const auto& row : r.rows)
    for (const auto& [k, v] : row.metrics.items())
      // "metric,filter" keys repeat a metric under lm-eval's name: results.json only.
      if (v.is_number() && k.find(',') == std::string::npos && std::find(cols.begin(), cols.end(), k) == cols.end())
        cols.push_back(k);
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
  auto write = [](const fs::path& p, const std::string& text) { write_file_atomic(p.string(), text); };
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

}  // namespace sl
