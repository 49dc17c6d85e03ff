// Softmax over rows in plain CPU loops, where each row stays in cache from its maximum to its
// normalisation: the cross-entropy of the chunked loss (objective.h), a single pass per step where
// tensor ops stream the whole tensor once per op.
#pragma once
#include <cstdint>

namespace sl {

// The cross-entropy of m rows of fp32 logits [m,V] (CPU, contiguous): the sum over rows of
// -log softmax(row)[labels[r]], in double. With grad, each row is overwritten by
// grad_scale * (softmax(row) - onehot(labels[r])), the gradient of the scaled NLL; without, by
// exp(row - max).
double softmax_nll_rows(float* logits, const int64_t* labels, int64_t m, int64_t V, double grad_scale, bool grad);

}  // namespace sl
