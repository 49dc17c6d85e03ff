// The per-exit objective that training and evaluation share: right-padded labelled batches and
// the next-token NLL of one sub-model, computed a chunk of positions at a time so that logits
// [chunk, V] are the only vocabulary-sized tensor alive.
#pragma once
#include <cstdint>
#include <vector>

#include <torch/torch.h>

#include "sortedllama/model/llama.h"

namespace sl {

constexpr int64_t kIgnoreLabel = -100;

// One right-padded batch. labels[b,t] is the token position t must predict (tokens[b,t+1] when
// that token is a loss target), kIgnoreLabel elsewhere.
struct Batch {
  torch::Tensor tokens;    // [B,T] int64
  torch::Tensor key_mask;  // [B,T] int64, 1 = real token
  torch::Tensor labels;    // [B,T] int64
  int64_t targets = 0;     // labels >= 0
};

// A sequence and which of its tokens are loss targets (targets[t] = 1: tokens[t] is predicted
// from position t-1); null targets = every token after the first.
struct LabeledSequence {
  const std::vector<int>* tokens;
  const std::vector<uint8_t>* targets = nullptr;
};

Batch right_padded_batch(const std::vector<LabeledSequence>& seqs, torch::Device device);

// Sum of sub-model `exit`'s next-token NLL over the positions with labels >= 0; hidden [B,T,D]
// (the residual stream after layer `exit`), labels [B,T]. When grad_scale != 0 and the loss has
// a graph (the head or hidden requires grad), loss * grad_scale is back-propagated: the gradient
// of each chunk's logits is formed in place from its softmax while the chunk is computed, so
// gradients reach the head and hidden without all logits, or a log-softmax, ever existing.
double exit_nll_sum(Llama& model, const torch::Tensor& hidden, const torch::Tensor& labels, int exit,
                    int64_t chunk, double grad_scale = 0);

// Positions per chunk that keep one chunk's fp32 logits near 64 MiB (524 for a 32000-token
// vocabulary): the head's gradient GEMMs then have enough rows to keep every thread busy (with a
// few dozen rows the one over the vocabulary ran far below GEMM speed), and the logits, softmax and
// gradient share one buffer per exit_nll_sum call.
int64_t default_loss_chunk(int64_t vocab_size);

}  // namespace sl
