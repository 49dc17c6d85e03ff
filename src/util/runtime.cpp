#include "sortedllama/util/runtime.h"

#include <dlfcn.h>
#include <setjmp.h>
#include <signal.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <set>
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

CpuFeatures CpuFeatures::of_this_cpu() {
  CpuFeatures c;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  c.avx2 = __builtin_cpu_supports("avx2");
  c.fma = __builtin_cpu_supports("fma");
  c.avx512f = __builtin_cpu_supports("avx512f");
  c.avx512bw = __builtin_cpu_supports("avx512bw");
  c.avx512dq = __builtin_cpu_supports("avx512dq");
  c.avx512vl = __builtin_cpu_supports("avx512vl");
#endif
  return c;
}

std::string better_blas_core(const std::string& detected, const CpuFeatures& cpu) {
  // OpenBLAS's kernels older than AVX2: what it falls back to for a CPU it does not know.
  static const std::set<std::string> older = {"Prescott", "Core2",    "Penryn",    "Dunnington",  "Nehalem",
                                              "Atom",     "Barcelona", "Bulldozer", "Piledriver", "Steamroller",
                                              "Excavator", "Sandybridge"};
  if (!older.count(detected)) return "";
  if (cpu.avx512f && cpu.avx512bw && cpu.avx512dq && cpu.avx512vl) return "SkylakeX";
  if (cpu.avx2 && cpu.fma) return "Haswell";
  return "";
}

std::string blas_core_name() {
  auto name = reinterpret_cast<char* (*)()>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  return name ? name() : "";
}

namespace {
// Set with OPENBLAS_CORETYPE when sortedllama chose the kernel: "<chosen>/<detected>", or
// "rejected:<chosen>/<detected>" once the chosen kernel failed its check.
constexpr const char* kChoiceVar = "SORTEDLLAMA_BLAS_CHOICE";
constexpr const char* kRejected = "rejected:";

struct BlasChoice {
  bool present = false, rejected = false;
  std::string chosen, detected;
};

BlasChoice blas_choice() {
  BlasChoice b;
  const char* var = getenv(kChoiceVar);
  if (!var) return b;
  std::string c = var;
  b.present = true;
  b.rejected = c.rfind(kRejected, 0) == 0;
  if (b.rejected) c = c.substr(std::string(kRejected).size());
  b.chosen = c.substr(0, c.find('/'));
  b.detected = c.find('/') == std::string::npos ? "" : c.substr(c.find('/') + 1);
  return b;
}

sigjmp_buf illegal_instruction_exit;
void on_illegal_instruction(int) { siglongjmp(illegal_instruction_exit, 1); }

// Entry (i, j) of a fixed, irregular test matrix.
float test_value(int64_t i, int64_t j, double phase) { return (float)std::sin(0.37 * i + 1.31 * j + phase); }

torch::Tensor test_matrix(int64_t rows, int64_t cols, double phase) {
  torch::Tensor t = torch::empty({rows, cols}, torch::kFloat32);
  auto a = t.accessor<float, 2>();
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) a[i][j] = test_value(i, j, phase);
  return t;
}

// got [M,N] against sum_k x[m,k] w[n,k] in double, relative to sum_k |x w|.
bool matches_reference(const torch::Tensor& got, const torch::Tensor& x, const torch::Tensor& w) {
  auto g = got.accessor<float, 2>();
  auto xa = x.accessor<float, 2>();
  auto wa = w.accessor<float, 2>();
  for (int64_t m = 0; m < x.size(0); ++m)
    for (int64_t n = 0; n < w.size(0); ++n) {
      double sum = 0, scale = 0;
      for (int64_t k = 0; k < x.size(1); ++k) {
        sum += (double)xa[m][k] * wa[n][k];
        scale += std::fabs((double)xa[m][k] * wa[n][k]);
      }
      if (!(std::fabs(g[m][n] - sum) <= 1e-5 * scale + 1e-6)) return false;
    }
  return true;
}
}  // namespace

bool blas_products_correct() {
  // Odd sizes reach the kernels' edge cases; linear (x W^T) and mv are what the model calls.
  torch::NoGradGuard no_grad;
  const torch::Tensor x = test_matrix(67, 131, 0.0), w = test_matrix(45, 131, 2.0);
  const torch::Tensor v = test_matrix(1, 131, 4.0);
  return matches_reference(torch::linear(x, w), x, w) && matches_reference(torch::mm(x, w.t()), x, w) &&
         matches_reference(torch::mv(w, v[0]).unsqueeze(0), v, w);
}

bool prepare_blas_kernel() {
  const BlasChoice choice = blas_choice();
  if (choice.rejected) return false;
  if (choice.present) {  // this process runs the kernel sortedllama chose: keep it only if it computes right
    struct sigaction ill{}, old{};
    ill.sa_handler = on_illegal_instruction;
    sigaction(SIGILL, &ill, &old);
    volatile bool ok = false;  // volatile: read after a jump back from the signal handler
    if (sigsetjmp(illegal_instruction_exit, 1) == 0) ok = blas_core_name() == choice.chosen && blas_products_correct();
    sigaction(SIGILL, &old, nullptr);
    if (ok) return false;
    unsetenv("OPENBLAS_CORETYPE");
    setenv(kChoiceVar, (kRejected + choice.chosen + "/" + choice.detected).c_str(), 1);
    return true;
  }
  if (getenv("OPENBLAS_CORETYPE")) return false;  // the user's choice
  const std::string detected = blas_core_name(), better = better_blas_core(detected, CpuFeatures::of_this_cpu());
  if (better.empty()) return false;
  setenv("OPENBLAS_CORETYPE", better.c_str(), 1);
  setenv(kChoiceVar, (better + "/" + detected).c_str(), 1);
  return true;
}

std::string blas_kernel_note() {
  const BlasChoice c = blas_choice();
  if (c.rejected)
    return "kernel " + c.chosen + " failed its check on this CPU, so OpenBLAS's own " + c.detected + " is in use";
  if (!c.present || blas_core_name() != c.chosen) return "";  // not chosen, or the restart did not happen
  return "kernel " + c.chosen + " chosen by sortedllama over OpenBLAS's " + c.detected + ", results checked on this CPU";
}

std::vector<std::pair<std::string, std::string>> thread_env_for(const std::string& subcommand) {
  const bool decoding = subcommand == "generate" || subcommand == "calibrate" || subcommand == "tune";
  const char* name = decoding ? "OPENBLAS_THREAD_TIMEOUT" : "OMP_WAIT_POLICY";
  if (getenv(name)) return {};
  return {{name, decoding ? "18" : "PASSIVE"}};
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
  std::string kernel = blas_kernel_note();
  if (const char* forced = getenv("OPENBLAS_CORETYPE"); kernel.empty() && forced)
    kernel = std::string("kernel set by OPENBLAS_CORETYPE=") + forced;
  return std::string("sortedllama ") + SORTEDLLAMA_VERSION + " (libtorch " + TORCH_VERSION + ", BLAS: " +
         blas_description() + (kernel.empty() ? "" : "; " + kernel) + ", " +
         std::to_string(torch::get_num_threads()) + " threads, OpenMP wait " + (wait.empty() ? "default" : wait) + ", " +
         device + ")";
}

}  // namespace sl
