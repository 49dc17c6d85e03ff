// Writing outputs so that nothing the user had is lost: a reader (or a crash, or a power cut)
// sees the old file or the new one, never half of one.
#pragma once
#include <functional>
#include <string>

#include <nlohmann/json.hpp>

namespace sl {

// Reads a JSON file; throws "cannot open PATH" or "PATH: malformed JSON: ...".
nlohmann::json read_json_file(const std::string& path);

// Writes `bytes` to a hidden temporary beside `path`, flushes it to disk, renames it over `path`
// and flushes the directory. Throws naming the file (a full disk, a missing directory, ...).
void write_file_atomic(const std::string& path, const std::string& bytes);

// Fills a fresh hidden sibling directory with `fill`, flushes every file in it to disk, then
// moves it to `dir` in one rename (swapping with an existing `dir`, whose old contents are then
// removed). A crash never leaves a half-written `dir`.
void write_dir_atomically(const std::string& dir, const std::function<void(const std::string& tmp)>& fill);

// The hidden temporary name write_dir_atomically uses for `dir` (".NAME.tmp-PID" beside it).
bool is_atomic_temporary(const std::string& name);

// Removes `dir` without ever leaving a half-deleted directory under its own name: it is first
// renamed to a hidden ".NAME.trash-PID" sibling, then deleted.
void remove_dir_atomically(const std::string& dir);

// fsync of a file or a directory; throws naming it on failure.
void sync_path(const std::string& path);

}  // namespace sl
