// Speculative decoding's acceptance rules and draft-length rule, as pure functions of the round's
// tensors (no model): which drafts each row keeps and which token the verifier adds after them.
#pragma once
#include <cstdint>
#include <vector>

#include <torch/torch.h>

namespace sl {

struct Acceptance {
  std::vector<int64_t> accepted;  // per row: drafts accepted, a prefix of length 0..N
  std::vector<int64_t> next;      // per row: the verifier's token after them (the bonus when all N were accepted)
};

// Greedy: row r accepts its drafts while they equal the verifier's argmax at the same position.
// drafts [R,N], verifier_tokens [R,N+1] (position j: the verifier's choice after draft j-1), int64 on the CPU.
Acceptance accept_greedy(const torch::Tensor& drafts, const torch::Tensor& verifier_tokens);

// Speculative sampling: draft d at position j is accepted when u[j] * q_j(d) < p_j(d) (probability
// min(1, p/q)); the first rejection resamples from normalised max(0, p_j - q_j), or from p_j where
// p == q leaves no residual mass; after N acceptances the bonus token comes from p_N.
// p [R,N+1,V] verifier and q [R,N,V] draft probabilities (fp32), drafts [R,N] int64, uniforms [R,N]
// fp32 in [0,1), all on the CPU; `gen` draws the resampled tokens.
Acceptance accept_sampled(const torch::Tensor& p, const torch::Tensor& q, const torch::Tensor& drafts,
                          const torch::Tensor& uniforms, at::Generator& gen);

// Adaptive draft length (HF assisted generation): +2 after a round in which some row accepted all
// `drafted` tokens, else -1; within [1, max_length].
int64_t next_draft_length(int64_t length, int64_t drafted, int64_t most_accepted, int64_t max_length);

}  // namespace sl
