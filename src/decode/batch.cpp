#include "sortedllama/decode/batch.h"

namespace sl {

using torch::Tensor;

namespace {
Tensor to_tensor(const std::vector<int64_t>& v) { return torch::tensor(v, torch::dtype(torch::kInt64)); }
}  // namespace

DecodeBatch::DecodeBatch(Llama& model, const std::vector<std::vector<int>>& prompts, int64_t extra) {
  const auto& cfg = model->config();
  const int64_t B = (int64_t)prompts.size();
  for (const auto& p : prompts) {
    TORCH_CHECK(!p.empty(), "empty prompt (LLaMA prompts start with BOS)");
    for (int id : p) TORCH_CHECK(id >= 0 && id < cfg.vocab_size, "prompt token ", id, " outside the vocabulary");
    prompt_len = std::max<int64_t>(prompt_len, (int64_t)p.size());
  }
  capacity = prompt_len + extra;
  auto i64 = torch::dtype(torch::kInt64);
  tokens = torch::zeros({B, prompt_len}, i64);
  key_mask = torch::zeros({B, capacity}, i64);
  for (int64_t b = 0; b < B; ++b) {
    const auto& p = prompts[b];
    const int64_t pad = prompt_len - (int64_t)p.size();
    tokens[b].narrow(0, pad, (int64_t)p.size()).copy_(to_tensor(std::vector<int64_t>(p.begin(), p.end())));
    key_mask[b].narrow(0, pad, (int64_t)p.size()).fill_(1);
    rows.push_back(b);
  }
  auto dev = model->device();
  tokens = tokens.to(dev);
  key_mask = key_mask.to(dev);
}

bool DecodeBatch::emit(std::vector<Generation>& out, size_t r, int tok, const StopRule& opt) const {
  Generation& g = out[rows[r]];
  if (tok == opt.eos_id) {
    g.finish_reason = "eos";
    return false;
  }
  g.tokens.push_back(tok);
  if (opt.on_token && opt.on_token(rows[r], g.tokens)) g.finish_reason = "stop";
  else if ((int64_t)g.tokens.size() >= opt.max_new_tokens) g.finish_reason = "length";
  else return true;
  return false;
}

void DecodeBatch::keep(const std::vector<int64_t>& keep_rows, KVCache& cache) {
  if (keep_rows.size() == rows.size()) return;
  Tensor idx = to_tensor(keep_rows).to(key_mask.device());
  cache.keep_rows(idx);
  key_mask = key_mask.index_select(0, idx);
  std::vector<int64_t> still;
  for (int64_t r : keep_rows) still.push_back(rows[r]);
  rows = still;
}

KVCache DecodeBatch::make_cache(Llama& model) const {
  return KVCache(model->config(), (int64_t)rows.size(), capacity, torch::dtype(model->dtype()).device(model->device()));
}

int64_t DecodeBatch::prompt_tokens() const { return key_mask.narrow(1, 0, prompt_len).sum().item<int64_t>(); }

}  // namespace sl
