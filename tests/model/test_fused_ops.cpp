// The fused CPU ops against the same math in float64 tensor ops, values and gradients.
#include <gtest/gtest.h>

#include <limits>

#include "sortedllama/model/fused_ops.h"
#include "test_util.h"

using torch::Tensor;

namespace {
Tensor f64(const Tensor& x) { return x.detach().to(torch::kFloat64).requires_grad_(true); }

// x [..., D] relative to its largest magnitude: gradients of different scales share one tolerance.
double rel_diff(const Tensor& got, const Tensor& want) {
  return sl_test::max_abs_diff(got, want) / std::max(1.0, want.abs().max().item<double>());
}

// softmax(q k^T / sqrt(hd)) v in float64 ops; a query that sees no key gets 0.
Tensor reference_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask) {
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), hd = q.size(3), rep = H / k.size(1);
  Tensor scores = torch::matmul(q, k.repeat_interleave(rep, 1).transpose(-2, -1)) / std::sqrt((double)hd);
  if (mask.defined()) scores = scores.masked_fill(mask.logical_not(), -std::numeric_limits<double>::infinity());
  Tensor p = scores.softmax(-1);
  if (mask.defined()) p = p.masked_fill(mask.logical_not(), 0.0);  // rows with no key: 0, not NaN
  return torch::matmul(p, v.repeat_interleave(rep, 1)).transpose(1, 2).reshape({B, T, H * hd});
}

struct AttentionCase {
  int64_t B, H, KV, T, S, hd;
  std::string mask;  // "causal" (right padding), "cache" (left padding, S > T), "random", "none"
};

// mask [B,1,T,S] for the case; query t sits at key S - T + t.
Tensor mask_of(const AttentionCase& c) {
  const int64_t off = c.S - c.T;
  Tensor keys = torch::arange(c.S).view({1, 1, 1, c.S}), slot = (torch::arange(c.T) + off).view({1, 1, c.T, 1});
  Tensor m = keys <= slot;  // causal
  if (c.mask == "causal") m = m.logical_and(keys < torch::tensor({c.S, c.S - 7}).view({c.B, 1, 1, 1}));
  if (c.mask == "cache") m = m.logical_and(keys >= torch::tensor({0L, 3L}).view({c.B, 1, 1, 1}));
  if (c.mask == "random") m = torch::rand({c.B, 1, c.T, c.S}) < 0.5;
  m = m.logical_or(keys == slot).expand({c.B, 1, c.T, c.S}).contiguous();
  if (c.mask == "random") m.select(2, 4).fill_(false);  // a query that sees nothing
  return m;
}

struct AttentionRun {
  Tensor out, dq, dk, dv;
};

// q laid out as a projection gives it ([B,T,H,hd] memory), k and v as the first S slots of a cache.
AttentionRun run_fused(const Tensor& q0, const Tensor& k0, const Tensor& v0, const Tensor& mask, const Tensor& gout) {
  Tensor q = q0.transpose(1, 2).contiguous().detach().requires_grad_(true);  // [B,T,H,hd]
  const int64_t S = k0.size(2);
  Tensor kc = torch::zeros({k0.size(0), k0.size(1), S + 5, k0.size(3)}), vc = torch::zeros_like(kc);
  kc.narrow(2, 0, S).copy_(k0);
  vc.narrow(2, 0, S).copy_(v0);
  kc.requires_grad_(true);
  vc.requires_grad_(true);
  Tensor out = sl::fused_attention(q.transpose(1, 2), kc.narrow(2, 0, S), vc.narrow(2, 0, S), mask);
  out.backward(gout);
  return {out.detach(), q.grad().transpose(1, 2), kc.grad().narrow(2, 0, S), vc.grad().narrow(2, 0, S)};
}
}  // namespace

TEST(FusedOps, AttentionEqualsTheTensorMathWithItsGradients) {
  const std::vector<AttentionCase> cases = {
      {2, 4, 4, 37, 37, 8, "causal"}, {2, 4, 2, 70, 70, 12, "causal"}, {2, 4, 1, 5, 40, 32, "cache"},
      {2, 6, 3, 70, 70, 80, "random"}, {2, 2, 2, 3, 9, 8, "none"},    {2, 4, 2, 33, 100, 16, "cache"}};
  for (const auto& c : cases) {
    SCOPED_TRACE(c.mask + " T " + std::to_string(c.T) + " S " + std::to_string(c.S) + " hd " + std::to_string(c.hd) +
                 " H/KV " + std::to_string(c.H) + "/" + std::to_string(c.KV));
    torch::manual_seed(c.T * 7 + c.hd);
    Tensor q = torch::randn({c.B, c.H, c.T, c.hd}) * 2, k = torch::randn({c.B, c.KV, c.S, c.hd}) * 2;
    Tensor v = torch::randn({c.B, c.KV, c.S, c.hd}), gout = torch::randn({c.B, c.T, c.H * c.hd});
    Tensor mask = c.mask == "none" ? Tensor() : mask_of(c);
    const AttentionRun got = run_fused(q, k, v, mask, gout);

    Tensor q64 = f64(q), k64 = f64(k), v64 = f64(v);
    Tensor want = reference_attention(q64, k64, v64, mask);
    want.backward(gout.to(torch::kFloat64));
    EXPECT_LT(rel_diff(got.out, want), 2e-6);
    EXPECT_LT(rel_diff(got.dq, q64.grad()), 2e-6);
    EXPECT_LT(rel_diff(got.dk, k64.grad()), 2e-6);
    EXPECT_LT(rel_diff(got.dv, v64.grad()), 2e-6);
    if (c.mask == "random") {  // query 4 sees no key: no output, and no gradient to its q
      EXPECT_EQ(got.out.select(1, 4).abs().sum().item<float>(), 0.0f);
      EXPECT_EQ(got.dq.select(2, 4).abs().sum().item<float>(), 0.0f);
    }

    torch::NoGradGuard no_grad;  // inference keeps nothing and computes the same
    Tensor plain = sl::fused_attention(q, k, v, mask);
    EXPECT_TRUE(torch::equal(plain, got.out));
    if (c.mask == "cache") {  // keys hidden from every query of row 1 weigh exactly 0
      Tensor far = v.clone();
      far[1].narrow(1, 0, 3).fill_(1e30);
      EXPECT_TRUE(torch::equal(sl::fused_attention(q, k, far, mask), plain));
    }
  }
}

TEST(FusedOps, AttentionGradientsAreTheSameBitsOnAnyNumberOfThreads) {
  const AttentionCase c{3, 4, 2, 45, 45, 16, "random"};
  torch::manual_seed(3);
  Tensor q = torch::randn({c.B, c.H, c.T, c.hd}), k = torch::randn({c.B, c.KV, c.S, c.hd});
  Tensor v = torch::randn({c.B, c.KV, c.S, c.hd}), gout = torch::randn({c.B, c.T, c.H * c.hd});
  Tensor mask = torch::rand({c.B, 1, c.T, c.S}) < 0.7;
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  const AttentionRun one = run_fused(q, k, v, mask, gout);
  at::set_num_threads(2);
  const AttentionRun two = run_fused(q, k, v, mask, gout);
  at::set_num_threads(threads);
  EXPECT_TRUE(torch::equal(one.out, two.out));
  EXPECT_TRUE(torch::equal(one.dq, two.dq));
  EXPECT_TRUE(torch::equal(one.dk, two.dk));
  EXPECT_TRUE(torch::equal(one.dv, two.dv));
}

TEST(FusedOps, RmsNormEqualsTheTensorMathWithItsGradients) {
  torch::manual_seed(2);
  for (int64_t rows : {3L, 150L}) {  // one block of rows for the weight's gradient, and three
    Tensor x = torch::randn({2, rows, 24}) * 4, w = torch::rand({24}) + 0.5, gy = torch::randn({2, rows, 24});
    Tensor x64 = f64(x), w64 = f64(w);
    Tensor want = w64 * (x64 * torch::rsqrt(x64.pow(2).mean(-1, true) + 1e-5));
    want.backward(gy.to(torch::kFloat64));

    Tensor xg = x.clone().requires_grad_(true), wg = w.clone().requires_grad_(true);
    Tensor got = sl::fused_rms_norm(xg, wg, 1e-5);
    got.backward(gy);
    EXPECT_LT(rel_diff(got, want), 1e-6);
    EXPECT_LT(rel_diff(xg.grad(), x64.grad()), 1e-6);
    EXPECT_LT(rel_diff(wg.grad(), w64.grad()), 1e-6);

    torch::NoGradGuard no_grad;  // a few rows without autograd (a decoding step's final norm): the same values
    EXPECT_TRUE(torch::equal(sl::fused_rms_norm(x, w, 1e-5), got.detach()));
  }
}

TEST(FusedOps, RotaryEqualsTheTensorMathWithItsGradient) {
  torch::manual_seed(4);
  const int64_t B = 2, T = 5, heads = 3, hd = 8;
  // Tables whose halves differ, so that the test sees which half each product takes.
  Tensor x = torch::randn({B, T, heads, hd}), cos = torch::randn({B, 1, T, hd}), sin = torch::randn({B, 1, T, hd});
  Tensor gy = torch::randn({B, T, heads, hd});
  Tensor x64 = f64(x), c = cos.to(torch::kFloat64).transpose(1, 2), s = sin.to(torch::kFloat64).transpose(1, 2);
  auto halves = x64.chunk(2, -1);
  Tensor want = x64 * c + torch::cat({-halves[1], halves[0]}, -1) * s;
  want.backward(gy.to(torch::kFloat64));

  Tensor xg = x.clone().requires_grad_(true);
  Tensor got = sl::fused_rotary(xg, cos, sin);
  got.backward(gy);
  EXPECT_LT(rel_diff(got, want), 1e-6);
  EXPECT_LT(rel_diff(xg.grad(), x64.grad()), 1e-6);
}

TEST(FusedOps, SwigluEqualsTheTensorMathWithItsGradients) {
  torch::manual_seed(5);
  Tensor g = torch::randn({3, 1500}) * 4, u = torch::randn({3, 1500}), gy = torch::randn({3, 1500});
  g[0].narrow(0, 0, 6).copy_(torch::tensor({-100.0f, -88.0f, -20.0f, 0.0f, 20.0f, 100.0f}));
  Tensor g64 = f64(g), u64 = f64(u);
  Tensor want = torch::silu(g64) * u64;
  want.backward(gy.to(torch::kFloat64));

  Tensor gg = g.clone().requires_grad_(true), ug = u.clone().requires_grad_(true);
  Tensor got = sl::fused_swiglu(gg, ug);
  got.backward(gy);
  EXPECT_LT(rel_diff(got, want), 1e-6);
  EXPECT_LT(rel_diff(gg.grad(), g64.grad()), 1e-6);
  EXPECT_LT(rel_diff(ug.grad(), u64.grad()), 1e-6);
}

TEST(FusedOps, Bf16InputsComputeInFp32AndRoundOnce) {
  torch::manual_seed(8);
  const auto bf16 = torch::kBFloat16;
  Tensor q = torch::randn({2, 4, 9, 8}).to(bf16), k = torch::randn({2, 2, 9, 8}).to(bf16), v = torch::randn({2, 2, 9, 8}).to(bf16);
  Tensor mask = torch::ones({9, 9}, torch::kBool).tril().view({1, 1, 9, 9}).expand({2, 1, 9, 9});
  Tensor x = torch::randn({2, 9, 16}).to(bf16), w = (torch::rand({16}) + 0.5).to(bf16);
  Tensor cos = torch::randn({2, 1, 9, 8}).to(bf16), sin = torch::randn({2, 1, 9, 8}).to(bf16);
  auto f32 = [](const Tensor& t) { return t.to(torch::kFloat32); };
  auto same = [&](const Tensor& got, const Tensor& want) {
    EXPECT_EQ(got.scalar_type(), bf16);
    EXPECT_TRUE(torch::equal(got, want.to(bf16)));
  };
  same(sl::fused_attention(q, k, v, mask), sl::fused_attention(f32(q), f32(k), f32(v), mask));
  same(sl::fused_rms_norm(x, w, 1e-5), sl::fused_rms_norm(f32(x), f32(w), 1e-5));
  same(sl::fused_swiglu(x, x * 2), sl::fused_swiglu(f32(x), f32(x * 2)));
  same(sl::fused_rotary(q.transpose(1, 2), cos, sin), sl::fused_rotary(f32(q.transpose(1, 2)), f32(cos), f32(sin)));

  Tensor qg = q.clone().requires_grad_(true), xg = x.clone().requires_grad_(true), wg = w.clone().requires_grad_(true);
  (sl::fused_attention(qg, k, v, mask).sum() + sl::fused_rms_norm(xg, wg, 1e-5).sum()).backward();
  EXPECT_EQ(qg.grad().scalar_type(), bf16);
  EXPECT_GT(qg.grad().abs().sum().item<float>(), 0.0f);
  EXPECT_GT(wg.grad().abs().sum().item<float>(), 0.0f);
}
