// What every eval task produces: rows of per-exit metrics, written as results.json, results.md
// and samples files (schema in docs/results_schema.md).
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace sl {

using ojson = nlohmann::ordered_json;

// One table row: a sub-model (exit k) or, for compare, a pair of them.
struct ResultRow {
  ResultRow(std::string name, int exit, ojson metrics = ojson::object())
      : name(std::move(name)), exit(exit), metrics(std::move(metrics)) {}
  std::string name;             // "5", or "5 vs 5" for compare
  int exit;                     // x position in plots (system A's exit for compare)
  ojson metrics;                // scalar metrics are table columns; arrays (per position) are not
  std::string samples_file;     // written into the output directory when samples is non-empty
  std::vector<ojson> samples;
};

struct TaskResult {
  explicit TaskResult(std::string task = "", int64_t n_original = 0, int64_t n_effective = 0)
      : task(std::move(task)), n_original(n_original), n_effective(n_effective) {}
  std::string task;
  std::vector<ResultRow> rows;
  int64_t n_original = 0, n_effective = 0;  // records in the data, records evaluated (--limit)
  ojson extra = ojson::object();            // task-specific blocks (compare matrix, ...)
};

// What results.json says about the run besides the scores.
struct RunInfo {
  std::string model;
  ojson config = ojson::object();  // the resolved command-line options
  double wall_s = 0;
};

ojson results_json(const TaskResult& r, const RunInfo& run);
std::string iso_date_utc();  // now, "2024-01-31T12:00:00Z" (results files' "date")
// Exits as rows, scalar metrics as columns: aligned text for stdout, or a Markdown table.
std::string results_table(const TaskResult& r, bool markdown);
// `out` is a directory (created; gets results.json, results.md and the samples files), or a path
// ending in ".json" that receives results.json itself (the other files go beside it). Returns the
// directory written to.
std::string write_results(const std::string& out, const TaskResult& r, const RunInfo& run);

}  // namespace sl
