// The arithmetic of the training recipes beyond the paper's uniform sorted loss: exit loss scales,
// exit curricula (LayerSkip) and layer dropout rates. Pure functions of their arguments (seed and
// step included), so a resumed run repeats an uninterrupted one and tests check the numbers.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace sl {

enum class ExitScale { kUniform, kLinear, kSqrt, kInverse, kLast };
enum class Curriculum { kNone, kRotational, kGradual };
enum class DropSchedule { kLinear, kExp };

// One weight per exit (exits: layer numbers, ascending), summing to 1. uniform: 1/n (the paper);
// linear: ∝ k (LITE's depth-weighted aggregate); sqrt: ∝ √k; inverse: ∝ 1/k; last: `last_share` on
// the deepest exit and the rest split evenly over the others (everything on it when it is alone).
std::vector<double> exit_scale_weights(ExitScale scale, const std::vector<int>& exits, double last_share);

// The exits (indices into an ascending exit list of n) that carry loss at 0-based `step` of `total`;
// the deepest is always among them. rotational: index i when (i + step + seed) % period == 0, so
// every period-th exit trains and the subset shifts by one exit per step; gradual: the deepest
// 1 + step * n / total exits (one more every total / n steps, from the last layer down); none: all.
std::vector<size_t> curriculum_exits(Curriculum c, size_t n, int64_t step, int64_t total, uint64_t seed, int64_t period);

// Probability that a sample skips 0-based layer l of L: max_rate * D(l) with D(l) = l / (L - 1)
// (linear) or 2^(l / (L - 1)) - 1 (exp, LayerSkip's): 0 for the first layer, max_rate for the last.
std::vector<double> layer_drop_rates(double max_rate, DropSchedule schedule, int n_layers);

// Whether sample `sample` of global micro-batch `micro` skips `layer`: a hash of the four, not a
// random stream, so every rank, batch split and resumed run draws the same.
bool layer_dropped(double rate, uint64_t seed, int64_t micro, int64_t sample, int layer);

}  // namespace sl
