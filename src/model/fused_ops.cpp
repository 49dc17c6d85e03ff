#include "sortedllama/model/fused_ops.h"

#include <ATen/Parallel.h>

#include <vector>

#include "sortedllama/model/attention_cpu.h"
#include "vector_math.h"

namespace sl {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

SL_CPU_CLONES void rms_norm_rows(float* y, const float* x, const float* w, int64_t rows, int64_t D, double eps) {
  for (int64_t r = 0; r < rows; ++r) rms_norm_row(y + r * D, x + r * D, w, D, eps);
}

SL_CPU_CLONES void swiglu_rows(float* y, const float* g, const float* u, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = g[i] * sigmoid(g[i]) * u[i];
}

namespace {
bool needs_grad(std::initializer_list<Tensor> xs) {
  if (!torch::GradMode::is_enabled()) return false;
  for (const Tensor& x : xs)
    if (x.requires_grad()) return true;
  return false;
}

// f(begin, end) over ranges of rows of `width` floats on intra-op threads, tasks of at least ~16K floats.
template <class F>
void for_row_ranges(int64_t rows, int64_t width, const F& f) {
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, width)), f);
}

// f(r) for each row r, as for_row_ranges hands them out.
template <class F>
void for_rows(int64_t rows, int64_t width, const F& f) {
  for_row_ranges(rows, width, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) f(r);
  });
}

// ---------------------------------------------------------------- RMSNorm
Tensor rms_norm_forward(const Tensor& x, const Tensor& w, double eps) {  // x contiguous [..., D]
  const int64_t D = w.numel(), rows = x.numel() / D;
  Tensor y = torch::empty_like(x);
  const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  for_row_ranges(rows, D, [&](int64_t begin, int64_t end) {
    rms_norm_rows(yp + begin * D, xp + begin * D, wp, end - begin, D, eps);
  });
  return y;
}

// dx for rows of x, and their share of dw added to dw_sum (double).
SL_CPU_CLONES void rms_norm_backward_rows(float* dx, double* dw_sum, const float* dy, const float* x, const float* w,
                                         int64_t rows, int64_t D, double eps) {
  for (int64_t r = 0; r < rows; ++r, dx += D, dy += D, x += D) {
    const float inv = (float)(1.0 / std::sqrt(dot_in_double(x, x, D) / (double)D + eps));  // as the forward pass
    for (int64_t d = 0; d < D; ++d) dx[d] = w[d] * dy[d];
    // y = w x inv and d(inv)/dx = -inv^3 x / D, so dx = w dy inv - x inv^3 sum(w dy x) / D.
    const float c = (float)(dot_in_double(dx, x, D) * inv * inv * inv / (double)D);
    for (int64_t d = 0; d < D; ++d) {
      dw_sum[d] += (double)dy[d] * (x[d] * inv);
      dx[d] = dx[d] * inv - x[d] * c;
    }
  }
}

struct RmsNormFn : torch::autograd::Function<RmsNormFn> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& w, double eps) {
    ctx->save_for_backward({x, w});
    ctx->saved_data["eps"] = eps;
    return rms_norm_forward(x, w, eps);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto saved = ctx->get_saved_variables();
    const Tensor x = saved[0], w = saved[1], dy = grad[0].contiguous();
    const double eps = ctx->saved_data["eps"].toDouble();
    const int64_t D = w.numel(), rows = x.numel() / D;
    // dw sums over rows in fixed blocks, then the blocks in order: the same bits on any number of threads.
    constexpr int64_t kBlock = 64;
    const int64_t blocks = (rows + kBlock - 1) / kBlock;
    std::vector<double> partial(blocks * D, 0.0);
    Tensor dx = torch::empty_like(x);
    const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>(), *gp = dy.data_ptr<float>();
    float* dxp = dx.data_ptr<float>();
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t blk = begin; blk < end; ++blk) {
        const int64_t r = blk * kBlock, n = std::min(rows, r + kBlock) - r;
        rms_norm_backward_rows(dxp + r * D, partial.data() + blk * D, gp + r * D, xp + r * D, wp, n, D, eps);
      }
    });
    Tensor dw = torch::empty_like(w);
    float* dwp = dw.data_ptr<float>();
    for (int64_t d = 0; d < D; ++d) {
      double sum = 0;
      for (int64_t blk = 0; blk < blocks; ++blk) sum += partial[blk * D + d];
      dwp[d] = (float)sum;
    }
    return {dx, dw, Tensor()};
  }
};

// ---------------------------------------------------------------- rotary
// One position's heads [heads, hd]: y = rotary(x), or (inverse) its transpose, the gradient.
SL_CPU_CLONES void rotary_heads(float* y, const float* x, const float* c, const float* s, int64_t heads, int64_t hd,
                                bool inverse) {
  const int64_t half = hd / 2;
  for (int64_t h = 0; h < heads; ++h, x += hd, y += hd) {
    if (!inverse) {
      rotate_half_row(y, x, c, s, hd);
      continue;
    }
    // y[j] = x[j] c[j] - x[j+half] s[j] and y[j+half] = x[j+half] c[j+half] + x[j] s[j+half], transposed
#pragma GCC ivdep
    for (int64_t j = 0; j < half; ++j) {
      y[j] = x[j] * c[j] + x[j + half] * s[j + half];
      y[j + half] = x[j + half] * c[j + half] - x[j] * s[j];
    }
  }
}

// rotary_heads at every position of x [B,T,heads,hd] contiguous, cos/sin [B,T,hd] contiguous.
Tensor rotary_rows(const Tensor& x, const Tensor& cos, const Tensor& sin, bool inverse) {
  const int64_t heads = x.size(2), hd = x.size(3), rows = x.size(0) * x.size(1), width = heads * hd;
  Tensor y = torch::empty_like(x);
  const float *xp = x.data_ptr<float>(), *cp = cos.data_ptr<float>(), *sp = sin.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  for_rows(rows, width, [&](int64_t n) {
    rotary_heads(yp + n * width, xp + n * width, cp + n * hd, sp + n * hd, heads, hd, inverse);
  });
  return y;
}

struct RotaryFn : torch::autograd::Function<RotaryFn> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& cos, const Tensor& sin) {
    ctx->save_for_backward({cos, sin});
    return rotary_rows(x, cos, sin, /*inverse=*/false);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto saved = ctx->get_saved_variables();
    return {rotary_rows(grad[0].contiguous(), saved[0], saved[1], /*inverse=*/true), Tensor(), Tensor()};
  }
};

// ---------------------------------------------------------------- SwiGLU
// dg = dy u sigmoid(g) (1 + g (1 - sigmoid(g))), du = dy g sigmoid(g).
SL_CPU_CLONES void swiglu_backward_row(float* dg, float* du, const float* dy, const float* g, const float* u, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float sg = sigmoid(g[i]);
    dg[i] = dy[i] * u[i] * sg * (1.0f + g[i] * (1.0f - sg));
    du[i] = dy[i] * g[i] * sg;
  }
}

constexpr int64_t kChunk = 4096;  // element-wise work in chunks of this many floats per task

template <class F>
void for_chunks(int64_t n, const F& f) {
  for_rows((n + kChunk - 1) / kChunk, kChunk, [&](int64_t c) { f(c * kChunk, std::min(kChunk, n - c * kChunk)); });
}

Tensor swiglu_forward(const Tensor& g, const Tensor& u) {
  Tensor y = torch::empty_like(g);
  const float *gp = g.data_ptr<float>(), *up = u.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  for_chunks(g.numel(), [&](int64_t at, int64_t n) { swiglu_rows(yp + at, gp + at, up + at, n); });
  return y;
}

struct SwigluFn : torch::autograd::Function<SwigluFn> {
  static Tensor forward(AutogradContext* ctx, const Tensor& g, const Tensor& u) {
    ctx->save_for_backward({g, u});
    return swiglu_forward(g, u);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto saved = ctx->get_saved_variables();
    const Tensor g = saved[0], u = saved[1], dy = grad[0].contiguous();
    Tensor dg = torch::empty_like(g), du = torch::empty_like(u);
    const float *gp = g.data_ptr<float>(), *up = u.data_ptr<float>(), *yp = dy.data_ptr<float>();
    float *dgp = dg.data_ptr<float>(), *dup = du.data_ptr<float>();
    for_chunks(g.numel(), [&](int64_t at, int64_t n) {
      swiglu_backward_row(dgp + at, dup + at, yp + at, gp + at, up + at, n);
    });
    return {dg, du};
  }
};

// ---------------------------------------------------------------- attention
template <class F>
HeadsOf<F> heads_of(const Tensor& x) {  // [B, heads, len, hd], hd contiguous
  TORCH_CHECK(x.dim() == 4 && x.stride(3) == 1, "attention inputs must be [B, heads, len, hd] with hd contiguous");
  return {(F*)x.data_ptr<float>(), x.stride(0), x.stride(1), x.stride(2)};
}

AttentionShape shape_of(const Tensor& q, const Tensor& k) {
  const AttentionShape s{q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), q.size(3)};
  TORCH_CHECK(k.size(0) == s.B && k.size(3) == s.hd && s.KV > 0 && s.H % s.KV == 0, "attention: q ", q.sizes(),
              " and k ", k.sizes(), " do not fit");
  return s;
}

MaskView mask_view(const Tensor& mask, const AttentionShape& s) {  // mask [B,1,T,S] bool, possibly expanded
  if (!mask.defined()) return {};
  TORCH_CHECK(mask.scalar_type() == torch::kBool, "attention mask must be bool");
  const Tensor m = mask.expand({s.B, 1, s.T, s.S});
  return {m.data_ptr<bool>(), m.stride(0), m.stride(2), m.stride(3)};
}

// q, k, v as heads_of accepts them (a copy only when hd is not contiguous).
Tensor heads_layout(const Tensor& x) { return x.stride(-1) == 1 ? x : x.contiguous(); }

Tensor attention_out(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask, float* probs) {
  const AttentionShape s = shape_of(q, k);
  Tensor out = torch::empty({s.B, s.T, s.H * s.hd}, torch::kFloat32);
  attention_forward({out.data_ptr<float>(), s.T * s.H * s.hd, s.hd, s.H * s.hd}, probs, heads_of<const float>(q),
                    heads_of<const float>(k), heads_of<const float>(v), mask_view(mask, s), s);
  return out;
}

struct AttentionFn : torch::autograd::Function<AttentionFn> {
  // The mask as an optional: autograd takes every Tensor argument for an input, and none may be undefined.
  static Tensor forward(AutogradContext* ctx, const Tensor& q, const Tensor& k, const Tensor& v,
                        c10::optional<Tensor> mask) {
    const AttentionShape s = shape_of(q, k);
    Tensor probs = torch::empty({s.B, s.H, s.T, attention_probs_stride(s.S)}, torch::kFloat32);
    Tensor out = attention_out(q, k, v, mask ? *mask : Tensor(), probs.data_ptr<float>());
    ctx->save_for_backward({q, k, v, probs});
    if (mask) ctx->saved_data["mask"] = *mask;
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto saved = ctx->get_saved_variables();
    const Tensor q = saved[0], k = saved[1], v = saved[2], probs = saved[3];
    const Tensor mask = ctx->saved_data.count("mask") ? ctx->saved_data["mask"].toTensor() : Tensor();
    const AttentionShape s = shape_of(q, k);
    // dout [B,T,H*hd] read as [B,H,T,hd]; the gradients take their inputs' strides.
    const Tensor dout = grad[0].contiguous().view({s.B, s.T, s.H, s.hd}).transpose(1, 2);
    Tensor dq = torch::empty_like(q), dk = torch::empty_like(k), dv = torch::empty_like(v);
    attention_backward(heads_of<float>(dq), heads_of<float>(dk), heads_of<float>(dv), heads_of<const float>(dout),
                       heads_of<const float>(q), heads_of<const float>(k), heads_of<const float>(v),
                       probs.data_ptr<float>(), mask_view(mask, s), s);
    return {dq, dk, dv, Tensor()};
  }
};
}  // namespace

bool fused_ops_apply(const Tensor& x) {
  return x.device().is_cpu() && (x.scalar_type() == torch::kFloat32 || x.scalar_type() == torch::kBFloat16);
}

namespace {
// bf16 tensors computed in fp32 and rounded back: autograd carries the conversions' gradients.
bool narrow(const Tensor& x) { return x.scalar_type() != torch::kFloat32; }
Tensor fp32(const Tensor& x) { return x.to(torch::kFloat32); }
}  // namespace

Tensor fused_rms_norm(const Tensor& x_in, const Tensor& weight, double eps) {
  if (narrow(x_in) || narrow(weight)) return fused_rms_norm(fp32(x_in), fp32(weight), eps).to(x_in.scalar_type());
  const Tensor x = x_in.contiguous(), w = weight.contiguous();
  return needs_grad({x, w}) ? RmsNormFn::apply(x, w, eps) : rms_norm_forward(x, w, eps);
}

Tensor fused_rotary(const Tensor& x_in, const Tensor& cos_in, const Tensor& sin_in) {
  if (narrow(x_in)) return fused_rotary(fp32(x_in), fp32(cos_in), fp32(sin_in)).to(x_in.scalar_type());
  const Tensor x = x_in.contiguous();
  const int64_t B = x.size(0), T = x.size(1), hd = x.size(3);
  TORCH_CHECK(hd % 2 == 0, "rotary needs an even head dim, got ", hd);
  const Tensor cos = cos_in.expand({B, 1, T, hd}).contiguous(), sin = sin_in.expand({B, 1, T, hd}).contiguous();
  return needs_grad({x}) ? RotaryFn::apply(x, cos, sin) : rotary_rows(x, cos, sin, /*inverse=*/false);
}

Tensor fused_swiglu(const Tensor& gate, const Tensor& up) {
  if (narrow(gate)) return fused_swiglu(fp32(gate), fp32(up)).to(gate.scalar_type());
  const Tensor g = gate.contiguous(), u = up.contiguous();
  TORCH_CHECK(g.sizes() == u.sizes(), "swiglu: gate ", g.sizes(), " and up ", u.sizes(), " differ");
  return needs_grad({g, u}) ? SwigluFn::apply(g, u) : swiglu_forward(g, u);
}

Tensor fused_attention(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, const Tensor& mask) {
  if (narrow(q_in)) return fused_attention(fp32(q_in), fp32(k_in), fp32(v_in), mask).to(q_in.scalar_type());
  const Tensor q = heads_layout(q_in), k = heads_layout(k_in), v = heads_layout(v_in);
  TORCH_CHECK(v.sizes() == k.sizes(), "attention: k ", k.sizes(), " and v ", v.sizes(), " differ");
  if (needs_grad({q, k, v})) return AttentionFn::apply(q, k, v, mask.defined() ? c10::optional<Tensor>(mask) : c10::nullopt);
  return attention_out(q, k, v, mask, nullptr);
}

}  // namespace sl
