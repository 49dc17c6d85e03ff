// A plain C API over sentencepiece, built as a separate module (libsortedllama_spm.so).
// Debian's libsentencepiece exports its own protobuf, which clashes with the protobuf libtorch
// loads; keeping sentencepiece behind dlopen(RTLD_LOCAL | RTLD_DEEPBIND) isolates the two.
#include <sentencepiece_processor.h>

#include <cstring>
#include <string>
#include <vector>

namespace {
void set_error(char* err, size_t cap, const std::string& msg) {
  if (err && cap) {
    std::strncpy(err, msg.c_str(), cap - 1);
    err[cap - 1] = '\0';
  }
}
}  // namespace

extern "C" {

// Returns a processor handle, or nullptr with a message in err.
void* slspm_load(const char* path, char* err, size_t errcap) {
  auto* sp = new sentencepiece::SentencePieceProcessor();
  auto status = sp->Load(path);
  if (!status.ok()) {
    set_error(err, errcap, status.ToString());
    delete sp;
    return nullptr;
  }
  return sp;
}

void slspm_free(void* h) { delete static_cast<sentencepiece::SentencePieceProcessor*>(h); }

// Writes up to cap ids to out; returns the total count (call again with a bigger buffer if > cap),
// or -1 on error.
int slspm_encode(void* h, const char* text, size_t len, int* out, int cap) {
  std::vector<int> ids;
  auto* sp = static_cast<sentencepiece::SentencePieceProcessor*>(h);
  if (!sp->Encode(std::string(text, len), &ids).ok()) return -1;
  for (int i = 0; i < (int)ids.size() && i < cap; ++i) out[i] = ids[i];
  return (int)ids.size();
}

// Writes at most cap bytes of the decoded text; returns its full length, or -1 on error.
long slspm_decode(void* h, const int* ids, int n, char* out, size_t cap) {
  std::string text;
  auto* sp = static_cast<sentencepiece::SentencePieceProcessor*>(h);
  if (!sp->Decode(std::vector<int>(ids, ids + n), &text).ok()) return -1;
  std::memcpy(out, text.data(), text.size() < cap ? text.size() : cap);
  return (long)text.size();
}

int slspm_piece_size(void* h) { return static_cast<sentencepiece::SentencePieceProcessor*>(h)->GetPieceSize(); }
int slspm_bos_id(void* h) { return static_cast<sentencepiece::SentencePieceProcessor*>(h)->bos_id(); }
int slspm_eos_id(void* h) { return static_cast<sentencepiece::SentencePieceProcessor*>(h)->eos_id(); }
int slspm_pad_id(void* h) { return static_cast<sentencepiece::SentencePieceProcessor*>(h)->pad_id(); }
const char* slspm_id_to_piece(void* h, int id) {
  return static_cast<sentencepiece::SentencePieceProcessor*>(h)->IdToPiece(id).c_str();
}

}  // extern "C"
