// Seeded randomness that gives the same numbers on every platform and standard library:
// std::mt19937_64 is specified exactly, std::uniform_int_distribution and std::shuffle are not.
#pragma once
#include <cstdint>
#include <random>
#include <utility>
#include <vector>

namespace sl {

// SplitMix64's finaliser: decorrelates nearby seeds (seed, epoch, step, ...).
uint64_t splitmix64(uint64_t x);

class Rng {
 public:
  explicit Rng(uint64_t seed) : g_(seed) {}
  // Uniform in [0, n): rejecting the lowest 2^64 mod n raw values leaves a multiple of n outcomes.
  uint64_t below(uint64_t n);
  int range(int lo, int hi) { return lo + (int)below((uint64_t)(hi - lo + 1)); }  // inclusive
  template <class T>
  void shuffle(std::vector<T>& v) {  // Fisher-Yates
    for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[below(i)]);
  }

 private:
  std::mt19937_64 g_;
};

// A seeded permutation of 0..n-1.
std::vector<size_t> shuffled_indices(size_t n, uint64_t seed);

}  // namespace sl
