#include "sortedllama/eval/progress.h"

#include <unistd.h>

#include <iostream>

#include <fmt/format.h>

namespace sl {

Progress::Progress(std::string label, int64_t total)
    : label_(std::move(label)), total_(std::max<int64_t>(total, 1)), tty_(isatty(STDERR_FILENO)),
      t0_(std::chrono::steady_clock::now()) {}

void Progress::add(int64_t n) {
  done_ = std::min(total_, done_ + n);
  const int64_t pct = 100 * done_ / total_;
  if (!tty_ && pct / 10 == shown_ / 10 && done_ < total_) return;
  if (tty_ && pct == shown_ && done_ < total_) return;
  shown_ = pct;
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  const double eta = done_ ? secs * (double)(total_ - done_) / (double)done_ : 0.0;
  const int bar = (int)(20 * done_ / total_);
  std::string line = fmt::format("{} [{}{}] {}/{} {:3d}% {:.0f}s ETA {:.0f}s", label_, std::string(bar, '#'),
                                 std::string(20 - bar, '.'), done_, total_, pct, secs, eta);
  if (tty_) std::cerr << "\r" << line << (done_ == total_ ? "\n" : "") << std::flush;
  else std::cerr << line << "\n";
}

}  // namespace sl
