#include "sortedllama/generate.h"

#include <chrono>

namespace sl {

namespace {
double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

std::vector<Generation> generate(Llama& model, const std::vector<std::vector<int>>& prompts,
                                 const GenerateOptions& opt, GenerateStats* stats) {
  torch::NoGradGuard no_grad;
  const auto& cfg = model->config();
  const int exit = opt.exit_layer > 0 ? opt.exit_layer : (int)cfg.n_layers;
  TORCH_CHECK(exit <= cfg.n_layers, "exit layer ", exit, " is deeper than the model's ", cfg.n_layers, " layers");
  const int64_t B = (int64_t)prompts.size();
  std::vector<Generation> out(B);
  if (B == 0) return out;
  int64_t P = 0;
  for (const auto& p : prompts) {
    TORCH_CHECK(!p.empty(), "empty prompt (LLaMA prompts start with BOS)");
    for (int id : p) TORCH_CHECK(id >= 0 && id < cfg.vocab_size, "prompt token ", id, " outside the vocabulary");
    P = std::max<int64_t>(P, (int64_t)p.size());
  }
  const int64_t capacity = P + opt.max_new_tokens;
  auto dev = model->body->norm->weight.device();
  auto i64 = torch::dtype(torch::kInt64);

  // Left padding: prompts end at the same slot, so every row's next token goes to the same slot.
  torch::Tensor tokens = torch::zeros({B, P}, i64), key_mask = torch::zeros({B, capacity}, i64);
  for (int64_t b = 0; b < B; ++b) {
    const auto& p = prompts[b];
    const int64_t pad = P - (int64_t)p.size();
    tokens[b].narrow(0, pad, (int64_t)p.size()).copy_(torch::tensor(std::vector<int64_t>(p.begin(), p.end()), i64));
    key_mask[b].narrow(0, pad, (int64_t)p.size()).fill_(1);
  }
  tokens = tokens.to(dev);
  key_mask = key_mask.to(dev);
  KVCache cache(cfg, B, capacity, torch::dtype(model->body->norm->weight.scalar_type()).device(dev));
  at::Generator gen = make_generator(opt.seed);

  auto t0 = std::chrono::steady_clock::now();
  torch::Tensor h = model->forward(tokens, {exit}, key_mask.narrow(1, 0, P), &cache)[0];  // [B,P,D]
  torch::Tensor logits = model->head(h.select(1, P - 1), exit);                            // [B,V]
  if (stats) {
    stats->prefill_ms += ms_since(t0);
    stats->prompt_tokens += key_mask.sum().item<int64_t>();
  }
  t0 = std::chrono::steady_clock::now();
  std::vector<int64_t> rows(B);  // batch row -> sequence index, for the rows still running
  for (int64_t b = 0; b < B; ++b) rows[b] = b;
  for (int64_t step = 0; !rows.empty(); ++step) {
    torch::Tensor next = next_tokens(logits, opt.sampling, gen).to(torch::kCPU);  // [rows]
    std::vector<int64_t> keep;
    for (size_t r = 0; r < rows.size(); ++r) {
      Generation& g = out[rows[r]];
      const int tok = (int)next[r].item<int64_t>();
      if (tok == opt.eos_id) {
        g.finish_reason = "eos";
        continue;
      }
      g.tokens.push_back(tok);
      if (opt.on_token && opt.on_token(rows[r], g.tokens)) g.finish_reason = "stop";
      else if ((int64_t)g.tokens.size() >= opt.max_new_tokens) g.finish_reason = "length";
      else keep.push_back((int64_t)r);
    }
    if (stats) stats->new_tokens += (int64_t)rows.size();
    if (keep.empty()) break;
    if (keep.size() < rows.size()) {  // drop finished rows from the batch
      torch::Tensor idx = torch::tensor(keep, i64).to(dev);
      cache.keep_rows(idx);
      key_mask = key_mask.index_select(0, idx);
      next = next.index_select(0, idx.to(torch::kCPU));
      std::vector<int64_t> still;
      for (int64_t r : keep) still.push_back(rows[r]);
      rows = still;
    }
    const int64_t slot = P + step;
    key_mask.select(1, slot).fill_(1);
    h = model->forward(next.to(dev).unsqueeze(1), {exit}, key_mask.narrow(1, 0, slot + 1), &cache)[0];  // [rows,1,D]
    logits = model->head(h.select(1, 0), exit);
  }
  if (stats) stats->decode_ms += ms_since(t0);
  return out;
}

}  // namespace sl
