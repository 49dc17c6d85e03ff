// Next-token choice: greedy, or temperature / top-k / top-p sampling.
#pragma once
#include <cstdint>

#include <torch/torch.h>

namespace sl {

struct SamplingParams {
  double temperature = 0.0;  // 0 = greedy (argmax)
  double top_p = 1.0;        // nucleus: smallest set of tokens whose probability reaches top_p
  int64_t top_k = 0;         // 0 = no limit
};

// The distribution sampling draws from: softmax(logits / T) restricted to top-k and top-p,
// renormalised. logits [B,V] -> probabilities [B,V] (fp32). Requires temperature > 0.
torch::Tensor sampling_probs(const torch::Tensor& logits, const SamplingParams& p);

// logits [B,V] -> token ids [B] (int64, on logits' device).
torch::Tensor next_tokens(const torch::Tensor& logits, const SamplingParams& p, at::Generator& gen);

at::Generator make_generator(uint64_t seed);

}  // namespace sl
