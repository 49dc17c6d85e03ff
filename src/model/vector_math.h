// Pieces the model's plain CPU loops share (fast_step.cpp, softmax_rows.cpp): the CPU versions of
// a hot loop, and an e^x that vectorises.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

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

}  // namespace sl
