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
  const nlohmann::json st = eg.stats.to_json();
  for (const char* k : {"new_tokens", "decode_ms_per_token", "acceptance_rate", "mean_accepted_per_round", "mean_layers_per_token"})
    if (st.contains(k)) m[k] = st[k];
  if (eg.versus_full) {
    m["speedup"] = eg.versus_full->speedup;
    m["agree_full"] = eg.versus_full->agree_full;
  }
  m["decoding"] = st;
}

ojson sample_exit_fields(const ExitGenerations& eg, int n_layers) {
  if (eg.mode == DecodeMode::kExit) return {{"exit", eg.exit}};
  return {{"exit", n_layers}, {"decoder", eg.name}};
}
}  // namespace sl
