// sentencepiece tokenizer (LLaMA's BPE with byte fallback, or any other .model file).
// sentencepiece lives in a dlopen()ed module (see src/spm_module.cpp), so this header and the
// binary never see it.
#pragma once
#include <memory>
#include <string>
#include <vector>

namespace sl {

struct SpmApi;  // function table of the dlopen()ed module

class Tokenizer {
 public:
  explicit Tokenizer(const std::string& model_path);  // throws with the path on failure
  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // LLaMA prepends BOS to every sequence; EOS is added only for training targets.
  std::vector<int> encode(const std::string& text, bool bos, bool eos = false) const;
  // Like sentencepiece: byte pieces are merged into UTF-8, the leading space of the first piece
  // dropped. Ids the tokenizer has no piece for decode to nothing.
  std::string decode(const std::vector<int>& ids) const;
  std::string piece(int id) const;
  int vocab_size() const;
  int bos_id() const;
  int eos_id() const;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const SpmApi* api_;
  void* handle_ = nullptr;
};

// Path of the sentencepiece module this process loads (next to the executable, or
// $SORTEDLLAMA_SPM_MODULE).
std::string spm_module_path();

}  // namespace sl
