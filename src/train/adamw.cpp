#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

#include "sortedllama/train/optimizer.h"

namespace sl {

using torch::Tensor;

AdamWStep AdamWStep::of(const AdamWConfig& c, double lr, double weight_decay, int64_t step, double grad_scale) {
  const double bc1 = 1 - std::pow(c.beta1, (double)step), bc2 = 1 - std::pow(c.beta2, (double)step);
  return {(float)c.beta1, (float)(1 - c.beta1), (float)c.beta2,  (float)(1 - c.beta2),
          (float)c.eps,   (float)(1 - lr * weight_decay),          (float)(lr / bc1), (float)std::sqrt(bc2),
          (float)grad_scale};
}

namespace {
constexpr int64_t kChunk = 1 << 14;  // elements per task

bool plain_cpu(const Tensor& t) { return t.device().is_cpu() && t.scalar_type() == torch::kFloat32 && t.is_contiguous(); }
}  // namespace

void adamw_update(Tensor& p, const Tensor& g, Tensor& m, Tensor& v, const AdamWStep& a) {
  if (!(plain_cpu(p) && plain_cpu(g) && plain_cpu(m) && plain_cpu(v))) {
    const Tensor grad = a.grad_scale == 1.0f ? g : g * a.grad_scale;
    p.mul_(a.decay);
    m.mul_(a.beta1).add_(grad, a.one_minus_beta1);
    v.mul_(a.beta2).addcmul_(grad, grad, a.one_minus_beta2);
    p.addcdiv_(m, v.sqrt() / a.sqrt_bc2 + a.eps, -a.step_size);
    return;
  }
  float *pp = p.data_ptr<float>(), *mp = m.data_ptr<float>(), *vp = v.data_ptr<float>();
  const float* gp = g.data_ptr<float>();
  at::parallel_for(0, p.numel(), kChunk, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float grad = gp[i] * a.grad_scale;
      const float mi = mp[i] * a.beta1 + grad * a.one_minus_beta1;
      const float vi = vp[i] * a.beta2 + grad * grad * a.one_minus_beta2;
      mp[i] = mi;
      vp[i] = vi;
      pp[i] = pp[i] * a.decay - a.step_size * mi / (std::sqrt(vi) / a.sqrt_bc2 + a.eps);
    }
  });
}

Tensor sum_of_squares(const Tensor& g) {
  if (!plain_cpu(g)) return g.to(torch::kFloat64).pow(2).sum().reshape({1}).to(torch::kCPU);
  // Fixed chunks summed in order: the same bits on any number of threads.
  const int64_t n = g.numel(), chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> part(chunks, 0.0);
  const float* gp = g.data_ptr<float>();
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      double sum = 0;
      for (int64_t i = c * kChunk; i < std::min(n, (c + 1) * kChunk); ++i) sum += (double)gp[i] * gp[i];
      part[c] = sum;
    }
  });
  double total = 0;
  for (double x : part) total += x;
  return torch::tensor({total}, torch::kFloat64);
}

}  // namespace sl
