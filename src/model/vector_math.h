// Pieces the model's plain CPU loops share (fast_step, softmax_rows, attention_cpu, fused_ops): the
// CPU versions of a hot loop, an e^x that vectorises, lane-split sums, and the rows of RMSNorm,
// rotary and SwiGLU.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

// CPU-specific versions of the hot loops where the compiler can make them (GCC/Clang on x86-64), chosen
// once, at load time. x86-64-v4 (AVX-512 with VL) gives 256-bit code 32 vector registers instead of 16.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SL_CPU_VERSIONS 1
#define SL_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define SL_CPU_VERSIONS 0
#define SL_CPU_CLONES
#endif

namespace sl {

// e^x for x <= 0 in plain arithmetic that vectorises (libm's expf is one call per value): Cephes'
// expf: x = n ln2 + r with |r| <= ln2/2 and a degree-5 minimax polynomial for e^r, times 2^n;
// relative error below 1e-7 (checked over [-87, 0]). Below -87 (e^x < 2e-38) it returns e^-87.
inline float exp_nonpositive(float x) {
  x = std::max(x, -87.0f);
  const float n = std::floor(x * 1.44269504f + 0.5f);
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;  // ln2 in two parts, the first exact in n * it
  float p = 1.9875691500e-4f;
  for (const float c : {1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f})
    p = p * r + c;
  const int32_t bits = ((int32_t)n + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof two_n);
  return (p * r * r + r + 1.0f) * two_n;
}

// The largest and the sum of n floats through 16 partial lanes, so that they vectorise. Always
// inlined: each CPU version of a caller gets its own.
typedef float Lanes16 __attribute__((vector_size(64)));  // one AVX-512 register (two or four narrower ones)
__attribute__((always_inline)) inline float max_of(const float* x, int64_t n) {
  Lanes16 top = -std::numeric_limits<float>::infinity() - Lanes16{}, v;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    std::memcpy(&v, x + i, sizeof v);
    top = v > top ? v : top;
  }
  float mx = top[0];
  for (int k = 1; k < 16; ++k) mx = std::max(mx, top[k]);
  for (; i < n; ++i) mx = std::max(mx, x[i]);
  return mx;
}
__attribute__((always_inline)) inline float sum_of(const float* x, int64_t n) {
  Lanes16 acc{}, v;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    std::memcpy(&v, x + i, sizeof v);
    acc += v;
  }
  float sum = 0;
  for (int k = 0; k < 16; ++k) sum += acc[k];
  for (; i < n; ++i) sum += x[i];
  return sum;
}

// sum(a[i] * b[i]) in double through 8 lanes, so that it vectorises. A product of two floats is
// exact in double, so the result does not depend on whether the compiler fuses multiply and add.
typedef float Floats8 __attribute__((vector_size(32)));
typedef double Doubles8 __attribute__((vector_size(64)));
__attribute__((always_inline)) inline double dot_in_double(const float* a, const float* b, int64_t n) {
  Doubles8 acc{};
  Floats8 x, y;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    std::memcpy(&x, a + i, sizeof x);
    std::memcpy(&y, b + i, sizeof y);
    acc += __builtin_convertvector(x, Doubles8) * __builtin_convertvector(y, Doubles8);
  }
  double sum = 0;
  for (int k = 0; k < 8; ++k) sum += acc[k];
  for (; i < n; ++i) sum += (double)a[i] * b[i];
  return sum;
}

// One row of RMSNormImpl::forward: out = w * (x * rsqrt(mean(x^2) + eps)) over D values, the sum of
// squares in double. Returns the rsqrt.
__attribute__((always_inline)) inline float rms_norm_row(float* out, const float* x, const float* w, int64_t D,
                                                         double eps) {
  const float inv = (float)(1.0 / std::sqrt(dot_in_double(x, x, D) / (double)D + eps));
  for (int64_t d = 0; d < D; ++d) out[d] = w[d] * (x[d] * inv);
  return inv;
}

// HF's rotate-half rotary on one head's hd values: y = x * cos + rotate_half(x) * sin, where
// rotate_half(x) = [-x[half:], x[:half]]; cos/sin [hd] at the row's position. y may be x.
inline void rotate_half_row(float* y, const float* x, const float* cos, const float* sin, int64_t hd) {
  const int64_t half = hd / 2;
#pragma GCC ivdep  // y is x or apart from it: iteration j touches only elements j and j + half
  for (int64_t j = 0; j < half; ++j) {
    const float a = x[j], b = x[j + half];
    y[j] = a * cos[j] - b * sin[j];
    y[j + half] = b * cos[j + half] + a * sin[j + half];
  }
}

// SwiGLU's silu(g) * u = g * sigmoid(g) * u, the sigmoid from e^-|g| so that it vectorises.
inline float sigmoid(float g) {
  const float e = exp_nonpositive(-std::abs(g)), r = 1.0f / (1.0f + e);
  return g >= 0 ? r : e * r;
}

// Rows defined once, in fused_ops.cpp, in CPU versions; fast_step's decoding steps share them, so
// a position's norms and SwiGLU are the same bits there and in the general path.
void rms_norm_rows(float* y, const float* x, const float* w, int64_t rows, int64_t D, double eps);  // rms_norm_row each
void swiglu_rows(float* y, const float* g, const float* u, int64_t n);  // y = g * sigmoid(g) * u; y may be g

}  // namespace sl
