#include "sortedllama/util/files.h"

#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>

namespace fs = std::filesystem;

namespace sl {

namespace {
std::string errno_text() { return std::strerror(errno); }

fs::path normalised(const std::string& p) {
  fs::path t = fs::absolute(p).lexically_normal();
  if (t.filename().empty()) t = t.parent_path();
  return t;
}

fs::path hidden_sibling(const fs::path& target, const std::string& kind) {
  return target.parent_path() / ("." + target.filename().string() + "." + kind + "-" + std::to_string(getpid()));
}

void sync_tree(const fs::path& dir) {
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file() || e.is_directory()) sync_path(e.path().string());
  sync_path(dir.string());
}
}  // namespace

nlohmann::json read_json_file(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw std::runtime_error("cannot open " + path);
  try {
    return nlohmann::json::parse(f);
  } catch (const nlohmann::json::parse_error& e) {
    throw std::runtime_error(path + ": malformed JSON: " + e.what());
  }
}

void sync_path(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error("cannot open " + path + " to flush it: " + errno_text());
  const int rc = ::fsync(fd);
  const std::string err = rc != 0 ? errno_text() : "";
  ::close(fd);
  if (rc != 0) throw std::runtime_error("cannot flush " + path + " to disk: " + err);
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  const fs::path target = normalised(path);
  const fs::path tmp = hidden_sibling(target, "tmp");
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error("cannot write " + path + ": " + errno_text());
  auto fail = [&](const std::string& what) {
    const std::string err = errno_text();
    ::close(fd);
    ::unlink(tmp.c_str());
    throw std::runtime_error(what + " " + path + ": " + err);
  };
  for (size_t done = 0; done < bytes.size();) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail("error writing");
    done += (size_t)n;
  }
  if (::fsync(fd) != 0) fail("cannot flush");
  if (::close(fd) != 0) {
    const std::string err = errno_text();
    ::unlink(tmp.c_str());
    throw std::runtime_error("error writing " + path + ": " + err);
  }
  if (std::rename(tmp.c_str(), target.c_str()) != 0) {
    const std::string err = errno_text();
    ::unlink(tmp.c_str());
    throw std::runtime_error("cannot rename " + tmp.string() + " to " + path + ": " + err);
  }
  sync_path(target.parent_path().string());
}

void write_dir_atomically(const std::string& dir, const std::function<void(const std::string& tmp)>& fill) {
  const fs::path target = normalised(dir);
  fs::create_directories(target.parent_path());
  const fs::path tmp = hidden_sibling(target, "tmp");
  fs::remove_all(tmp);
  fs::create_directory(tmp);
  try {
    fill(tmp.string());
    sync_tree(tmp);
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
  if (!fs::exists(target)) {
    fs::rename(tmp, target);
  } else if (renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, target.c_str(), RENAME_EXCHANGE) != 0) {
    // Swap in one step; the old contents end up in tmp and are removed afterwards.
    throw std::runtime_error("cannot replace " + target.string() + ": " + errno_text() + " (new copy left in " +
                             tmp.string() + ")");
  }
  sync_path(target.parent_path().string());
  fs::remove_all(tmp);
}

bool is_atomic_temporary(const std::string& name) {
  return name.size() > 1 && name[0] == '.' &&
         (name.find(".tmp-") != std::string::npos || name.find(".trash-") != std::string::npos);
}

void remove_dir_atomically(const std::string& dir) {
  const fs::path target = normalised(dir);
  const fs::path trash = hidden_sibling(target, "trash");
  fs::remove_all(trash);
  fs::rename(target, trash);
  sync_path(target.parent_path().string());
  fs::remove_all(trash);
}

}  // namespace sl
