// Attention over fp32 CPU arrays in plain loops, forward and backward: softmax(q k^T / sqrt(hd))
// v over the keys each query may see, with grouped KV heads. libtorch's general path runs it as a
// batched GEMM per product (one small matrix at a time, every key whether masked or not), a
// softmax over the whole [B,H,T,S] scores, and copies to lay q, k and v out for them. Here each
// (batch row, KV head) is one task: its keys are packed once for all the query heads that share
// them, the products are register-tiled loops, and key columns beyond a block of queries' last
// visible key are skipped (half the work of a causal mask).
//
// Shapes: B batch, H query heads, KV key/value heads (H a multiple of KV: query head h reads KV head
// h / (H / KV)), T queries, S keys, hd head dim. Arrays of [B, heads, len, hd] are read through
// strides, so q from a projection ([B, T, H*hd] memory) and keys from a KV cache ([B, KV, cap, hd])
// need no copy.
#pragma once
#include <cstdint>

namespace sl {

// Element (b, head, pos, d) of a [B, heads, len, hd] array at data + b*batch + head*head + pos*pos + d.
template <class F>
struct HeadsOf {
  F* data;
  int64_t batch, head, pos;  // strides in floats; d is contiguous
};
using HeadsIn = HeadsOf<const float>;
using HeadsOut = HeadsOf<float>;

// Whether query t of batch row b may see key s: data[b*batch + t*query + s*key]; null data = every key.
struct MaskView {
  const bool* data = nullptr;
  int64_t batch = 0, query = 0, key = 0;
};

struct AttentionShape {
  int64_t B, H, KV, T, S, hd;
};

// The row length of the kept probabilities: S rounded up to whole column tiles.
int64_t attention_probs_stride(int64_t S);

// out = softmax(q k^T / sqrt(hd)) v per (b, h), over the visible keys (a query that sees none gets
// 0). probs [B,H,T,attention_probs_stride(S)], when not null, keeps the probabilities for the
// backward pass; in each block of queries, columns past the block's last visible key are left
// unwritten and never read.
void attention_forward(HeadsOut out, float* probs, HeadsIn q, HeadsIn k, HeadsIn v, MaskView mask,
                       const AttentionShape& s);

// The gradients of attention_forward's inputs from dout, the gradient of its output, and the
// probabilities it kept. dq, dk and dv are overwritten.
void attention_backward(HeadsOut dq, HeadsOut dk, HeadsOut dv, HeadsIn dout, HeadsIn q, HeadsIn k, HeadsIn v,
                        const float* probs, MaskView mask, const AttentionShape& s);

}  // namespace sl
