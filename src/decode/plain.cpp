#include "sortedllama/util/stopwatch.h"
#include "strategies.h"

namespace sl {

void decode_plain(Llama& model, int exit, DecodeBatch& batch, KVCache& cache, torch::Tensor logits,
                  const DecodeOptions& opt, at::Generator& gen, std::vector<Generation>& out, DecodeStats& stats) {
  const Stopwatch clock;
  auto dev = batch.key_mask.device();
  for (int64_t step = 0; !batch.rows.empty(); ++step) {
    torch::Tensor next = next_tokens(logits, opt.sampling, gen).to(torch::kCPU);  // [rows]
    std::vector<int64_t> keep;
    for (size_t r = 0; r < batch.rows.size(); ++r)
      if (batch.emit(out, r, (int)next[(int64_t)r].item<int64_t>(), opt)) keep.push_back((int64_t)r);
    stats.new_tokens += (int64_t)batch.rows.size();
    if (keep.empty()) break;
    if (keep.size() < batch.rows.size()) next = next.index_select(0, torch::tensor(keep, torch::kInt64));
    batch.keep(keep, cache);  // finished rows leave the batch
    const int64_t slot = batch.prompt_len + step;
    batch.key_mask.select(1, slot).fill_(1);
    torch::Tensor h = model->forward(next.to(dev).unsqueeze(1), {exit}, batch.key_mask.narrow(1, 0, slot + 1), &cache)[0];  // [rows,1,D]
    logits = model->head(h.select(1, 0), exit);  // [rows,V]
  }
  stats.decode_ms += clock.ms();
}

std::vector<Generation> generate_plain(Llama& model, const std::vector<std::vector<int>>& prompts,
                                       const DecodeOptions& opt, DecodeStats& stats) {
  const int exit = opt.exit_layer;
  std::vector<Generation> out(prompts.size());
  if (prompts.empty()) return out;
  DecodeBatch batch(model, prompts, opt.max_new_tokens);
  KVCache cache = batch.make_cache(model);
  at::Generator gen = make_generator(opt.seed);

  const Stopwatch clock;
  const int64_t P = batch.prompt_len;
  torch::Tensor h = model->forward(batch.tokens, {exit}, batch.key_mask.narrow(1, 0, P), &cache)[0];  // [B,P,D]
  torch::Tensor logits = model->head(h.select(1, P - 1), exit);                                      // [B,V]
  stats.prefill_ms += clock.ms();
  stats.prompt_tokens += batch.prompt_tokens();
  decode_plain(model, exit, batch, cache, logits, opt, gen, out, stats);
  return out;
}

}  // namespace sl
