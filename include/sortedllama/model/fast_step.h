// One decoder layer for ONE new position per row, fp32 on the CPU: DecoderLayerImpl's math for
// T = 1, written the way llama2.c writes it. Decoding spends almost all its time here, and for one
// position libtorch's general path pays per-op dispatch, a GEMM where a matrix-vector product
// suffices, and a temporary per element-wise step. Here the projections are matvec() (see below)
// into buffers reused across calls, attention reads the cache in place, and the element-wise work
// is plain loops. LlamaImpl::layer picks this path when
// fast_step_applies(); the general path stays the reference that tests compare it with.
//
// Shapes: R rows (one new position each), D hidden, H heads, KV key/value heads, hd head dim,
// I intermediate width, S keys (cached + this one).
#pragma once
#include <torch/torch.h>

#include "sortedllama/model/llama.h"

namespace sl {

// Scratch for one step, grown on first use and kept by the model (row-major, fp32).
struct StepBuffers {
  std::vector<float> xb;        // [R,D] normed input
  std::vector<float> q, k, v;   // [R,H*hd], [R,KV*hd], [R,KV*hd]
  std::vector<float> att;       // [R,H*hd] attention output, head-major
  std::vector<float> proj;      // [R,D] o_proj / down_proj output
  std::vector<float> gate, up;  // [R,I]
  std::vector<float> scores;    // [R*H,S] attention scores
};

// y [R, rows] = x [R, cols] W^T for W [rows, cols], fp32, on intra-op threads: R matrix-vector
// products that read W once. A decoding step is bound by reading W: OpenBLAS's sgemv reads it
// about 1.5x slower than this plain vectorised loop, and its GEMM packs W for a few rows first.
void matvec(float* y, const float* W, const float* x, int64_t R, int64_t rows, int64_t cols);
// Up to this many rows matvec beats a GEMM (which is compute-bound beyond it).
constexpr int64_t kMatvecRows = 32;

// fp32 CPU input [R,1,D] with a fp32 contiguous cache and autograd off.
bool fast_step_applies(const torch::Tensor& x, const KVCache* cache);

// x [R,1,D] -> [R,1,D]; stores this position's K/V at cache.len[i] and advances it, as
// DecoderLayerImpl::forward does.
torch::Tensor fast_layer_step(DecoderLayerImpl& layer, const torch::Tensor& x, const AttnInputs& in, KVCache& cache,
                              int i, StepBuffers& buf);

// Only the K/V that fast_layer_step would store for input x [R,1,D] (DecoderLayerImpl::append_kv).
void fast_layer_kv_step(DecoderLayerImpl& layer, const torch::Tensor& x, const AttnInputs& in, KVCache& cache, int i,
                        StepBuffers& buf);

}  // namespace sl
