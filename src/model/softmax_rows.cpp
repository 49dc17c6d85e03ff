#include "sortedllama/model/softmax_rows.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <cstring>
#include <limits>
#include <vector>

#include "vector_math.h"

namespace sl {

namespace {
// One row of logits: its maximum; exp(l - max) in place, summed a block at a time into a double;
// then, when asked, the gradient in place. The row (V floats) stays in cache from one loop to the next.
constexpr int64_t kBlock = 1024;
SL_CPU_CLONES double row_nll(float* l, int64_t label, int64_t V, float grad_scale, bool grad) {
  const float mx = max_of(l, V), target = l[label];
  double sum = 0;
  for (int64_t b = 0; b < V; b += kBlock) {
    const int64_t n = std::min(kBlock, V - b);
    float* x = l + b;
    for (int64_t i = 0; i < n; ++i) x[i] = exp_nonpositive(x[i] - mx);
    sum += sum_of(x, n);
  }
  if (grad) {
    const float f = (float)(grad_scale / sum);
    for (int64_t v = 0; v < V; ++v) l[v] *= f;
    l[label] -= grad_scale;
  }
  return std::log(sum) + mx - target;
}

// p = softmax(x / divisor) over the visible entries of one row of S, 0 elsewhere (null = all visible).
SL_CPU_CLONES void softmax_row(float* p, const float* x, const bool* visible, int64_t S, float divisor) {
  const float none = -std::numeric_limits<float>::infinity();
  for (int64_t s = 0; s < S; ++s) p[s] = !visible || visible[s] ? x[s] / divisor : none;
  const float mx = max_of(p, S);
  for (int64_t s = 0; s < S; ++s) p[s] = p[s] == none ? 0.0f : exp_nonpositive(p[s] - mx);
  const float inv = 1.0f / sum_of(p, S);
  for (int64_t s = 0; s < S; ++s) p[s] *= inv;
}

// The gradient of softmax_row's input: g_x = p * (g_p - sum(g_p * p)) / divisor, with g_x as scratch.
SL_CPU_CLONES void softmax_row_backward(float* gx, const float* gp, const float* p, int64_t S, float divisor) {
  for (int64_t s = 0; s < S; ++s) gx[s] = gp[s] * p[s];
  const float dot = sum_of(gx, S);
  for (int64_t s = 0; s < S; ++s) gx[s] = p[s] * (gp[s] - dot) / divisor;
}
}  // namespace

double softmax_nll_rows(float* logits, const int64_t* labels, int64_t m, int64_t V, double grad_scale, bool grad) {
  for (int64_t r = 0; r < m; ++r)
    TORCH_CHECK(labels[r] >= 0 && labels[r] < V, "label ", labels[r], " outside the vocabulary of ", V, " tokens");
  std::vector<double> nll(m);
  at::parallel_for(0, m, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) nll[r] = row_nll(logits + r * V, labels[r], V, (float)grad_scale, grad);
  });
  double total = 0;  // in row order: the same sum on any number of threads
  for (double x : nll) total += x;
  return total;
}

void masked_softmax_rows(float* probs, const float* scores, const bool* mask, int64_t rows, int64_t heads, int64_t T,
                         int64_t S, float divisor) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const bool* visible = mask ? mask + ((r / (heads * T)) * T + r % T) * S : nullptr;
      softmax_row(probs + r * S, scores + r * S, visible, S, divisor);
    }
  });
}

void masked_softmax_backward_rows(float* grad_scores, const float* grad_probs, const float* probs, int64_t rows,
                                  int64_t S, float divisor) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      softmax_row_backward(grad_scores + r * S, grad_probs + r * S, probs + r * S, S, divisor);
  });
}

}  // namespace sl
