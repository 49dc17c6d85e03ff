#include "sortedllama/decode/sampling.h"

#include <ATen/CPUGeneratorImpl.h>

namespace sl {

at::Generator make_generator(uint64_t seed) { return at::detail::createCPUGenerator(seed); }

torch::Tensor decodable_logits(const torch::Tensor& logits, const SamplingParams& p) {
  const int64_t V = logits.size(-1);
  return p.vocab_limit > 0 && p.vocab_limit < V ? logits.narrow(-1, 0, p.vocab_limit) : logits;
}

torch::Tensor sampling_probs(const torch::Tensor& logits, const SamplingParams& p) {
  TORCH_CHECK(p.temperature > 0, "sampling_probs needs temperature > 0");
  torch::Tensor scaled = decodable_logits(logits, p).to(torch::kFloat32) / p.temperature;  // [B,V']
  const int64_t V = scaled.size(-1);
  if (p.top_k > 0 && p.top_k < V) {
    torch::Tensor kth = std::get<0>(scaled.topk(p.top_k, -1)).narrow(-1, p.top_k - 1, 1);  // [B,1]
    scaled = scaled.masked_fill(scaled < kth, -std::numeric_limits<float>::infinity());
  }
  torch::Tensor probs = scaled.softmax(-1);
  if (p.top_p < 1.0) {
    auto [sorted, idx] = probs.sort(-1, /*descending=*/true);
    // Keep a token while the mass before it is below top_p (the top token is always kept).
    torch::Tensor before = sorted.cumsum(-1) - sorted;
    torch::Tensor drop_sorted = before >= p.top_p;
    drop_sorted.select(-1, 0).fill_(false);
    torch::Tensor drop = torch::zeros_like(drop_sorted).scatter(-1, idx, drop_sorted);
    probs = probs.masked_fill(drop, 0.0);
    probs = probs / probs.sum(-1, true);
  }
  return probs;
}

torch::Tensor next_tokens(const torch::Tensor& logits, const SamplingParams& p, at::Generator& gen) {
  if (p.temperature <= 0) return decodable_logits(logits, p).argmax(-1);
  torch::Tensor probs = sampling_probs(logits, p).to(torch::kCPU);
  return torch::multinomial(probs, 1, false, gen).squeeze(-1).to(logits.device());
}

}  // namespace sl
