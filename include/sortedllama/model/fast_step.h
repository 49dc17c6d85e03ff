// One decoder layer for a FEW new positions, fp32 on the CPU: DecoderLayerImpl's math written
// the way llama2.c writes it. Decoding spends almost all its time here (one position per row, or
// a speculative round's draft tokens to verify), and for a few positions libtorch's general path
// pays per-op dispatch, a GEMM where matrix-vector products suffice, and a temporary per
// element-wise step. Here the projections are matvec() (see below) into buffers reused across
// calls, attention reads the cache in place, and the element-wise work is plain loops.
// LlamaImpl::layer picks this path when fast_step_applies(); the general path (long prompts,
// training, bf16, CUDA) stays the reference that tests compare it with.
//
// Shapes: R rows, T new positions per row, N = R * T, D hidden, H heads, KV key/value heads,
// hd head dim, I intermediate width, S keys (cached + the new ones).
#pragma once
#include <torch/torch.h>

#include "sortedllama/model/llama.h"

namespace sl {

// Scratch for one step, grown on first use and kept by the model (row-major, fp32).
struct StepBuffers {
  std::vector<float> xb;        // [N,D] normed input
  std::vector<float> q, k, v;   // [N,H*hd], [N,KV*hd], [N,KV*hd]
  std::vector<float> att;       // [N,H*hd] attention output, head-major
  std::vector<float> proj;      // [N,D] o_proj / down_proj output
  std::vector<float> gate, up;  // [N,I]
  std::vector<float> scores;    // [N*H,S] attention scores
};

// y [R, rows] = x [R, cols] W^T for W [rows, cols], fp32, on intra-op threads: R matrix-vector
// products that read W once. A decoding step is bound by reading W: OpenBLAS's sgemv reads it
// about 1.5x slower than this plain vectorised loop, and its GEMM packs W for a few rows first.
void matvec(float* y, const float* W, const float* x, int64_t R, int64_t rows, int64_t cols);
// Up to this many rows matvec beats a GEMM (which is compute-bound beyond it).
constexpr int64_t kMatvecRows = 32;

// LlamaImpl::attn_inputs for a few positions on the CPU (T = 1 or B * T <= kMatvecRows), in plain
// loops instead of a few dozen tensor ops per decoding step; inv_freq [hd/2] fp32.
AttnInputs fast_attn_inputs(const torch::Tensor& key_mask, int64_t B, int64_t q_start, int64_t T,
                            const torch::Tensor& inv_freq);
// Only its rotary tables (cos, sin [B,1,T,hd]; no mask), for explicit positions [B,T] int64 on the CPU.
AttnInputs fast_rotary(const torch::Tensor& positions, const torch::Tensor& inv_freq);

// fp32 CPU input [R,T,D] with T = 1 or R * T <= kMatvecRows (beyond, a GEMM is faster), a fp32
// contiguous cache and autograd off.
bool fast_step_applies(const torch::Tensor& x, const KVCache* cache);

// x [R,T,D] -> [R,T,D]; stores the new positions' K/V from slot cache.len[i] on and advances it,
// as DecoderLayerImpl::forward does. in.mask [R,1,T,S] may be undefined only when T = 1.
torch::Tensor fast_layer_step(DecoderLayerImpl& layer, const torch::Tensor& x, const AttnInputs& in, KVCache& cache,
                              int i, StepBuffers& buf);

// Only the K/V that fast_layer_step would store for input x [R,T,D] (DecoderLayerImpl::append_kv).
void fast_layer_kv_step(DecoderLayerImpl& layer, const torch::Tensor& x, const AttnInputs& in, KVCache& cache, int i,
                        StepBuffers& buf);

}  // namespace sl
