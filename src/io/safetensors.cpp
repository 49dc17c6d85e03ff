#include "sortedllama/io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

namespace sl {

namespace {
// A header past this size is hostile or corrupt (the reference implementation uses the same cap).
constexpr uint64_t kMaxHeader = 100u << 20;
// No real dimension comes near this, and from 2^63 on a dimension turns negative as int64_t; the
// product check alone misses a huge dimension after a zero one.
constexpr uint64_t kMaxDim = uint64_t{1} << 62;

std::runtime_error file_error(const std::string& path, const std::string& msg) {
  return std::runtime_error(path + ": " + msg);
}

// A header value for a message: scalars as written, containers by type, since dumping a hostile,
// deeply nested value recurses once per level and can overflow the stack.
std::string describe(const nlohmann::json& v) {
  return v.is_structured() ? std::string("an ") + v.type_name() : v.dump();
}
}  // namespace

size_t dtype_size(const std::string& d) {
  static const std::map<std::string, size_t> sizes = {
      {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8}, {"I32", 4},
      {"I16", 2}, {"I8", 1},  {"U8", 1},  {"BOOL", 1}, {"U16", 2}, {"U32", 4}, {"U64", 8}};
  auto it = sizes.find(d);
  return it == sizes.end() ? 0 : it->second;
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw file_error(path, std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    ::close(fd);
    throw file_error(path, "cannot stat");
  }
  size_ = (size_t)st.st_size;
  if (size_ < 8) {
    ::close(fd);
    throw file_error(path, "truncated: " + std::to_string(size_) + " bytes, too short for a safetensors header");
  }
  map_ = mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    throw file_error(path, "cannot mmap");
  }
  try {
    const auto* base = static_cast<const uint8_t*>(map_);
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | base[i];  // little-endian
    if (header_len > size_ - 8)
      throw file_error(path, "header length " + std::to_string(header_len) + " runs past the end of the file (" +
                                 std::to_string(size_) + " bytes); the file is truncated or not safetensors");
    if (header_len > kMaxHeader) throw file_error(path, "header length " + std::to_string(header_len) + " is implausibly large");
    nlohmann::json header;
    try {
      header = nlohmann::json::parse(base + 8, base + 8 + header_len);
    } catch (const nlohmann::json::parse_error& e) {
      throw file_error(path, std::string("malformed JSON header: ") + e.what());
    }
    if (!header.is_object()) throw file_error(path, "header is not a JSON object");
    const uint8_t* data = base + 8 + header_len;
    const size_t data_size = size_ - 8 - header_len;
    std::vector<std::pair<size_t, std::string>> by_offset;  // (begin, name) to detect overlaps
    std::map<std::string, std::pair<size_t, size_t>> ranges;
    for (auto& [name, entry] : header.items()) {
      if (name == "__metadata__") {
        if (!entry.is_object()) throw file_error(path, "__metadata__ is not an object");
        for (auto& [k, v] : entry.items()) {
          if (!v.is_string()) throw file_error(path, "__metadata__ value \"" + k + "\" is not a string");
          metadata_[k] = v.get<std::string>();
        }
        continue;
      }
      auto bad = [&](const std::string& msg) { return file_error(path, msg + " (tensor " + name + ")"); };
      if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") || !entry.contains("data_offsets"))
        throw bad("entry needs dtype, shape and data_offsets");
      if (!entry["dtype"].is_string()) throw bad("dtype is not a string");
      TensorView t;
      t.dtype = entry["dtype"].get<std::string>();
      size_t esize = dtype_size(t.dtype);
      if (esize == 0) throw bad("unknown dtype \"" + t.dtype + "\"");
      if (!entry["shape"].is_array()) throw bad("shape is not an array");
      uint64_t numel = 1;
      for (auto& d : entry["shape"]) {
        if (!d.is_number_unsigned()) throw bad("shape holds " + describe(d) + ", not a non-negative integer");
        uint64_t v = d.get<uint64_t>();
        if (v >= kMaxDim) throw bad("shape dimension " + std::to_string(v) + " is not below 2^62");
        if (v != 0 && numel > (UINT64_MAX / 8) / v) throw bad("shape is too large");
        numel *= v;
        t.shape.push_back((int64_t)v);
      }
      auto& off = entry["data_offsets"];
      if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
        throw bad("data_offsets must be two non-negative integers");
      uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
      if (begin > end) throw bad("data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) + "] are reversed");
      if (end > data_size)
        throw bad("data_offsets end " + std::to_string(end) + " is past the data section (" + std::to_string(data_size) +
                  " bytes); the file is truncated");
      if (numel * esize != end - begin)
        throw bad("shape " + entry["shape"].dump() + " x " + t.dtype + " needs " + std::to_string(numel * esize) +
                  " bytes but data_offsets span " + std::to_string(end - begin));
      t.data = data + begin;
      t.nbytes = end - begin;
      by_offset.emplace_back(begin, name);
      ranges[name] = {begin, end};
      tensors_.emplace(name, std::move(t));
    }
    std::sort(by_offset.begin(), by_offset.end());
    for (size_t i = 1; i < by_offset.size(); ++i) {
      const auto& prev = ranges[by_offset[i - 1].second];
      if (by_offset[i].first < prev.second && prev.first != prev.second)
        throw file_error(path, "tensors " + by_offset[i - 1].second + " and " + by_offset[i].second + " overlap");
    }
  } catch (...) {
    munmap(map_, size_);
    map_ = nullptr;
    throw;
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) munmap(map_, size_);
}

const TensorView& SafetensorsFile::at(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) throw file_error(path_, "missing tensor " + name);
  return it->second;
}

void write_safetensors(const std::string& path, const std::vector<TensorBlob>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header;
  if (!metadata.empty()) header["__metadata__"] = metadata;
  size_t offset = 0;
  for (const auto& t : tensors) {
    header[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.nbytes}}};
    offset += t.nbytes;
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) throw file_error(path, "cannot create");
  uint64_t n = h.size();
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = (uint8_t)(n >> (8 * i));
  f.write(reinterpret_cast<const char*>(len), 8);
  f.write(h.data(), (std::streamsize)h.size());
  for (const auto& t : tensors) f.write(static_cast<const char*>(t.data), (std::streamsize)t.nbytes);
  f.flush();
  if (!f) throw file_error(path, "write failed (disk full?)");
}

}  // namespace sl
