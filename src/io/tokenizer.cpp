#include "sortedllama/io/tokenizer.h"

#include <filesystem>

#include <dlfcn.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <stdexcept>

namespace sl {

struct SpmApi {
  void* (*load)(const char*, char*, size_t);
  void (*free)(void*);
  int (*encode)(void*, const char*, size_t, int*, int);
  long (*decode)(void*, const int*, int, char*, size_t);
  int (*piece_size)(void*);
  int (*bos_id)(void*);
  int (*eos_id)(void*);
  const char* (*id_to_piece)(void*, int);
};

std::string spm_module_path() {
  if (const char* env = std::getenv("SORTEDLLAMA_SPM_MODULE")) return env;
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n <= 0) throw std::runtime_error("cannot locate the executable to find libsortedllama_spm.so");
  std::string dir(exe, n);
  return dir.substr(0, dir.rfind('/')) + "/libsortedllama_spm.so";
}

namespace {
template <typename F>
void bind(void* lib, const char* name, F& fn) {
  void* sym = dlsym(lib, name);
  if (!sym) throw std::runtime_error(std::string("libsortedllama_spm.so lacks symbol ") + name);
  fn = reinterpret_cast<F>(sym);
}

// RTLD_DEEPBIND makes the module resolve protobuf in its own copy, not libtorch's.
const SpmApi* load_api() {
  static const SpmApi* api = [] {
    std::string path = spm_module_path();
    void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (!lib) throw std::runtime_error("cannot load tokenizer module " + path + ": " + dlerror());
    auto* a = new SpmApi();
    bind(lib, "slspm_load", a->load);
    bind(lib, "slspm_free", a->free);
    bind(lib, "slspm_encode", a->encode);
    bind(lib, "slspm_decode", a->decode);
    bind(lib, "slspm_piece_size", a->piece_size);
    bind(lib, "slspm_bos_id", a->bos_id);
    bind(lib, "slspm_eos_id", a->eos_id);
    bind(lib, "slspm_id_to_piece", a->id_to_piece);
    return a;
  }();
  return api;
}
}  // namespace

Tokenizer::Tokenizer(const std::string& model_path) : path_(model_path), api_(load_api()) {
  if (!std::filesystem::is_regular_file(model_path))
    throw std::runtime_error("cannot load tokenizer " + model_path + ": " +
                             (std::filesystem::exists(model_path) ? "not a file" : "no such file"));
  char err[512] = {0};
  handle_ = api_->load(model_path.c_str(), err, sizeof(err));
  if (!handle_) throw std::runtime_error("cannot load tokenizer " + model_path + ": " + err);
}

Tokenizer::~Tokenizer() {
  if (handle_) api_->free(handle_);
}

std::vector<int> Tokenizer::encode(const std::string& text, bool bos, bool eos) const {
  std::vector<int> ids(text.size() + 8);
  int n = api_->encode(handle_, text.data(), text.size(), ids.data(), (int)ids.size());
  if (n < 0) throw std::runtime_error("tokenizer " + path_ + " failed to encode text");
  if (n > (int)ids.size()) {
    ids.resize(n);
    api_->encode(handle_, text.data(), text.size(), ids.data(), n);
  }
  ids.resize(n);
  if (bos) ids.insert(ids.begin(), bos_id());
  if (eos) ids.push_back(eos_id());
  return ids;
}

std::string Tokenizer::decode(const std::vector<int>& all_ids) const {
  // Ids without a piece (a checkpoint's extra embedding rows, e.g. an added [PAD]) have no text.
  std::vector<int> ids;
  for (int id : all_ids)
    if (id >= 0 && id < vocab_size()) ids.push_back(id);
  std::string out(ids.size() * 8 + 16, '\0');
  long n = api_->decode(handle_, ids.data(), (int)ids.size(), out.data(), out.size());
  if (n < 0) throw std::runtime_error("tokenizer " + path_ + " failed to decode");
  if ((size_t)n > out.size()) {
    out.resize(n);
    api_->decode(handle_, ids.data(), (int)ids.size(), out.data(), out.size());
  }
  out.resize(n);
  return out;
}

std::string Tokenizer::piece(int id) const { return api_->id_to_piece(handle_, id); }
int Tokenizer::vocab_size() const { return api_->piece_size(handle_); }
int Tokenizer::bos_id() const { return api_->bos_id(handle_); }
int Tokenizer::eos_id() const { return api_->eos_id(handle_); }

}  // namespace sl
