// Process-wide set-up: intra-op threads, BLAS check, logging, device choice.
#pragma once
#include <string>

namespace sl {

// Sets libtorch's intra-op threads (and OpenBLAS's) to n, or to the core count when n <= 0
// (libtorch defaults to 1 thread here). Returns the count in use.
int init_threads(int n);

// Names the BLAS libtorch's matrix products resolve to, e.g. "OpenBLAS 0.3.21 ... (/usr/lib/...)"
// or "reference BLAS (/usr/lib/.../blas/libblas.so.3) -- ~15x slower, install libopenblas0-pthread".
std::string blas_description();
bool blas_is_optimized();

// "sortedllama 0.1.0 (libtorch 1.13.1, OpenBLAS ..., 2 threads, cpu)"
std::string version_string();

}  // namespace sl
