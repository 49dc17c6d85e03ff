#include "sortedllama/decode/acceptance.h"

#include <algorithm>
#include <numeric>

namespace sl {

using torch::Tensor;

namespace {
Tensor to_tensor(const std::vector<int64_t>& v) { return torch::tensor(v, torch::dtype(torch::kInt64)); }

void check_round(const Tensor& drafts, int64_t rows, int64_t positions, const char* what) {
  TORCH_CHECK(drafts.dim() == 2 && drafts.size(0) == rows && drafts.size(1) + 1 == positions, what,
              ": drafts [R,N] need the verifier's N+1 positions for each of their R rows");
}
}  // namespace

Acceptance accept_greedy(const Tensor& drafts, const Tensor& verifier_tokens) {
  check_round(drafts, verifier_tokens.size(0), verifier_tokens.size(1), "accept_greedy");
  const int64_t R = drafts.size(0), N = drafts.size(1);
  auto d = drafts.accessor<int64_t, 2>();
  auto t = verifier_tokens.accessor<int64_t, 2>();
  Acceptance a{std::vector<int64_t>(R, 0), std::vector<int64_t>(R)};
  for (int64_t r = 0; r < R; ++r) {
    int64_t& n = a.accepted[r];
    while (n < N && t[r][n] == d[r][n]) ++n;
    a.next[r] = t[r][n];
  }
  return a;
}

DraftSiblings choose_siblings(const Tensor& top_prob, const Tensor& ranked, int64_t M) {
  const int64_t R = top_prob.size(0), N = top_prob.size(1);
  TORCH_CHECK(N >= 1 && ranked.dim() == 3 && ranked.size(0) == R && ranked.size(1) == N && ranked.size(2) * N >= M,
              "choose_siblings: top_prob [R,N] and ranked [R,N,k] need k * N >= M alternatives per row");
  DraftSiblings s{torch::empty({R, M}, torch::kInt64), torch::empty({R, M}, torch::kInt64)};
  auto p = top_prob.accessor<float, 2>();
  auto alternative = ranked.accessor<int64_t, 3>();
  auto at = s.at.accessor<int64_t, 2>();
  auto tok = s.tokens.accessor<int64_t, 2>();
  std::vector<int64_t> order(N);  // a row's positions, least sure first
  for (int64_t r = 0; r < R; ++r) {
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return p[r][a] < p[r][b]; });
    for (int64_t m = 0; m < M; ++m) {  // node m: the (m / N)-th alternative at the (m % N)-th least sure position
      at[r][m] = order[m % N];
      tok[r][m] = alternative[r][at[r][m]][m / N];
    }
  }
  return s;
}

TreeAcceptance accept_greedy_tree(const Tensor& drafts, const Tensor& verifier_tokens, const DraftSiblings& siblings) {
  const int64_t R = drafts.size(0), N = drafts.size(1), M = siblings.at.size(1);
  TORCH_CHECK(verifier_tokens.dim() == 2 && verifier_tokens.size(1) == N + 1 + M && siblings.tokens.sizes() == siblings.at.sizes(),
              "accept_greedy_tree: drafts [R,N] and siblings [R,M] need the verifier's N+1+M nodes");
  TreeAcceptance a{accept_greedy(drafts, verifier_tokens.narrow(1, 0, N + 1)), std::vector<int64_t>(R, -1)};
  auto at = siblings.at.accessor<int64_t, 2>();
  auto tok = siblings.tokens.accessor<int64_t, 2>();
  auto t = verifier_tokens.accessor<int64_t, 2>();
  for (int64_t r = 0; r < R; ++r) {
    const int64_t j = a.accepted[r];
    for (int64_t m = 0; m < M && j < N && a.sibling[r] < 0; ++m) {
      if (at[r][m] != j || tok[r][m] != t[r][j]) continue;
      a.sibling[r] = m;
      a.next[r] = t[r][N + 1 + m];
    }
  }
  return a;
}

Acceptance accept_sampled(const Tensor& p, const Tensor& q, const Tensor& drafts, const Tensor& uniforms,
                          at::Generator& gen) {
  check_round(drafts, p.size(0), p.size(1), "accept_sampled");
  const int64_t R = drafts.size(0), N = drafts.size(1), V = p.size(2);
  auto pa = p.accessor<float, 3>();
  auto qa = q.accessor<float, 3>();
  auto d = drafts.accessor<int64_t, 2>();
  auto u = uniforms.accessor<float, 2>();
  Acceptance a{std::vector<int64_t>(R, 0), std::vector<int64_t>(R)};
  for (int64_t r = 0; r < R; ++r)  // q(d) > 0 as d was drawn from q
    for (int64_t& n = a.accepted[r]; n < N && u[r][n] * qa[r][n][d[r][n]] < pa[r][n][d[r][n]];) ++n;
  // q padded with a zero row at position N: "resample from max(0, p - q)" there is the bonus draw from p.
  Tensor q_padded = torch::cat({q, torch::zeros({R, 1, V})}, 1);  // [R,N+1,V]
  Tensor rows = torch::arange(R), at = to_tensor(a.accepted);
  Tensor p_at = p.index({rows, at}), residual = (p_at - q_padded.index({rows, at})).clamp_min(0);  // [R,V]
  // p == q up to rounding leaves no residual mass; p itself is then the right distribution.
  residual = torch::where(residual.sum(-1, true) > 0, residual, p_at);
  Tensor next = torch::multinomial(residual, 1, false, gen).squeeze(1);
  a.next.assign(next.data_ptr<int64_t>(), next.data_ptr<int64_t>() + R);
  return a;
}

int64_t next_draft_length(int64_t length, int64_t drafted, int64_t most_accepted, int64_t max_length) {
  return most_accepted == drafted ? std::min(length + 2, max_length) : std::max<int64_t>(length - 1, 1);
}

}  // namespace sl
