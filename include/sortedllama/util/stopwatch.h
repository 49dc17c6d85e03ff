// Wall-clock intervals in milliseconds (steady clock).
#pragma once
#include <chrono>

namespace sl {

class Stopwatch {
 public:
  Stopwatch() : t0_(std::chrono::steady_clock::now()) {}
  void restart() { t0_ = std::chrono::steady_clock::now(); }
  double ms() const { return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0_).count(); }
  double seconds() const { return ms() / 1000.0; }

 private:
  std::chrono::steady_clock::time_point t0_;
};

}  // namespace sl
