// Progress of a long evaluation on stderr.
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

namespace sl {

// A progress line with ETA on stderr (redrawn in place on a terminal, every ~10% otherwise).
class Progress {
 public:
  Progress(std::string label, int64_t total);
  void add(int64_t n);

 private:
  std::string label_;
  int64_t total_, done_ = 0, shown_ = -1;
  bool tty_;
  std::chrono::steady_clock::time_point t0_;
};

}  // namespace sl
