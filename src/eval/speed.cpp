#include "sortedllama/eval/tasks.h"

namespace sl {

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
