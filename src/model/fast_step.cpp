#include "sortedllama/model/fast_step.h"

#include <ATen/Parallel.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "vector_math.h"
#if SL_CPU_VERSIONS
#include <immintrin.h>
#endif

namespace sl {

using torch::Tensor;

namespace {
// Eight or sixteen floats: one AVX or AVX-512 register (two SSE registers in the default version).
typedef float Vec8 __attribute__((vector_size(32)));
typedef float Vec16 __attribute__((vector_size(64)));

// A vector read from any float address (memcpy compiles to one unaligned load). By reference: a
// vector passed by value outside the versions' targets would change the calling convention.
template <class V>
inline void load(V& v, const float* p) {
  std::memcpy(&v, p, sizeof v);
}

// The sum of eight lanes (a Vec8 or float[8]) as a fixed tree: the same bits wherever it is used.
template <class Lanes>
inline float sum8(const Lanes& l) {
  return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}
// Helpers on vectors are always inlined and return through references: a call between code of
// different CPU versions would disagree on how vectors are passed.
#define SL_VECTOR_HELPER __attribute__((always_inline)) inline

// acc += w * x, in one fused multiply-add where the version has them (kFma: instantiated only in the
// x86-64-v3/v4 versions). Fused or not, it is the same in every block of a version, so a row's
// result still does not depend on how many rows share the call.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"  // always inlined into a version: no call passes these vectors
template <bool kFma, class V>
SL_VECTOR_HELPER void multiply_add(V& acc, const V& w, const V& x) {
#if SL_CPU_VERSIONS
  if constexpr (kFma && sizeof(V) == 64)
    acc = __builtin_ia32_vfmaddps512_mask(w, x, acc, (__mmask16)-1, _MM_FROUND_CUR_DIRECTION);
  else if constexpr (kFma)
    acc = __builtin_ia32_vfmaddps256(w, x, acc);
  else
#endif
    acc += w * x;
}
#pragma GCC diagnostic pop

SL_VECTOR_HELPER void halves(Vec8& low, Vec8& high, const Vec16& l) {
  low = Vec8{l[0], l[1], l[2], l[3], l[4], l[5], l[6], l[7]};
  high = Vec8{l[8], l[9], l[10], l[11], l[12], l[13], l[14], l[15]};
}
SL_VECTOR_HELPER float sum_lanes(const Vec8& l) { return sum8(l); }
SL_VECTOR_HELPER float sum_lanes(const Vec16& l) {
  Vec8 low, high;
  halves(low, high, l);
  return sum8(low) + sum8(high);
}

// out = [x0+x1, x2+x3, y0+y1, y2+y3, x4+x5, x6+x7, y4+y5, y6+y7]
typedef int Picks __attribute__((vector_size(32)));
SL_VECTOR_HELPER void pair_sums(Vec8& out, const Vec8& x, const Vec8& y) {
  out = __builtin_shuffle(x, y, Picks{0, 2, 8, 10, 4, 6, 12, 14}) + __builtin_shuffle(x, y, Picks{1, 3, 9, 11, 5, 7, 13, 15});
}

// out[k] = sum8(a[k]) for eight vectors at once: the same tree (so the same bits) in a transposed
// order, seven vector additions instead of eight horizontal sums.
SL_VECTOR_HELPER void sums_of_eight(float* out, const Vec8* a) {
  Vec8 ab, cd, ef, gh, t, u;
  pair_sums(ab, a[0], a[1]);
  pair_sums(cd, a[2], a[3]);
  pair_sums(ef, a[4], a[5]);
  pair_sums(gh, a[6], a[7]);
  pair_sums(t, ab, cd);  // lanes 0-3: (l0+l1)+(l2+l3) of a[0..3]; lanes 4-7: (l4+l5)+(l6+l7)
  pair_sums(u, ef, gh);  // the same of a[4..7]
  const Vec8 s = __builtin_shuffle(t, u, Picks{0, 1, 2, 3, 8, 9, 10, 11}) +
                 __builtin_shuffle(t, u, Picks{4, 5, 6, 7, 12, 13, 14, 15});
  std::memcpy(out, &s, sizeof s);
}
SL_VECTOR_HELPER void sums_of_eight(float* out, const Vec16* a) {
  Vec8 low[8], high[8];
  for (int k = 0; k < 8; ++k) halves(low[k], high[k], a[k]);
  float lows[8], highs[8];
  sums_of_eight(lows, low);
  sums_of_eight(highs, high);
  for (int k = 0; k < 8; ++k) out[k] = lows[k] + highs[k];
}

// y[r + c, i + a] for a < NW weight rows and c < NX input rows: NW * NX dot products in registers
// of V, so each step loads NW + NX vectors for NW * NX multiply-adds. Inlined into each version;
// the fixed-size loops unroll into one flat set of accumulators. With kStream the next NW weight
// rows are fetched into L2 meanwhile: weights that stream from memory leave the loop waiting on them
// with the hardware prefetcher alone.
template <class V, bool kFma, bool kStream, int NW, int NX>
__attribute__((always_inline)) inline void dot_block(float* y, const float* W, const float* x, int64_t rows,
                                                     int64_t cols, int64_t i, int64_t r) {
  constexpr int64_t L = sizeof(V) / sizeof(float);
  V acc[NW * NX];
#pragma GCC unroll 16
  for (int k = 0; k < NW * NX; ++k) acc[k] = V{};
  const float* w = W + i * cols;                               // [NW,cols]
  const float* next = i + 2 * NW <= rows ? w + NW * cols : w;  // [NW,cols]
  const float* v = x + r * cols;                               // [NX,cols]
  int64_t j = 0;
  for (; j + L <= cols; j += L) {
    if (kStream)
#pragma GCC unroll 8
      for (int a = 0; a < NW; ++a) __builtin_prefetch(next + a * cols + j, /*read*/ 0, /*L2*/ 2);
    V xs[NX];
#pragma GCC unroll 8
    for (int c = 0; c < NX; ++c) load(xs[c], v + c * cols + j);
#pragma GCC unroll 8
    for (int a = 0; a < NW; ++a) {
      V ws;
      load(ws, w + a * cols + j);
#pragma GCC unroll 8
      for (int c = 0; c < NX; ++c) multiply_add<kFma>(acc[a * NX + c], ws, xs[c]);
    }
  }
  float sums[NW * NX];
  int k = 0;
  if constexpr (NW * NX % 8 == 0)
    for (; k < NW * NX; k += 8) sums_of_eight(sums + k, acc + k);
  for (; k < NW * NX; ++k) sums[k] = sum_lanes(acc[k]);
  for (int a = 0; a < NW; ++a)
    for (int c = 0; c < NX; ++c) {
      float sum = sums[a * NX + c];
      for (int64_t e = j; e < cols; ++e) sum += w[a * cols + e] * v[c * cols + e];
      y[(r + c) * rows + i + a] = sum;
    }
}

// y[r, i] = W[i, :] . x[r, :] for every input row r and output rows i in [begin, end): blocks of
// kW weight rows (read from memory once) times kX input rows, the rows left over in pairs, then alone.
template <class V, bool kFma, bool kStream, int kW, int kX>
__attribute__((always_inline)) inline void dot_blocks_of(float* y, const float* W, const float* x, int64_t R,
                                                         int64_t rows, int64_t cols, int64_t begin, int64_t end) {
  int64_t i = begin;
  for (; i + kW <= end; i += kW) {
    int64_t r = 0;
    for (; r + kX <= R; r += kX) dot_block<V, kFma, kStream, kW, kX>(y, W, x, rows, cols, i, r);
    if (kX > 2)
      for (; r + 2 <= R; r += 2) dot_block<V, kFma, kStream, kW, 2>(y, W, x, rows, cols, i, r);
    for (; r < R; ++r) dot_block<V, kFma, kStream, kW, 1>(y, W, x, rows, cols, i, r);
  }
  for (; i < end; ++i)
    for (int64_t r = 0; r < R; ++r) dot_block<V, kFma, kStream, 1, 1>(y, W, x, rows, cols, i, r);
}

// One input row takes blocks of 8 weight rows, more take 4 x kX: as many as the registers hold
// (sixteen accumulators need x86-64-v4's 32 registers; with 16 they spill). Within one version every
// output is the same sum in the same order whatever the block, so a position's result does not
// depend on how many rows came with it (a speculative round's verifier sees the values plain
// decoding would).
template <class V, bool kFma, bool kStream, int kX>
__attribute__((always_inline)) inline void dot_blocks_with(float* y, const float* W, const float* x, int64_t R,
                                                           int64_t rows, int64_t cols, int64_t begin, int64_t end) {
  if (R == 1) dot_blocks_of<V, kFma, kStream, 8, 1>(y, W, x, R, rows, cols, begin, end);
  else dot_blocks_of<V, kFma, kStream, 4, kX>(y, W, x, R, rows, cols, begin, end);
}

// Weights of at least this many floats (256 KiB) are taken to stream from memory and go through
// StreamV with prefetching; smaller ones to sit in cache and keep 8 lanes without: there prefetching
// costs load slots and 16-lane sums cost more than they save on short rows. The choice depends on
// W's shape only, never on R.
constexpr int64_t kStreamFloats = int64_t(1) << 16;
template <class StreamV, bool kFma, int kX>
__attribute__((always_inline)) inline void dot_blocks_sized(float* y, const float* W, const float* x, int64_t R,
                                                            int64_t rows, int64_t cols, int64_t begin, int64_t end) {
  if (rows * cols >= kStreamFloats) dot_blocks_with<StreamV, kFma, true, kX>(y, W, x, R, rows, cols, begin, end);
  else dot_blocks_with<Vec8, kFma, false, kX>(y, W, x, R, rows, cols, begin, end);
}

// x86-64-v4 streams weights in 64-byte vectors: half the instructions per byte, and more of the
// weights in flight, than 32-byte ones. x86-64-v3 and v4 multiply and add in one instruction.
#if SL_CPU_VERSIONS
__attribute__((target("arch=x86-64-v4"))) void dot_blocks(float* y, const float* W, const float* x, int64_t R,
                                                          int64_t rows, int64_t cols, int64_t begin, int64_t end) {
  dot_blocks_sized<Vec16, true, 4>(y, W, x, R, rows, cols, begin, end);
}
__attribute__((target("arch=x86-64-v3"))) void dot_blocks(float* y, const float* W, const float* x, int64_t R,
                                                          int64_t rows, int64_t cols, int64_t begin, int64_t end) {
  dot_blocks_sized<Vec8, true, 2>(y, W, x, R, rows, cols, begin, end);
}
__attribute__((target("default")))
#endif
void dot_blocks(float* y, const float* W, const float* x, int64_t R, int64_t rows, int64_t cols, int64_t begin,
                int64_t end) {
  dot_blocks_sized<Vec8, false, 2>(y, W, x, R, rows, cols, begin, end);
}
}  // namespace

void matvec(float* y, const float* W, const float* x, int64_t R, int64_t rows, int64_t cols) {
  // Multiply-adds per task, below which handing a task to another thread costs more than it saves.
  // One input row streams each weight once, so even small tasks gain the other core's memory
  // bandwidth; several rows reuse each weight from cache, so a task must carry more arithmetic.
  const int64_t task_macs = R == 1 ? int64_t(1) << 16 : int64_t(1) << 18;
  const int64_t grain = std::max<int64_t>(1, task_macs / std::max<int64_t>(1, R * cols));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    dot_blocks(y, W, x, R, rows, cols, begin, end);
  });
}

namespace {
// A buffer of at least n floats, grown on demand and kept.
float* sized(std::vector<float>& buf, int64_t n) {
  if ((int64_t)buf.size() < n) buf.resize(n);
  return buf.data();
}

// out [R,n] = in [R,m] W^T with W [n,m].
void project(float* out, const float* in, int64_t R, const Tensor& w) {
  matvec(out, w.data_ptr<float>(), in, R, w.size(0), w.size(1));
}

struct Dims {
  int64_t R, T, N, D, H, KV, hd;  // N = R * T positions, each one row of the projections
};

Dims dims_of(const DecoderLayerImpl& layer, const Tensor& x) {
  const auto& a = *layer.self_attn;
  return {x.size(0), x.size(1), x.size(0) * x.size(1), x.size(2), a.n_heads, a.n_kv_heads, a.head_dim};
}

// xb = input_layernorm(x); k, v (and q when asked) projected, rotary applied to q and k; k/v stored
// at slots cache.len[i] .. + T - 1 of each row, and cache.len[i] advances by T.
void project_qkv(DecoderLayerImpl& layer, const float* x, const AttnInputs& in, KVCache& cache, int i, const Dims& d,
                 StepBuffers& buf, bool with_q) {
  auto& attn = *layer.self_attn;
  const int64_t kv_dim = d.KV * d.hd;
  float* xb = sized(buf.xb, d.N * d.D);
  const float* wn = layer.input_layernorm->weight.data_ptr<float>();
  rms_norm_rows(xb, x, wn, d.N, d.D, layer.input_layernorm->eps);
  float* k = sized(buf.k, d.N * kv_dim);
  float* v = sized(buf.v, d.N * kv_dim);
  float* q = with_q ? sized(buf.q, d.N * d.H * d.hd) : nullptr;
  project(k, xb, d.N, attn.k_proj->weight);
  project(v, xb, d.N, attn.v_proj->weight);
  if (with_q) project(q, xb, d.N, attn.q_proj->weight);

  const int64_t slot = cache.len[i], cap = cache.capacity;
  TORCH_CHECK(slot + d.T <= cap, "KV cache full: ", slot + d.T, " > ", cap, " positions");
  const Tensor cos = in.cos.contiguous(), sin = in.sin.contiguous();  // [R,1,T,hd]
  TORCH_CHECK(cos.size(0) == d.R && cos.size(2) == d.T, "rotary tables are not [", d.R, ",1,", d.T, ",hd]");
  float* kc = cache.k[i].data_ptr<float>();  // [R,KV,cap,hd]
  float* vc = cache.v[i].data_ptr<float>();
  for (int64_t n = 0; n < d.N; ++n) {
    const int64_t r = n / d.T, t = n % d.T;
    const float* c = cos.data_ptr<float>() + n * d.hd;
    const float* s = sin.data_ptr<float>() + n * d.hd;
    if (with_q)
      for (int64_t h = 0; h < d.H; ++h) {
        float* qh = q + (n * d.H + h) * d.hd;
        rotate_half_row(qh, qh, c, s, d.hd);
      }
    for (int64_t j = 0; j < d.KV; ++j) {
      float* kr = k + n * kv_dim + j * d.hd;
      const float* vr = v + n * kv_dim + j * d.hd;
      rotate_half_row(kr, kr, c, s, d.hd);
      const int64_t at = ((r * d.KV + j) * cap + slot + t) * d.hd;
      std::copy(kr, kr + d.hd, kc + at);
      std::copy(vr, vr + d.hd, vc + at);
    }
  }
  cache.len[i] = slot + d.T;
}

// One (position, head): o [hd] = softmax(q k^T / sqrt(hd)) v over keys k, v [S,hd] (rows hd apart)
// where visible (strided by visible_step; null = every key); sc [S] is scratch. Cloned like the
// projections' loops, as it runs once per head, layer and new position.
SL_CPU_CLONES void attend_head(float* o, float* sc, const float* q, const float* k, const float* v, const bool* visible,
                               int64_t visible_step, int64_t S, int64_t hd) {
  // Each step a loop without a branch or a float sum across iterations, so that it vectorises; the
  // sums and the maximum keep eight partial lanes.
  const float inv_scale = 1.0f / std::sqrt((float)hd), none = -std::numeric_limits<float>::infinity();
  int64_t s;
  // sc[s] = q . k[s]: the keys [S,hd] as the weights of one input row, in the projections' blocks
  // (eight keys summed at once), so a key's score has the same bits whatever S.
  dot_blocks_of<Vec8, /*kFma=*/false, /*kStream=*/false, 8, 1>(sc, k, q, /*R=*/1, /*rows=*/S, /*cols=*/hd, 0, S);
  for (s = 0; s < S; ++s) sc[s] *= inv_scale;
  if (visible)
    for (s = 0; s < S; ++s) sc[s] = visible[s * visible_step] ? sc[s] : none;
  float lanes[8] = {none, none, none, none, none, none, none, none};
  for (s = 0; s + 8 <= S; s += 8)
    for (int l = 0; l < 8; ++l) lanes[l] = std::max(lanes[l], sc[s + l]);
  for (; s < S; ++s) lanes[0] = std::max(lanes[0], sc[s]);
  const float mx = *std::max_element(lanes, lanes + 8);
  for (s = 0; s < S; ++s) sc[s] = sc[s] == none ? 0.0f : exp_nonpositive(sc[s] - mx);
  std::fill(lanes, lanes + 8, 0.0f);
  for (s = 0; s + 8 <= S; s += 8)
    for (int l = 0; l < 8; ++l) lanes[l] += sc[s + l];
  for (; s < S; ++s) lanes[0] += sc[s];
  const float inv_sum = 1.0f / sum8(lanes);
  // Eight output values at a time, summed over the keys in registers (not through memory).
  int64_t e = 0;
  for (; e + 8 <= hd; e += 8) {
    float acc[8] = {0};
    for (s = 0; s < S; ++s) {
      const float p = sc[s] * inv_sum;
      for (int l = 0; l < 8; ++l) acc[l] += p * v[s * hd + e + l];
    }
    std::copy(acc, acc + 8, o + e);
  }
  for (; e < hd; ++e) {
    float acc = 0;
    for (s = 0; s < S; ++s) acc += sc[s] * inv_sum * v[s * hd + e];
    o[e] = acc;
  }
}

// att [N,H*hd] = softmax(q k^T / sqrt(hd)) v over the S cached keys each position may see.
void attend(const AttnInputs& in, const KVCache& cache, int i, const Dims& d, StepBuffers& buf) {
  const int64_t S = cache.len[i], cap = cache.capacity, rep = d.H / d.KV;
  TORCH_CHECK(!in.mask.defined() || in.mask.size(3) == S, "attention mask has ", in.mask.size(3), " keys, cache ", S);
  TORCH_CHECK(in.mask.defined() || d.T == 1, "several new positions need a causal mask");
  float* att = sized(buf.att, d.N * d.H * d.hd);
  float* scores = sized(buf.scores, d.N * d.H * S);
  const float* q = buf.q.data();
  const float* kc = cache.k[i].data_ptr<float>();
  const float* vc = cache.v[i].data_ptr<float>();
  // mask [R,1,T,S] (often an expanded view: read through its strides); undefined = every key visible.
  const bool* mask = in.mask.defined() ? in.mask.data_ptr<bool>() : nullptr;
  const int64_t mask_row = mask ? in.mask.stride(0) : 0, mask_pos = mask ? in.mask.stride(2) : 0;
  const int64_t mask_key = mask ? in.mask.stride(3) : 0;
  // One (position, head) pair per task, with at least 2^16 key-dimension products per thread
  // (fewer cost more to hand out than they save), so short caches stay on one thread.
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, S * d.hd));
  at::parallel_for(0, d.N * d.H, grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / d.H, h = task % d.H, r = n / d.T, t = n % d.T, j = h / rep;
      const int64_t head = (r * d.KV + j) * cap * d.hd;
      attend_head(att + task * d.hd, scores + task * S, q + task * d.hd, kc + head, vc + head,
                  mask ? mask + r * mask_row + t * mask_pos : nullptr, mask_key, S, d.hd);
    }
  });
}
}  // namespace

AttnInputs fast_rotary(const Tensor& positions, const Tensor& inv_freq) {
  const Tensor pos = positions.to(torch::kInt64).contiguous();  // [B,T]
  const int64_t B = pos.size(0), T = pos.size(1), half = inv_freq.numel(), hd = 2 * half;
  const int64_t* p = pos.data_ptr<int64_t>();
  const float* freq = inv_freq.data_ptr<float>();
  AttnInputs in{torch::empty({B, 1, T, hd}, torch::kFloat32), torch::empty({B, 1, T, hd}, torch::kFloat32), {}};
  float* cos = in.cos.data_ptr<float>();
  float* sin = in.sin.data_ptr<float>();
  for (int64_t n = 0; n < B * T; ++n) {
    float* c = cos + n * hd;
    float* sn = sin + n * hd;
    for (int64_t j = 0; j < half; ++j) {
      const float angle = (float)p[n] * freq[j];
      c[j] = c[j + half] = std::cos(angle);
      sn[j] = sn[j + half] = std::sin(angle);
    }
  }
  return in;
}

AttnInputs fast_attn_inputs(const Tensor& key_mask, int64_t B, int64_t q_start, int64_t T, const Tensor& inv_freq) {
  const int64_t S = q_start + T;
  const Tensor km = key_mask.defined() ? key_mask.to(torch::kInt64).contiguous() : Tensor();  // [B,S]
  const int64_t* keys = km.defined() ? km.data_ptr<int64_t>() : nullptr;
  Tensor pos = torch::empty({B, T}, torch::kInt64);
  int64_t* p = pos.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    // A position counts the real tokens before it: left padding does not move a row's positions.
    int64_t real = 0;
    if (keys)
      for (int64_t s = 0; s < q_start; ++s) real += keys[b * S + s] != 0;
    for (int64_t t = 0; t < T; ++t)
      p[b * T + t] = keys ? std::max<int64_t>(0, (real += keys[b * S + q_start + t] != 0) - 1) : q_start + t;
  }
  AttnInputs in = fast_rotary(pos, inv_freq);
  if (T == 1 && !keys) return in;  // one position sees every cached key
  in.mask = torch::empty({B, 1, T, S}, torch::kBool);
  bool* mask = in.mask.data_ptr<bool>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t s = 0; s < S; ++s)
        mask[(b * T + t) * S + s] = s == q_start + t || (s < q_start + t && (!keys || keys[b * S + s] != 0));
  return in;
}

bool fast_step_applies(const Tensor& x, const KVCache* cache) {
  return cache && x.dim() == 3 && (x.size(1) == 1 || x.size(0) * x.size(1) <= kMatvecRows) && x.device().is_cpu() &&
         x.scalar_type() == torch::kFloat32 && !torch::GradMode::is_enabled() && !cache->k.empty() &&
         cache->k[0].scalar_type() == torch::kFloat32 && cache->k[0].is_contiguous() && cache->v[0].is_contiguous();
}

Tensor fast_layer_step(DecoderLayerImpl& layer, const Tensor& x_in, const AttnInputs& in, KVCache& cache, int i,
                       StepBuffers& buf) {
  const Tensor x = x_in.contiguous();
  const Dims d = dims_of(layer, x);
  const int64_t n = d.N * d.D, I = layer.mlp->gate_proj->weight.size(0);
  Tensor out = torch::empty({d.R, d.T, d.D}, torch::kFloat32);  // [R,T,D]
  float* h = out.data_ptr<float>();
  const float* xp = x.data_ptr<float>();

  // h = x + o_proj(attention(input_layernorm(x)))
  project_qkv(layer, xp, in, cache, i, d, buf, /*with_q=*/true);
  attend(in, cache, i, d, buf);
  float* proj = sized(buf.proj, n);
  project(proj, buf.att.data(), d.N, layer.self_attn->o_proj->weight);
  for (int64_t e = 0; e < n; ++e) h[e] = xp[e] + proj[e];

  // out = h + down_proj(silu(gate_proj(m)) * up_proj(m)), m = post_attention_layernorm(h)
  float* xb = sized(buf.xb, n);
  const float* wn = layer.post_attention_layernorm->weight.data_ptr<float>();
  rms_norm_rows(xb, h, wn, d.N, d.D, layer.post_attention_layernorm->eps);
  float* g = sized(buf.gate, d.N * I);
  float* u = sized(buf.up, d.N * I);
  project(g, xb, d.N, layer.mlp->gate_proj->weight);
  project(u, xb, d.N, layer.mlp->up_proj->weight);
  swiglu_rows(g, g, u, d.N * I);
  project(proj, g, d.N, layer.mlp->down_proj->weight);
  for (int64_t e = 0; e < n; ++e) h[e] += proj[e];
  return out;
}

void fast_layer_kv_step(DecoderLayerImpl& layer, const Tensor& x_in, const AttnInputs& in, KVCache& cache, int i,
                        StepBuffers& buf) {
  const Tensor x = x_in.contiguous();
  project_qkv(layer, x.data_ptr<float>(), in, cache, i, dims_of(layer, x), buf, /*with_q=*/false);
}

}  // namespace sl
