// Next-token choice: greedy, or temperature / top-k / top-p sampling.
#pragma once
#include <cstdint>

#include <torch/torch.h>

namespace sl {

struct SamplingParams {
  double temperature = 0.0;  // 0 = greedy (argmax)
  double top_p = 1.0;        // nucleus: smallest set of tokens whose probability reaches top_p
  int64_t top_k = 0;         // 0 = no limit
  // > 0: only ids below this are ever chosen. Checkpoints may have more embedding rows than the
  // tokenizer has pieces (an added [PAD] row); those ids cannot be decoded into text.
  int64_t vocab_limit = 0;
};

// logits [..., V] restricted to the ids that may be chosen: [..., min(V, vocab_limit)] (a view).
torch::Tensor decodable_logits(const torch::Tensor& logits, const SamplingParams& p);

// The distribution sampling draws from: softmax(logits / T) restricted to top-k and top-p,
// renormalised, over the decodable ids. logits [B,V] -> probabilities [B,V'] (fp32, V' = the
// decodable ids). Requires temperature > 0. top_p keeps at least the most likely token (top_p 0 is
// greedy, as in HF).
torch::Tensor sampling_probs(const torch::Tensor& logits, const SamplingParams& p);

// logits [B,V] -> token ids [B] (int64, on logits' device).
torch::Tensor next_tokens(const torch::Tensor& logits, const SamplingParams& p, at::Generator& gen);

at::Generator make_generator(uint64_t seed);

}  // namespace sl
