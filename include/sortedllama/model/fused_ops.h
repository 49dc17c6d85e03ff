// The decoder layer's steps between its matrix products, each one node over fp32 CPU tensors:
// RMSNorm, rotary embeddings, SwiGLU and attention, forward and backward in plain loops. As
// libtorch ops each would be a handful of element-wise passes over the activations plus their
// autograd nodes, and attention a batched GEMM per product with copies to lay its inputs out.
// Without autograd (inference) they run the same loops and keep nothing. llama.cpp uses them
// where fused_ops_apply(); elsewhere (CUDA) it keeps the tensor ops. bf16 inputs are computed in
// fp32 and rounded once at the end.
#pragma once
#include <torch/torch.h>

namespace sl {

bool fused_ops_apply(const torch::Tensor& x);  // fp32 or bf16 on the CPU

// RMSNormImpl's math: x [..., D], weight [D] -> x * rsqrt(mean(x^2) + eps) * weight.
torch::Tensor fused_rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);

// HF's rotate-half rotary: x [B, T, heads, hd], cos/sin [B, 1, T, hd] -> x * cos + rotate_half(x) * sin.
torch::Tensor fused_rotary(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);

// silu(gate) * up, both [..., I].
torch::Tensor fused_swiglu(const torch::Tensor& gate, const torch::Tensor& up);

// softmax(q k^T / sqrt(hd)) v over the keys mask [B, 1, T, S] shows (undefined: every key):
// q [B, H, T, hd], k and v [B, KV, S, hd] (any strides with hd contiguous) -> [B, T, H * hd].
torch::Tensor fused_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                              const torch::Tensor& mask);

}  // namespace sl
