// How many optimizer steps a run takes and the learning rate at each.
#pragma once
#include <cstdint>

namespace sl {

// Linear warmup from 0, then cosine decay to lr * min_ratio (HF's cosine schedule with a floor).
double lr_at(int64_t step, int64_t total, int64_t warmup, double lr, double min_ratio);

// A step is grad_accum micro-batches; micro-batch m is batch (m % per_epoch) of epoch
// (m / per_epoch), so epochs cycle when max_steps asks for more than `epochs` of them.
struct Schedule {
  int64_t per_epoch = 0;  // micro-batches per epoch
  int64_t total = 0;      // optimizer steps
  int64_t warmup = 0;     // of them, warmup steps
  static Schedule plan(int64_t examples, int64_t batch_size, int64_t grad_accum, int64_t epochs, int64_t max_steps,
                       double warmup_ratio);
};

}  // namespace sl
