// Softmax over rows in plain CPU loops, where each row stays in cache from its maximum to its
// normalisation: the cross-entropy of the chunked loss (objective.h) and attention's masked softmax
// (llama.cpp), each a single pass per step where tensor ops stream the whole tensor once per op.
#pragma once
#include <cstdint>

namespace sl {

// The cross-entropy of m rows of fp32 logits [m,V] (CPU, contiguous): the sum over rows of
// -log softmax(row)[labels[r]], in double. With grad, each row is overwritten by
// grad_scale * (softmax(row) - onehot(labels[r])), the gradient of the scaled NLL; without, by
// exp(row - max).
double softmax_nll_rows(float* logits, const int64_t* labels, int64_t m, int64_t V, double grad_scale, bool grad);

// Attention's weights, fp32 rows of S keys: probs[r] = softmax(scores[r] / divisor) over the keys
// mask [B,T,S] shows row r = (b * heads + h) * T + t (null: every key), 0 for the hidden ones.
void masked_softmax_rows(float* probs, const float* scores, const bool* mask, int64_t rows, int64_t heads, int64_t T,
                         int64_t S, float divisor);
// Its backward: grad_scores = probs * (grad_probs - sum(grad_probs * probs)) / divisor, per row.
void masked_softmax_backward_rows(float* grad_scores, const float* grad_probs, const float* probs, int64_t rows,
                                  int64_t S, float divisor);

}  // namespace sl
