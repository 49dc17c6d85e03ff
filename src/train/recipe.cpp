#include "sortedllama/train/recipe.h"

#include <cmath>
#include <numeric>

#include "sortedllama/util/rng.h"

namespace sl {

std::vector<double> exit_scale_weights(ExitScale scale, const std::vector<int>& exits, double last_share) {
  const size_t n = exits.size();
  std::vector<double> w(n, 1.0);
  for (size_t i = 0; i < n; ++i) {
    const double k = exits[i];
    if (scale == ExitScale::kLinear) w[i] = k;
    if (scale == ExitScale::kSqrt) w[i] = std::sqrt(k);
    if (scale == ExitScale::kInverse) w[i] = 1.0 / k;
    if (scale == ExitScale::kLast) w[i] = n == 1 ? 1.0 : i + 1 == n ? last_share : (1.0 - last_share) / (double)(n - 1);
  }
  const double sum = std::accumulate(w.begin(), w.end(), 0.0);
  for (double& x : w) x /= sum;
  return w;
}

std::vector<size_t> curriculum_exits(Curriculum c, size_t n, int64_t step, int64_t total, uint64_t seed, int64_t period) {
  std::vector<size_t> idx;
  for (size_t i = 0; i < n; ++i) {
    bool on = true;
    if (c == Curriculum::kRotational) on = (i + (uint64_t)step + seed) % (uint64_t)period == 0;
    if (c == Curriculum::kGradual) on = n - i <= 1 + (size_t)(step * (int64_t)n / std::max<int64_t>(1, total));
    if (on || i + 1 == n) idx.push_back(i);
  }
  return idx;
}

std::vector<double> layer_drop_rates(double max_rate, DropSchedule schedule, int n_layers) {
  std::vector<double> p(n_layers);
  for (int l = 0; l < n_layers; ++l) {
    const double depth = n_layers == 1 ? 1.0 : (double)l / (n_layers - 1);  // 0 first layer .. 1 last
    p[l] = max_rate * (schedule == DropSchedule::kExp ? std::exp2(depth) - 1.0 : depth);
  }
  return p;
}

bool layer_dropped(double rate, uint64_t seed, int64_t micro, int64_t sample, int layer) {
  uint64_t h = splitmix64(seed ^ 0x4c41594552445250ULL);  // a stream of its own, apart from data order and init
  for (const uint64_t x : {(uint64_t)micro, (uint64_t)sample, (uint64_t)layer}) h = splitmix64(h ^ x);
  return (double)(h >> 11) * 0x1.0p-53 < rate;
}

}  // namespace sl
