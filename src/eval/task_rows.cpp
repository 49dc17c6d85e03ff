#include "task_rows.h"

namespace sl {
double mean_of(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0.0 : s / (double)v.size();
}

ResultRow generation_row(const ExitGenerations& eg) {
  ResultRow row(eg.name, eg.exit);
  row.samples_file = "samples_" + (eg.mode == DecodeMode::kExit ? "exit" + eg.name : eg.name) + ".jsonl";
  return row;
}

void add_decode_metrics(ojson& m, const ExitGenerations& eg) {
  m["new_tokens"] = eg.stats.new_tokens;
  m["decode_ms_per_token"] = eg.stats.new_tokens ? eg.stats.decode_ms / (double)eg.stats.new_tokens : 0.0;
  for (const auto& [k, v] : eg.decode) m[k] = v;
}

ojson sample_exit_fields(const ExitGenerations& eg, int n_layers) {
  if (eg.mode == DecodeMode::kExit) return {{"exit", eg.exit}};
  return {{"exit", n_layers}, {"decoder", eg.name}};
}
}  // namespace sl
