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

// A round's draft tree beyond its chain: M alternatives per row, each a leaf that stands in for
// the chain's draft at one position (its parent is the chain node before that draft).
struct DraftSiblings {
  torch::Tensor at;      // [R,M] int64: the chain position 0..N-1 whose draft each alternative replaces
  torch::Tensor tokens;  // [R,M] int64
};

// Spends M nodes per row where the draft was least sure: its positions by increasing top
// probability (ties: the earlier first) get their most likely alternative, then their second, and
// so on. top_prob [R,N] fp32 (N >= 1), ranked [R,N,M] int64 (each position's alternatives to the
// chain's token, most likely first), on the CPU.
DraftSiblings choose_siblings(const torch::Tensor& top_prob, const torch::Tensor& ranked, int64_t M);

struct TreeAcceptance : Acceptance {
  std::vector<int64_t> sibling;  // per row: the accepted alternative (index into M), -1 = none
};

// Greedy over chain and siblings: row r accepts its chain prefix as accept_greedy does; at its first
// rejected position j, an alternative at j that equals the verifier's token there is accepted too,
// and `next` is then the verifier's token after that alternative. The accepted tokens are always the
// verifier's own choices. drafts [R,N], verifier_tokens [R,N+1+M] (chain nodes 0..N, then the M
// alternatives), int64 on the CPU.
TreeAcceptance accept_greedy_tree(const torch::Tensor& drafts, const torch::Tensor& verifier_tokens,
                                  const DraftSiblings& siblings);

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
