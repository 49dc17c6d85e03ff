#include "sortedllama/runtime.h"

#include <dlfcn.h>

#include <cstdlib>
#include <thread>

#include <torch/torch.h>

namespace sl {

namespace {
// Resolves a BLAS symbol as libtorch's own calls would and names the library that holds it.
std::string library_of(const char* symbol) {
  void* sym = dlsym(RTLD_DEFAULT, symbol);
  Dl_info info{};
  if (!sym || !dladdr(sym, &info) || !info.dli_fname) return "";
  char* real = realpath(info.dli_fname, nullptr);
  std::string path = real ? real : info.dli_fname;
  std::free(real);
  return path;
}
}  // namespace

bool blas_is_optimized() {
  return dlsym(RTLD_DEFAULT, "openblas_get_config") != nullptr || dlsym(RTLD_DEFAULT, "mkl_get_version") != nullptr;
}

std::string blas_description() {
  std::string lib = library_of("sgemm_");
  if (auto cfg = reinterpret_cast<const char* (*)()>(dlsym(RTLD_DEFAULT, "openblas_get_config")))
    return std::string(cfg()) + (lib.empty() ? "" : " (" + lib + ")");
  if (dlsym(RTLD_DEFAULT, "mkl_get_version")) return "MKL";
  if (lib.empty()) return "no BLAS symbols (libtorch's own kernels)";
  return "reference BLAS (" + lib + ") -- about 15x slower; install libopenblas0-pthread";
}

int init_threads(int n) {
  if (n <= 0) n = (int)std::max(1u, std::thread::hardware_concurrency());
  torch::set_num_threads(n);
  if (auto set = reinterpret_cast<void (*)(int)>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) set(n);
  return torch::get_num_threads();
}

std::string version_string() {
  std::string device = torch::cuda::is_available() ? "cuda available" : "cpu";
  return std::string("sortedllama ") + SORTEDLLAMA_VERSION + " (libtorch " + TORCH_VERSION + ", BLAS: " +
         blas_description() + ", " + std::to_string(torch::get_num_threads()) + " threads, " + device + ")";
}

}  // namespace sl
