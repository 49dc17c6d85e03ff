#include "sortedllama/util/runtime.h"

#include <dlfcn.h>

#include <cstdlib>
#include <fstream>
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

// A variable as it was when this process image started (/proc/self/environ is not changed by
// setenv): what libgomp saw when it loaded.
std::string startup_env(const std::string& name) {
  std::ifstream f("/proc/self/environ", std::ios::binary);
  for (std::string kv; std::getline(f, kv, '\0');)
    if (kv.compare(0, name.size() + 1, name + "=") == 0) return kv.substr(name.size() + 1);
  return "";
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
  const std::string wait = startup_env("OMP_WAIT_POLICY");
  std::string device = torch::cuda::is_available() ? "cuda available" : "cpu";
  return std::string("sortedllama ") + SORTEDLLAMA_VERSION + " (libtorch " + TORCH_VERSION + ", BLAS: " +
         blas_description() + ", " + std::to_string(torch::get_num_threads()) + " threads, OpenMP wait " +
         (wait.empty() ? "default" : wait) + ", " + device + ")";
}

}  // namespace sl
