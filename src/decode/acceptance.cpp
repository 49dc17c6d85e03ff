#include "sortedllama/decode/acceptance.h"

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
