#include "sortedllama/train/schedule.h"

#include <algorithm>
#include <cmath>

namespace sl {

double lr_at(int64_t step, int64_t total, int64_t warmup, double lr, double min_ratio) {
  if (step < warmup) return lr * (double)step / (double)std::max<int64_t>(1, warmup);
  const double progress = (double)(step - warmup) / (double)std::max<int64_t>(1, total - warmup);
  const double cosine = 0.5 * (1.0 + std::cos(M_PI * std::min(1.0, progress)));
  return lr * (min_ratio + (1.0 - min_ratio) * cosine);
}

Schedule Schedule::plan(int64_t examples, int64_t batch_size, int64_t grad_accum, int64_t epochs, int64_t max_steps,
                        double warmup_ratio) {
  Schedule s;
  s.per_epoch = (examples + batch_size - 1) / batch_size;
  s.total = max_steps > 0 ? max_steps : (epochs * s.per_epoch + grad_accum - 1) / grad_accum;
  s.warmup = (int64_t)std::ceil(warmup_ratio * (double)s.total);
  return s;
}

}  // namespace sl
