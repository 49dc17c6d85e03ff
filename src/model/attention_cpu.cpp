#include "sortedllama/model/attention_cpu.h"

#include <ATen/Parallel.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "vector_math.h"

namespace sl {

namespace {
typedef float Vec4 __attribute__((vector_size(16)));
typedef float Vec8 __attribute__((vector_size(32)));
typedef float Vec16 __attribute__((vector_size(64)));

// Keys are computed in column tiles that divide kCols; queries in blocks of kRows, each of which
// computes the key columns up to its last visible key, rounded up to kCols.
constexpr int64_t kCols = 32, kRows = 32;

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// A matrix's element (r, p) at a + r * row + p * step: row-major, or a transposed array read in place.
struct Strided {
  const float* a;
  int64_t row, step;
  Strided rows_from(int64_t r) const { return {a + r * row, row, step}; }
};

// C[MR rows, NV vectors] (+)= A[MR, k] B[k, NV vectors]: each element takes one multiply-add per p,
// in order, so its bits do not depend on the tile that computes it. Inlined into each CPU version.
template <class V, int MR, int NV>
__attribute__((always_inline)) inline void tile(float* C, int64_t ldc, Strided A, const float* B, int64_t ldb,
                                                int64_t k, bool accumulate) {
  constexpr int L = sizeof(V) / sizeof(float);
  V c[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      if (accumulate) std::memcpy(&c[r][v], C + r * ldc + v * L, sizeof(V));
      else c[r][v] = V{};
    }
  for (int64_t p = 0; p < k; ++p) {
    V b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) std::memcpy(&b[v], B + p * ldb + v * L, sizeof(V));
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const float a = A.a[r * A.row + p * A.step];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) c[r][v] += a * b[v];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) std::memcpy(C + r * ldc + v * L, &c[r][v], sizeof(V));
}

// C[m, n] (+)= A[m, k] B[k, n], B and C row-major (ldb, ldc), n a multiple of kCols: MR-row tiles
// (the rows left over one at a time) across each B panel of NV vectors, which stays in L1.
template <class V, int MR, int NV>
__attribute__((always_inline)) inline void gemm_tiles(int64_t m, int64_t n, int64_t k, Strided A, const float* B,
                                                      int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  constexpr int64_t W = NV * sizeof(V) / sizeof(float);
  static_assert(kCols % W == 0, "column tiles must divide kCols");
  for (int64_t j = 0; j < n; j += W) {
    int64_t i = 0;
    for (; i + MR <= m; i += MR) tile<V, MR, NV>(C + i * ldc + j, ldc, A.rows_from(i), B + j, ldb, k, accumulate);
    for (; i < m; ++i) tile<V, 1, NV>(C + i * ldc + j, ldc, A.rows_from(i), B + j, ldb, k, accumulate);
  }
}

// As many accumulators as the version's registers hold: 8 x 2 of x86-64-v4's 32, 6 x 2 of AVX2's 16.
#if SL_CPU_VERSIONS
__attribute__((target("arch=x86-64-v4"))) void gemm(int64_t m, int64_t n, int64_t k, Strided A, const float* B,
                                                    int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  gemm_tiles<Vec16, 8, 2>(m, n, k, A, B, ldb, C, ldc, accumulate);
}
__attribute__((target("arch=x86-64-v3"))) void gemm(int64_t m, int64_t n, int64_t k, Strided A, const float* B,
                                                    int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  gemm_tiles<Vec8, 6, 2>(m, n, k, A, B, ldb, C, ldc, accumulate);
}
__attribute__((target("default")))
#endif
void gemm(int64_t m, int64_t n, int64_t k, Strided A, const float* B, int64_t ldb, float* C, int64_t ldc,
          bool accumulate) {
  gemm_tiles<Vec4, 4, 2>(m, n, k, A, B, ldb, C, ldc, accumulate);
}

// p[0, e) = softmax(scores * scale) over the keys s < S that `visible` shows (strided by step;
// null = all), 0 for the others; all 0 when none is visible. p holds the scores on entry.
SL_CPU_CLONES void softmax_visible(float* p, int64_t e, int64_t S, const bool* visible, int64_t step, float scale) {
  const float none = -std::numeric_limits<float>::infinity();
  const int64_t n = std::min(e, S);
  if (!visible)
    for (int64_t s = 0; s < n; ++s) p[s] *= scale;
  else if (step == 1)  // the usual mask: read as bytes, a loop that vectorises (GCC does not vectorise bool loads)
    for (int64_t s = 0; s < n; ++s) p[s] = reinterpret_cast<const uint8_t*>(visible)[s] ? p[s] * scale : none;
  else
    for (int64_t s = 0; s < n; ++s) p[s] = visible[s * step] ? p[s] * scale : none;
  std::fill(p + n, p + e, none);
  const float mx = max_of(p, e);
  if (mx == none) {
    std::fill(p, p + e, 0.0f);
    return;
  }
  for (int64_t s = 0; s < e; ++s) p[s] = p[s] == none ? 0.0f : exp_nonpositive(p[s] - mx);
  const float inv = 1.0f / sum_of(p, e);
  for (int64_t s = 0; s < e; ++s) p[s] *= inv;
}

// g[0, e) = p * (g - sum(g * p)) * scale: the gradient of the scores from that of the probabilities.
SL_CPU_CLONES void softmax_visible_backward(float* g, const float* p, int64_t e, float scale, float* scratch) {
  for (int64_t s = 0; s < e; ++s) scratch[s] = g[s] * p[s];
  const float dot = sum_of(scratch, e);
  for (int64_t s = 0; s < e; ++s) g[s] = p[s] * (g[s] - dot) * scale;
}

bool all_hidden(const bool* eight_keys) {
  uint64_t word;
  std::memcpy(&word, eight_keys, sizeof word);
  return word == 0;
}

// For each batch row b and block of kRows queries, the key columns the block computes:
// ends[b * blocks + blk] = 1 + the last key any of its queries sees, rounded up to kCols.
std::vector<int64_t> block_ends(const MaskView& mask, const AttentionShape& s) {
  const int64_t blocks = (s.T + kRows - 1) / kRows;
  std::vector<int64_t> ends(s.B * blocks);
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      int64_t last = mask.data ? 0 : s.S;
      for (int64_t t = blk * kRows; mask.data && t < std::min(s.T, (blk + 1) * kRows); ++t) {
        const bool* row = mask.data + b * mask.batch + t * mask.query;
        int64_t e = s.S;
        if (mask.key == 1)  // eight keys at a time past the hidden ones (a causal row hides its future)
          while (e - 8 >= last && all_hidden(row + e - 8)) e -= 8;
        while (e > last && !row[(e - 1) * mask.key]) --e;
        last = std::max(last, e);
      }
      ends[b * blocks + blk] = round_up(last, kCols);
    }
  return ends;
}

// What one (batch row, KV head) task needs: its keys packed once for the query heads sharing them.
struct Group {
  const AttentionShape& s;
  int64_t b, j, Sp, hdp;
  const int64_t* block_end;  // per block of kRows queries: the key columns it computes

  Group(const AttentionShape& shape, const std::vector<int64_t>& ends, int64_t task)
      : s(shape), b(task / shape.KV), j(task % shape.KV), Sp(attention_probs_stride(shape.S)),
        hdp(round_up(shape.hd, kCols)), block_end(ends.data() + b * ((shape.T + kRows - 1) / kRows)) {}
  const bool* mask_row(const MaskView& m, int64_t t) const {
    return m.data ? m.data + b * m.batch + t * m.query : nullptr;
  }
  template <class F>
  F* at(const HeadsOf<F>& x, int64_t head, int64_t pos) const {
    return x.data + b * x.batch + head * x.head + pos * x.pos;
  }
  // Keys or values [S, hd] of this group as out[d * Sp + s] (transposed) or out[s * hdp + d], zero-padded.
  void pack(std::vector<float>& out, const HeadsIn& x, bool transposed) const {
    out.assign(transposed ? s.hd * Sp : Sp * hdp, 0.0f);
    for (int64_t t = 0; t < s.S; ++t) {
      const float* row = at(x, j, t);
      for (int64_t d = 0; d < s.hd; ++d) (transposed ? out[d * Sp + t] : out[t * hdp + d]) = row[d];
    }
  }
  // y[pos, d] = buf[pos * hdp + d] for rows positions from t0 (y one head of a [B, heads, len, hd] array).
  void unpack_rows(const HeadsOut& y, int64_t head, int64_t t0, int64_t rows, const float* buf) const {
    for (int64_t r = 0; r < rows; ++r) std::copy(buf + r * hdp, buf + r * hdp + s.hd, at(y, head, t0 + r));
  }
  // y[s, d] = buf[d * Sp + s] for the group's own head of y.
  void unpack_transposed(const HeadsOut& y, const float* buf) const {
    for (int64_t t = 0; t < s.S; ++t) {
      float* row = at(y, j, t);
      for (int64_t d = 0; d < s.hd; ++d) row[d] = buf[d * Sp + t];
    }
  }
};

float scale_of(int64_t hd) { return (float)(1.0 / std::sqrt((double)hd)); }

void forward_group(const Group& g, HeadsOut out, float* probs, HeadsIn q, HeadsIn k, HeadsIn v, MaskView mask) {
  const AttentionShape& s = g.s;
  const int64_t rep = s.H / s.KV, Sp = g.Sp, hdp = g.hdp;
  std::vector<float> kt, vp, o(kRows * hdp), scratch(probs ? 0 : kRows * Sp);
  g.pack(kt, k, /*transposed=*/true);  // [hd, Sp]
  g.pack(vp, v, /*transposed=*/false);  // [Sp, hdp]
  const float scale = scale_of(s.hd);
  for (int64_t h = g.j * rep; h < (g.j + 1) * rep; ++h)
    for (int64_t t0 = 0, blk = 0; t0 < s.T; t0 += kRows, ++blk) {
      const int64_t rows = std::min(kRows, s.T - t0), e = g.block_end[blk];
      float* P = probs ? probs + ((g.b * s.H + h) * s.T + t0) * Sp : scratch.data();  // [rows, Sp]
      gemm(rows, e, s.hd, {g.at(q, h, t0), q.pos, 1}, kt.data(), Sp, P, Sp, false);  // scores
      for (int64_t r = 0; r < rows; ++r) softmax_visible(P + r * Sp, e, s.S, g.mask_row(mask, t0 + r), mask.key, scale);
      gemm(rows, hdp, e, {P, Sp, 1}, vp.data(), hdp, o.data(), hdp, false);  // P v
      g.unpack_rows(out, h, t0, rows, o.data());
    }
}

void backward_group(const Group& g, HeadsOut dq, HeadsOut dk, HeadsOut dv, HeadsIn dout, HeadsIn q, HeadsIn k,
                    HeadsIn v, const float* probs) {
  const AttentionShape& s = g.s;
  const int64_t rep = s.H / s.KV, Sp = g.Sp, hdp = g.hdp;
  std::vector<float> kt, kp, vt, dkt(s.hd * Sp, 0.0f), dvt(s.hd * Sp, 0.0f), dp(kRows * Sp), dqb(kRows * hdp), tmp(Sp);
  g.pack(kt, k, /*transposed=*/true);   // [hd, Sp]
  g.pack(kp, k, /*transposed=*/false);  // [Sp, hdp]
  g.pack(vt, v, /*transposed=*/true);   // [hd, Sp]
  const float scale = scale_of(s.hd);
  for (int64_t h = g.j * rep; h < (g.j + 1) * rep; ++h)
    for (int64_t t0 = 0, blk = 0; t0 < s.T; t0 += kRows, ++blk) {
      const int64_t rows = std::min(kRows, s.T - t0), e = g.block_end[blk];
      const float* P = probs + ((g.b * s.H + h) * s.T + t0) * Sp;  // [rows, Sp]
      const float* dO = g.at(dout, h, t0);
      const float* Q = g.at(q, h, t0);
      gemm(rows, e, s.hd, {dO, dout.pos, 1}, vt.data(), Sp, dp.data(), Sp, false);  // dP = dO v^T
      for (int64_t r = 0; r < rows; ++r) softmax_visible_backward(dp.data() + r * Sp, P + r * Sp, e, scale, tmp.data());
      gemm(rows, hdp, e, {dp.data(), Sp, 1}, kp.data(), hdp, dqb.data(), hdp, false);  // dQ = dS k
      g.unpack_rows(dq, h, t0, rows, dqb.data());
      gemm(s.hd, e, rows, {dO, 1, dout.pos}, P, Sp, dvt.data(), Sp, true);        // dV^T += dO^T P
      gemm(s.hd, e, rows, {Q, 1, q.pos}, dp.data(), Sp, dkt.data(), Sp, true);    // dK^T += Q^T dS
    }
  g.unpack_transposed(dk, dkt.data());
  g.unpack_transposed(dv, dvt.data());
}
}  // namespace

int64_t attention_probs_stride(int64_t S) { return round_up(S, kCols); }

void attention_forward(HeadsOut out, float* probs, HeadsIn q, HeadsIn k, HeadsIn v, MaskView mask,
                       const AttentionShape& s) {
  const std::vector<int64_t> ends = block_ends(mask, s);
  at::parallel_for(0, s.B * s.KV, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) forward_group(Group(s, ends, task), out, probs, q, k, v, mask);
  });
}

void attention_backward(HeadsOut dq, HeadsOut dk, HeadsOut dv, HeadsIn dout, HeadsIn q, HeadsIn k, HeadsIn v,
                        const float* probs, MaskView mask, const AttentionShape& s) {
  const std::vector<int64_t> ends = block_ends(mask, s);
  at::parallel_for(0, s.B * s.KV, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task)
      backward_group(Group(s, ends, task), dq, dk, dv, dout, q, k, v, probs);
  });
}

}  // namespace sl
