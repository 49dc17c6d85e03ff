// safetensors reading (memory-mapped, every header field validated) and writing.
// No torch here: checkpoint.cpp turns the raw views into tensors.
//
// Layout: u64 little-endian header length N | N bytes of JSON header
//   {name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}}
// | tensor data (offsets relative to the end of the header).
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace sl {

// Bytes per element of a safetensors dtype name ("F32", "BF16", ...); 0 if unknown.
size_t dtype_size(const std::string& dtype);

struct TensorView {
  std::string dtype;            // "F32", "F16", "BF16", "I64", ...
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // points into the mapping
  size_t nbytes = 0;
  int64_t numel() const;
};

class SafetensorsFile {
 public:
  // Maps the file and validates the header; throws "<path>: <problem> (tensor <name>)".
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& path() const { return path_; }
  bool contains(const std::string& name) const { return tensors_.count(name) > 0; }
  const TensorView& at(const std::string& name) const;  // throws naming the file and the tensor

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t size_ = 0;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

struct TensorBlob {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  const void* data;
  size_t nbytes;
};

// Writes tensors in the given order, header padded to 8 bytes; throws on I/O errors.
void write_safetensors(const std::string& path, const std::vector<TensorBlob>& tensors,
                       const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

}  // namespace sl
