// Zip archives whose entries are stored uncompressed, as torch.save writes them. Memory-mapped:
// an entry is a view into the mapping. No torch here.
//
// Read through the central directory (zip64 records included, which torch writes into every
// archive); each entry's local header is checked to agree with it. Compressed, encrypted or
// multi-disk archives are refused.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

namespace sl {

struct ZipEntry {
  const uint8_t* data = nullptr;  // points into the mapping
  uint64_t size = 0;
};

class ZipFile {
 public:
  // Maps the file and validates the directory; throws "<path>: <problem> (entry <name>)".
  explicit ZipFile(const std::string& path);
  ~ZipFile();
  ZipFile(const ZipFile&) = delete;
  ZipFile& operator=(const ZipFile&) = delete;

  const std::map<std::string, ZipEntry>& entries() const { return entries_; }
  const ZipEntry* find(const std::string& name) const;  // nullptr if absent
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t size_ = 0;
  std::map<std::string, ZipEntry> entries_;
};

}  // namespace sl
