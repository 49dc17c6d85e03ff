#include "sortedllama/eval/tasks.h"

namespace sl {

TaskResult eval_speed(Llama& model, const std::vector<std::vector<int>>& prompts, const std::vector<int>& exits,
                      int64_t max_new_tokens, int64_t batch_size, int64_t eos_id) {
  DecodeOptions opt;
  opt.max_new_tokens = max_new_tokens;
  opt.eos_id = eos_id;
  generate(model, {prompts.at(0)}, opt);  // warm-up: first calls allocate and tune kernels
  Progress progress("speed", (int64_t)(prompts.size() * exits.size()));
  TaskResult r("speed", (int64_t)prompts.size(), (int64_t)prompts.size());
  for (int e : exits) {
    opt.exit_layer = e;
    DecodeStats st;
    for (size_t b = 0; b < prompts.size(); b += (size_t)batch_size) {
      std::vector<std::vector<int>> batch(prompts.begin() + b,
                                          prompts.begin() + std::min(prompts.size(), b + (size_t)batch_size));
      generate(model, batch, opt, &st);
      progress.add((int64_t)batch.size());
    }
    r.rows.emplace_back(std::to_string(e), e, ojson(st.to_json()));
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
