#include "sortedllama/util/rng.h"

#include <numeric>

namespace sl {

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

uint64_t Rng::below(uint64_t n) {
  const uint64_t cut = (0 - n) % n;
  for (;;)
    if (uint64_t r = g_(); r >= cut) return r % n;
}

std::vector<size_t> shuffled_indices(size_t n, uint64_t seed) {
  std::vector<size_t> idx(n);
  std::iota(idx.begin(), idx.end(), size_t{0});
  Rng(seed).shuffle(idx);
  return idx;
}

}  // namespace sl
