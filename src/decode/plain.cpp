#include "sortedllama/decode/plain.h"

#include "sortedllama/util/stopwatch.h"

namespace sl {

void decode_plain(Llama& model, int exit, DecodeBatch& batch, KVCache& cache, torch::Tensor logits,
                  const GenerateOptions& opt, at::Generator& gen, std::vector<Generation>& out, GenerateStats* stats) {
  const Stopwatch clock;
  auto dev = batch.key_mask.device();
  for (int64_t step = 0; !batch.rows.empty(); ++step) {
    torch::Tensor next = next_tokens(logits, opt.sampling, gen).to(torch::kCPU);  // [rows]
    std::vector<int64_t> keep;
    for (size_t r = 0; r < batch.rows.size(); ++r)
      if (batch.emit(out, r, (int)next[(int64_t)r].item<int64_t>(), opt)) keep.push_back((int64_t)r);
    if (stats) stats->new_tokens += (int64_t)batch.rows.size();
    if (keep.empty()) break;
    if (keep.size() < batch.rows.size()) next = next.index_select(0, torch::tensor(keep, torch::kInt64));
    batch.keep(keep, cache);  // finished rows leave the batch
    const int64_t slot = batch.prompt_len + step;
    batch.key_mask.select(1, slot).fill_(1);
    torch::Tensor h = model->forward(next.to(dev).unsqueeze(1), {exit}, batch.key_mask.narrow(1, 0, slot + 1), &cache)[0];  // [rows,1,D]
    logits = model->head(h.select(1, 0), exit);  // [rows,V]
  }
  if (stats) stats->decode_ms += clock.ms();
}

std::vector<Generation> generate(Llama& model, const std::vector<std::vector<int>>& prompts,
                                 const GenerateOptions& opt, GenerateStats* stats) {
  torch::NoGradGuard no_grad;
  const auto& cfg = model->config();
  const int exit = opt.exit_layer > 0 ? opt.exit_layer : (int)cfg.n_layers;
  TORCH_CHECK(exit <= cfg.n_layers, "exit layer ", exit, " is deeper than the model's ", cfg.n_layers, " layers");
  std::vector<Generation> out(prompts.size());
  if (prompts.empty()) return out;
  DecodeBatch batch(model, prompts, opt.max_new_tokens);
  KVCache cache = batch.make_cache(model);
  at::Generator gen = make_generator(opt.seed);

  const Stopwatch clock;
  const int64_t P = batch.prompt_len;
  torch::Tensor h = model->forward(batch.tokens, {exit}, batch.key_mask.narrow(1, 0, P), &cache)[0];  // [B,P,D]
  torch::Tensor logits = model->head(h.select(1, P - 1), exit);                                      // [B,V]
  if (stats) {
    stats->prefill_ms += clock.ms();
    stats->prompt_tokens += batch.prompt_tokens();
  }
  decode_plain(model, exit, batch, cache, logits, opt, gen, out, stats);
  return out;
}

}  // namespace sl
