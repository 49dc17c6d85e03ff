#include "sortedllama/io/zip.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace sl {

namespace {
constexpr uint32_t kLocalSig = 0x04034b50, kCentralSig = 0x02014b50, kEndSig = 0x06054b50;
constexpr uint32_t kEnd64Sig = 0x06064b50, kLocator64Sig = 0x07064b50;
constexpr size_t kEndLen = 22, kLocator64Len = 20, kEnd64Len = 56, kCentralLen = 46, kLocalLen = 30;

uint64_t le(const uint8_t* p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

std::runtime_error zip_error(const std::string& path, const std::string& msg) {
  return std::runtime_error(path + ": " + msg);
}
}  // namespace

ZipFile::ZipFile(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw zip_error(path, std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    ::close(fd);
    throw zip_error(path, "cannot stat");
  }
  size_ = (size_t)st.st_size;
  if (size_ < kEndLen) {
    ::close(fd);
    throw zip_error(path, "truncated: " + std::to_string(size_) + " bytes, too short for a zip archive");
  }
  map_ = mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    throw zip_error(path, "cannot mmap");
  }
  try {
    const auto* base = static_cast<const uint8_t*>(map_);
    auto fits = [&](uint64_t off, uint64_t len) { return off <= size_ && len <= size_ - off; };
    // The end record sits in the last 22 bytes plus at most a 64 KiB comment.
    size_t end = size_ - kEndLen;
    const size_t lowest = size_ > kEndLen + 0xffff ? size_ - kEndLen - 0xffff : 0;
    while (le(base + end, 4) != kEndSig || end + kEndLen + le(base + end + 20, 2) != size_) {
      if (end == lowest)
        throw zip_error(path, "no zip end-of-directory record: truncated, or not a torch.save/zip file");
      --end;
    }
    const uint8_t* e = base + end;
    if (le(e + 4, 2) != 0 || le(e + 6, 2) != 0) throw zip_error(path, "multi-disk zip archives are not supported");
    uint64_t count = le(e + 10, 2), dir_size = le(e + 12, 4), dir_offset = le(e + 16, 4);
    if (count == 0xffff || dir_size == 0xffffffff || dir_offset == 0xffffffff) {
      // zip64: the locator just before the end record points at the 64-bit end record.
      if (end < kLocator64Len || le(base + end - kLocator64Len, 4) != kLocator64Sig)
        throw zip_error(path, "zip64 archive without its zip64 end-of-directory locator");
      const uint64_t at = le(base + end - kLocator64Len + 8, 8);
      if (!fits(at, kEnd64Len) || le(base + at, 4) != kEnd64Sig)
        throw zip_error(path, "zip64 end-of-directory record is missing or outside the file");
      const uint8_t* z = base + at;
      if (le(z + 16, 4) != 0 || le(z + 20, 4) != 0) throw zip_error(path, "multi-disk zip archives are not supported");
      count = le(z + 32, 8);
      dir_size = le(z + 40, 8);
      dir_offset = le(z + 48, 8);
    }
    if (!fits(dir_offset, dir_size))
      throw zip_error(path, "central directory [" + std::to_string(dir_offset) + ", +" + std::to_string(dir_size) +
                                ") runs past the end of the file (" + std::to_string(size_) + " bytes): truncated");
    if (count > dir_size / kCentralLen)
      throw zip_error(path, "central directory claims " + std::to_string(count) + " entries in " +
                                std::to_string(dir_size) + " bytes");

    const uint8_t* p = base + dir_offset;
    const uint8_t* dir_end = p + dir_size;
    for (uint64_t i = 0; i < count; ++i) {
      if ((size_t)(dir_end - p) < kCentralLen || le(p, 4) != kCentralSig)
        throw zip_error(path, "central directory entry " + std::to_string(i) + " is malformed");
      const uint64_t flags = le(p + 8, 2), method = le(p + 10, 2), name_len = le(p + 28, 2), extra_len = le(p + 30, 2),
                     comment_len = le(p + 32, 2);
      uint64_t csize = le(p + 20, 4), usize = le(p + 24, 4), local = le(p + 42, 4);
      if ((size_t)(dir_end - p) < kCentralLen + name_len + extra_len + comment_len)
        throw zip_error(path, "central directory entry " + std::to_string(i) + " runs past the directory");
      const std::string name(reinterpret_cast<const char*>(p + kCentralLen), name_len);
      auto bad = [&](const std::string& msg) { return zip_error(path, msg + " (entry " + name + ")"); };
      // zip64 extra field: the 64-bit values of exactly those fields that read 0xffffffff.
      const uint8_t* x = p + kCentralLen + name_len;
      const uint8_t* x_end = x + extra_len;
      while (x_end - x >= 4) {
        const uint64_t tag = le(x, 2), len = le(x + 2, 2);
        if ((uint64_t)(x_end - x - 4) < len) throw bad("extra field runs past its entry");
        if (tag == 0x0001) {
          const uint8_t* v = x + 4;
          for (uint64_t* field : {&usize, &csize, &local}) {
            if (*field != 0xffffffff) continue;
            if (v + 8 > x + 4 + len) throw bad("zip64 extra field is too short");
            *field = le(v, 8);
            v += 8;
          }
        }
        x += 4 + len;
      }
      if (flags & 1) throw bad("encrypted entries are not supported");
      if (method != 0)
        throw bad("compressed (method " + std::to_string(method) +
                  "); only stored entries are read, as torch.save writes them");
      if (csize != usize) throw bad("stored entry with compressed size " + std::to_string(csize) + " != size " +
                                    std::to_string(usize));
      if (!fits(local, kLocalLen) || le(base + local, 4) != kLocalSig) throw bad("local header missing or outside the file");
      const uint64_t local_name = le(base + local + 26, 2), local_extra = le(base + local + 28, 2);
      if (local_name != name_len || std::memcmp(base + local + kLocalLen, name.data(), name_len) != 0)
        throw bad("local header names a different entry");
      const uint64_t data = local + kLocalLen + local_name + local_extra;
      if (!fits(data, usize))
        throw bad(std::to_string(usize) + " bytes at offset " + std::to_string(data) + " run past the end of the file (" +
                  std::to_string(size_) + " bytes): truncated");
      if (!entries_.emplace(name, ZipEntry{base + data, usize}).second) throw bad("duplicate entry");
      p += kCentralLen + name_len + extra_len + comment_len;
    }
  } catch (...) {
    munmap(map_, size_);
    map_ = nullptr;
    throw;
  }
}

ZipFile::~ZipFile() {
  if (map_) munmap(map_, size_);
}

const ZipEntry* ZipFile::find(const std::string& name) const {
  auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : &it->second;
}

}  // namespace sl
