// Process-wide set-up: intra-op threads, BLAS check, logging, device choice.
#pragma once
#include <string>
#include <utility>
#include <vector>

namespace sl {

// Sets libtorch's intra-op threads (and OpenBLAS's) to n, or to the core count when n <= 0
// (libtorch defaults to 1 thread here). Returns the count in use.
int init_threads(int n);

// Names the BLAS libtorch's matrix products resolve to, e.g. "OpenBLAS 0.3.21 ... (/usr/lib/...)"
// or "reference BLAS (/usr/lib/.../blas/libblas.so.3) -- ~15x slower, install libopenblas0-pthread".
std::string blas_description();
bool blas_is_optimized();

// OpenBLAS kernel choice. Debian's OpenBLAS 0.3.21 does not recognise recent Intel Xeons and falls
// back to its SSE3 "Prescott" kernels, several times slower than the AVX2/AVX-512 ones the CPU can
// run. OpenBLAS reads OPENBLAS_CORETYPE once, when it loads, so a better kernel means restarting
// the process with it set; the restarted process checks the kernel's results on this CPU before
// using it (old OpenBLAS builds give wrong results with some forced kernels).
struct CpuFeatures {
  bool avx2 = false, fma = false, avx512f = false, avx512bw = false, avx512dq = false, avx512vl = false;
  static CpuFeatures of_this_cpu();
};
// The OPENBLAS_CORETYPE to use instead of OpenBLAS's own choice `detected`, or "" to keep it.
std::string better_blas_core(const std::string& detected, const CpuFeatures& cpu);
// OpenBLAS's kernel name ("Haswell", "SkylakeX", ...); "" when the BLAS is not OpenBLAS.
std::string blas_core_name();

// Called first in main. Returns true when the environment was changed for a kernel choice (a
// better kernel to try, or a rejected one to drop) and the process must restart for it to apply.
// A user's OPENBLAS_CORETYPE is never touched.
bool prepare_blas_kernel();
// How sortedllama chose the kernel in use, for --version and the log; "" when it did not (OpenBLAS's
// own choice, or the user's OPENBLAS_CORETYPE).
std::string blas_kernel_note();
// Whether libtorch's fp32 matrix and matrix-vector products agree with plain loops on this CPU.
bool blas_products_correct();

// The variables (name, value) that libgomp and OpenBLAS should see when they load for `subcommand`
// ("" for none), leaving out any the user has set. Two pools of threads share the cores, and each
// one's idle threads spinning takes them from the other's work:
// - training and evaluation: OMP_WAIT_POLICY=PASSIVE. libgomp's default spins idle OpenMP threads,
//   which starves OpenBLAS's own threads: training steps took 2x as long on 2 cores.
// - decoding (generate, calibrate, tune): OpenMP keeps its default. A decoding step runs about a
//   hundred short parallel regions per token, and waking passive threads for each cost a fifth of
//   the speed. OpenBLAS's idle threads instead stop spinning after 2^18 cycles, not its default
//   2^28 (about 0.1 s after each product and after they start): the first prompt's prefill took
//   20x as long as the next ones' while they spun.
std::vector<std::pair<std::string, std::string>> thread_env_for(const std::string& subcommand);

// "sortedllama 0.1.0 (libtorch 1.13.1, BLAS: OpenBLAS ..., 2 threads, OpenMP wait PASSIVE, cpu)"
std::string version_string();

}  // namespace sl
