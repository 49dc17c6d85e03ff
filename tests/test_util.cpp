#include "test_util.h"

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <ATen/record_function.h>

#include "sortedllama/io/checkpoint.h"
#include "sortedllama/io/convert.h"

namespace fs = std::filesystem;

namespace sl_test {

std::string source_dir() { return SL_SOURCE_DIR; }
std::string shared_dir() { return source_dir() + "/../shared"; }

namespace {
// All of this process's temporary directories live under one root, removed at exit.
struct TempRoot {
  fs::path path = fs::temp_directory_path() / ("sortedllama-test-" + std::to_string(getpid()));
  ~TempRoot() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};
}  // namespace

std::string temp_dir(const std::string& tag) {
  static TempRoot root;
  static int counter = 0;
  fs::path p = root.path / (tag + "-" + std::to_string(counter++));
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

std::string stories_model_dir() {
  static std::string dir = [] {
    std::string d = temp_dir("stories") + "/model";
    const std::string src = shared_dir() + "/models/stories260K/";
    sl::convert_llama2c(src + "stories260K.bin", src + "tok512.model", d);
    return d;
  }();
  return dir;
}

sl::Llama damped_stories_model(const std::string& dir) {
  sl::Llama m = sl::load_model(dir);
  torch::NoGradGuard g;
  for (auto& p : m->named_parameters())
    for (int i = 2; i < 5; ++i)
      if (p.key().rfind("model.layers." + std::to_string(i) + ".", 0) == 0 &&
          (p.key().find("o_proj") != std::string::npos || p.key().find("down_proj") != std::string::npos))
        p.value().mul_(0.2);
  return m;
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), (std::streamsize)bytes.size());
}

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

namespace {
thread_local const char* counted_op = nullptr;
thread_local int64_t op_calls = 0;
}  // namespace

int64_t count_op_calls(const char* op, const std::function<void()>& fn) {
  counted_op = op;
  op_calls = 0;
  auto handle = at::addThreadLocalCallback(
      at::RecordFunctionCallback([](const at::RecordFunction& f) -> std::unique_ptr<at::ObserverContext> {
        if (std::strcmp(f.name(), counted_op) == 0) ++op_calls;
        return nullptr;
      }).scopes({at::RecordScope::FUNCTION, at::RecordScope::USER_SCOPE}));
  fn();
  at::removeCallback(handle);
  return op_calls;
}

}  // namespace sl_test
