#include "sortedllama/model/softmax_rows.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

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

}  // namespace sl
