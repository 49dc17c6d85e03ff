// Deterministic mutation fuzzing of every reader of untrusted files: safetensors, model directories
// (config.json, weights, shard index), data JSONL and llama2.c checkpoints. Each mutated input must
// load or throw a std::exception whose message names the file, within kMaxSecondsPerInput and
// without growing the process's peak RSS by more than kMaxRssGrowthMb. The seed is fixed, so a reported
// input label reproduces.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "sortedllama/data/examples.h"
#include "sortedllama/data/prepare.h"
#include "sortedllama/data/records.h"
#include "sortedllama/io/checkpoint.h"
#include "sortedllama/io/convert.h"
#include "sortedllama/io/safetensors.h"
#include "sortedllama/io/tokenizer.h"
#include "sortedllama/model/config.h"
#include "sortedllama/util/rng.h"
#include "test_util.h"

namespace fs = std::filesystem;
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

namespace {

constexpr uint64_t kSeed = 0x5eedf022;
constexpr double kMaxSecondsPerInput = 2.0;
constexpr int64_t kMaxRssGrowthMb = 256;
constexpr int kReportedFindings = 10;  // per reader; the rest are counted
constexpr int64_t kMaxDim = int64_t{1} << 62;

// ---------------------------------------------------------------------------------------------
// Harness

int64_t proc_status_kb(const char* field) {  // "VmHWM:   1234 kB"
  std::ifstream f("/proc/self/status");
  const size_t n = std::strlen(field);
  for (std::string line; std::getline(f, line);)
    if (line.compare(0, n, field) == 0 && line.size() > n && line[n] == ':') return std::stoll(line.substr(n + 1));
  return 0;
}

// Warnings (unexpected tensors, skipped records) come by the thousand here.
struct QuietLogs {
  spdlog::level::level_enum saved = spdlog::get_level();
  QuietLogs() { spdlog::set_level(spdlog::level::err); }
  ~QuietLogs() { spdlog::set_level(saved); }
};

// One reader under fuzzing: feeds inputs, checks each outcome, prints one summary line.
class Fuzz {
 public:
  explicit Fuzz(std::string reader) : reader_(std::move(reader)) {
    // Writing "5" resets VmHWM to the current RSS, so the peak measured is this reader's.
    std::ofstream("/proc/self/clear_refs") << "5";
    baseline_kb_ = proc_status_kb("VmHWM");
  }

  // read() returns (the input loaded) or throws a std::exception whose message names must_name.
  void feed(const std::string& input, const std::string& must_name, const std::function<void()>& read) {
    ++inputs_;
    std::string problem;
    bool loaded = false;
    const auto start = std::chrono::steady_clock::now();
    try {
      read();
      loaded = true;
    } catch (const c10::Error& e) {
      problem = std::string("c10::Error escaped: ") + e.what_without_backtrace();
    } catch (const json::exception& e) {
      problem = std::string("raw nlohmann exception escaped: ") + e.what();
    } catch (const std::exception& e) {
      const std::string msg = e.what();
      if (msg.empty()) problem = "empty error message";
      else if (msg.find(must_name) == std::string::npos) problem = "error does not name " + must_name + ": " + msg;
    } catch (...) {
      problem = "exception not derived from std::exception";
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    slowest_s_ = std::max(slowest_s_, s);
    total_s_ += s;
    if (s > kMaxSecondsPerInput) problem += (problem.empty() ? "" : "; ") + ("took " + std::to_string(s) + " s");
    ++(loaded ? loaded_ : rejected_);
    if (!problem.empty()) finding(input, problem);
  }

  // An outcome the caller found wrong, e.g. an accepted input that breaks an invariant.
  void finding(const std::string& input, const std::string& problem) {
    if (++findings_ <= kReportedFindings) ADD_FAILURE() << reader_ << " [" << input << "]: " << problem.substr(0, 600);
  }

  void finish(int64_t min_inputs) {
    const int64_t growth_mb = (proc_status_kb("VmHWM") - baseline_kb_) / 1024;
    std::printf("[fuzz] %s: %lld inputs (%lld loaded, %lld rejected) in %.1f s, slowest %.1f ms, peak RSS +%lld MB\n",
                reader_.c_str(), (long long)inputs_, (long long)loaded_, (long long)rejected_, total_s_,
                slowest_s_ * 1e3, (long long)growth_mb);
    std::fflush(stdout);
    EXPECT_GE(inputs_, min_inputs) << reader_;
    EXPECT_EQ(findings_, 0) << reader_;
    EXPECT_LT(growth_mb, kMaxRssGrowthMb) << reader_;
  }

 private:
  std::string reader_;
  int64_t inputs_ = 0, loaded_ = 0, rejected_ = 0, findings_ = 0, baseline_kb_ = 0;
  double slowest_s_ = 0, total_s_ = 0;
};

// A fresh file each time: rewriting one in place (O_TRUNC) makes ext4 write it to disk on close.
void put_file(const std::string& path, const std::string& bytes) {
  fs::remove(path);
  sl_test::write_file(path, bytes);
}

// prepare_dataset flushes each output to disk (fsync); on tmpfs that waits for no device.
struct ShmDir {
  std::string path;  // empty without /dev/shm
  ShmDir() {
    if (!fs::is_directory("/dev/shm")) return;
    path = "/dev/shm/sortedllama-fuzz-" + std::to_string(getpid());
    fs::create_directories(path);
  }
  ~ShmDir() {
    std::error_code ec;
    if (!path.empty()) fs::remove_all(path, ec);
  }
};

struct Mutant {
  std::string label;  // what was done, for messages
  std::string bytes;
};

// ---------------------------------------------------------------------------------------------
// Byte mutations, for every file kind

char odd_byte(sl::Rng& rng) {  // JSON structure, escapes, NUL, invalid UTF-8, or any byte
  static const char bytes[] = {'{', '}', '[', ']', '"', ':', ',', '\\', '\n', ' ',
                               '0', '9', '-', 'e', '.', '\0', '\xff', '\xc3', '\xed', '\x80'};
  return rng.below(2) ? bytes[rng.below(sizeof(bytes))] : (char)rng.below(256);
}

Mutant flip_bytes(std::string s, sl::Rng& rng) {
  std::string label = "flip";
  for (int i = rng.range(1, 4); i > 0 && !s.empty(); --i) {
    const size_t at = rng.below(s.size());
    s[at] = (char)(s[at] ^ (char)rng.range(1, 255));
    label += " @" + std::to_string(at);
  }
  return {label, s};
}

Mutant insert_bytes(std::string s, sl::Rng& rng) {
  const size_t at = rng.below(s.size() + 1);
  std::string ins(rng.range(1, 8), ' ');
  for (char& c : ins) c = odd_byte(rng);
  s.insert(at, ins);
  return {"insert " + std::to_string(ins.size()) + " @" + std::to_string(at), s};
}

Mutant delete_bytes(std::string s, sl::Rng& rng) {
  if (s.empty()) return {"delete nothing", s};
  const size_t at = rng.below(s.size()), n = std::min<size_t>(s.size() - at, rng.range(1, 16));
  s.erase(at, n);
  return {"delete " + std::to_string(n) + " @" + std::to_string(at), s};
}

Mutant repeat_bytes(std::string s, sl::Rng& rng) {  // repeats structure: a run copied elsewhere
  if (s.empty()) return {"repeat nothing", s};
  const size_t from = rng.below(s.size()), n = std::min<size_t>(s.size() - from, rng.range(1, 64));
  const size_t to = rng.below(s.size() + 1);
  s.insert(to, s.substr(from, n));
  return {"repeat " + std::to_string(n) + " @" + std::to_string(from) + " to @" + std::to_string(to), s};
}

Mutant byte_mutant(const std::string& s, sl::Rng& rng) {
  switch (rng.below(4)) {
    case 0: return flip_bytes(s, rng);
    case 1: return insert_bytes(s, rng);
    case 2: return delete_bytes(s, rng);
    default: return repeat_bytes(s, rng);
  }
}

Mutant truncated(const std::string& s, size_t n) { return {"truncate to " + std::to_string(n), s.substr(0, n)}; }

// ---------------------------------------------------------------------------------------------
// JSON values that readers must refuse (or take exactly)

// Stands for a value nested kDeep levels: written into JSON text by dump_text(), since building
// it as a json value would make this test's own (recursive) copies and dumps overflow the stack.
const std::string kDeepMarker = "<deeply nested>";
constexpr int kDeep = 100000;

std::string dump_text(const ojson& v) {
  std::string s = v.dump();
  const std::string marker = "\"" + kDeepMarker + "\"";
  for (size_t at; (at = s.find(marker)) != std::string::npos;)
    s.replace(at, marker.size(), std::string(kDeep, '[') + std::string(kDeep, ']'));
  return s;
}

// Integer fields: zero, signs, the 2^31, 2^32, 2^62, 2^63 and 2^64 edges, non-integers.
const std::vector<ojson>& odd_numbers() {
  static const std::vector<ojson> v = {0, 1, -1, 2, 3, 16, 4.9, 8.5, 64.5, 2.0, -0.0, 1e300, -1e300,
                                       std::numeric_limits<int32_t>::max(), int64_t{1} << 31, int64_t{1} << 32,
                                       int64_t{1} << 20, int64_t{1} << 30, kMaxDim - 1, kMaxDim, kMaxDim + 1,
                                       uint64_t{1} << 63, std::numeric_limits<uint64_t>::max(),
                                       std::numeric_limits<int64_t>::max(), std::numeric_limits<int64_t>::min()};
  return v;
}

// Values of the wrong type, or odd strings.
const std::vector<ojson>& odd_values() {
  static const std::vector<ojson> v = {nullptr, true, false, "", "3", "F32", "\u00fc\u2028\U0001F600",
                                       std::string(1, '\0'), std::string(2000, 'a'), ojson::array(),
                                       ojson::object(), ojson::array({1, 2}), ojson{{"k", 1}}, kDeepMarker};
  return v;
}

const ojson& odd_value(sl::Rng& rng) {
  const auto& n = odd_numbers();
  const auto& o = odd_values();
  const size_t i = rng.below(n.size() + o.size());
  return i < n.size() ? n[i] : o[i - n.size()];
}

// Replaces one value somewhere inside v, or deletes an object key; returns what it did.
std::string mutate_value(ojson& v, sl::Rng& rng) {
  ojson* cur = &v;
  std::string path = "$";
  while ((cur->is_object() || cur->is_array()) && !cur->empty() && rng.below(4) != 0) {
    const size_t i = rng.below(cur->size());
    if (cur->is_array()) {
      path += "[" + std::to_string(i) + "]";
      cur = &(*cur)[i];
      continue;
    }
    auto it = std::next(cur->begin(), (std::ptrdiff_t)i);
    path += "." + it.key();
    if (rng.below(6) == 0) {
      cur->erase(it);
      return "delete " + path;
    }
    cur = &it.value();
  }
  const ojson& odd = odd_value(rng);
  *cur = odd;
  return "set " + path + " = " + odd.dump().substr(0, 40);
}

// ---------------------------------------------------------------------------------------------
// safetensors

struct StParts {
  ojson header;
  std::string data;
};

uint64_t st_header_len(const std::string& file) {
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | (uint8_t)file[i];
  return n;
}

StParts st_split(const std::string& file) {
  const uint64_t n = st_header_len(file);
  return {ojson::parse(file.substr(8, n)), file.substr(8 + n)};
}

std::string with_header_length(std::string file, uint64_t n) {
  for (int i = 0; i < 8; ++i) file[i] = (char)(n >> (8 * i));
  return file;
}

std::string st_join(const std::string& header_text, const std::string& data) {
  return with_header_length(std::string(8, '\0') + header_text + data, header_text.size());
}

std::vector<std::string> tensor_names(const ojson& header) {
  std::vector<std::string> names;
  for (auto& [k, v] : header.items())
    if (k != "__metadata__") names.push_back(k);
  return names;
}

// The 8-byte length rewritten: zero, off by one, the whole file, past the end, the cap, 2^63, 2^64-1.
std::vector<Mutant> header_length_mutants(const std::string& file) {
  const uint64_t n = st_header_len(file), size = file.size();
  std::vector<Mutant> out;
  for (uint64_t v : {uint64_t{0}, uint64_t{1}, uint64_t{2}, n - 1, n + 1, n + 7, size - 8, size - 7, size,
                     uint64_t{100} << 20, (uint64_t{100} << 20) + 1, uint64_t{1} << 32, uint64_t{1} << 63,
                     std::numeric_limits<uint64_t>::max()})
    out.push_back({"header length " + std::to_string(v), with_header_length(file, v)});
  return out;
}

// Every prefix length crosses every boundary: inside the length, the JSON, each tensor's data.
std::vector<Mutant> all_truncations(const std::string& file) {
  std::vector<Mutant> out;
  for (size_t n = 0; n < file.size(); ++n) out.push_back(truncated(file, n));
  return out;
}

// Prefixes at the boundaries only: the length, the header's end, each tensor's first and last byte.
std::vector<Mutant> boundary_truncations(const std::string& file) {
  const uint64_t n = st_header_len(file);
  std::vector<size_t> cuts = {0, 4, 7, 8, 9, 8 + n - 1, 8 + n, 8 + n + 1, file.size() - 1};
  const ojson header = st_split(file).header;
  for (auto& [name, e] : header.items()) {
    if (name == "__metadata__") continue;
    for (uint64_t off : {e["data_offsets"][0].get<uint64_t>(), e["data_offsets"][1].get<uint64_t>()})
      for (uint64_t d : {uint64_t{0}, uint64_t{1}}) cuts.push_back(8 + n + off - d);
  }
  std::vector<Mutant> out;
  for (size_t c : cuts)
    if (c < file.size()) out.push_back(truncated(file, c));
  return out;
}

Mutant mutate_dtype(StParts p, const std::string& t, sl::Rng& rng) {
  static const std::vector<ojson> dtypes = {"F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8",
                                            "U8", "BOOL", "U16", "U32", "U64", "f32", "Q4", "",
                                            "F8_E4M3", 4, nullptr, ojson::array({"F32"}), kDeepMarker};
  const ojson& d = dtypes[rng.below(dtypes.size())];
  p.header[t]["dtype"] = d;
  return {"dtype of " + t + " = " + d.dump(), st_join(dump_text(p.header), p.data)};
}

Mutant mutate_shape(StParts p, const std::string& t, sl::Rng& rng) {
  ojson& shape = p.header[t]["shape"];
  const ojson& odd = odd_value(rng);
  std::string label;
  switch (rng.below(6)) {
    case 0:
      if (shape.empty()) shape.push_back(odd);
      else shape[rng.below(shape.size())] = odd;
      label = "a dimension = " + odd.dump().substr(0, 40);
      break;
    case 1:
      shape.insert(shape.begin() + (std::ptrdiff_t)rng.below(shape.size() + 1), odd);
      label = "extra dimension " + odd.dump().substr(0, 40);
      break;
    case 2:
      if (!shape.empty()) shape.erase(shape.begin() + (std::ptrdiff_t)rng.below(shape.size()));
      label = "a dimension removed";
      break;
    case 3: {  // the product stays small (zero) however large the later dimension
      static const std::vector<uint64_t> huge = {uint64_t{1} << 62, (uint64_t{1} << 62) + 1, uint64_t{1} << 63,
                                                 std::numeric_limits<uint64_t>::max()};
      const uint64_t h = huge[rng.below(huge.size())];
      shape = ojson::array({0, h});
      p.header[t]["data_offsets"][1] = p.header[t]["data_offsets"][0];
      label = "shape [0, " + std::to_string(h) + "] with no data";
      break;
    }
    case 4:
      std::reverse(shape.begin(), shape.end());
      label = "dimensions reversed";
      break;
    default:
      shape = odd;
      label = "shape = " + odd.dump().substr(0, 40);
  }
  return {"shape of " + t + ": " + label, st_join(dump_text(p.header), p.data)};
}

Mutant mutate_offsets(StParts p, const std::string& t, sl::Rng& rng) {
  ojson& off = p.header[t]["data_offsets"];
  const auto names = tensor_names(p.header);
  const uint64_t b = off[0].get<uint64_t>(), e = off[1].get<uint64_t>(), size = p.data.size();
  std::string label;
  switch (rng.below(7)) {
    case 0: off = ojson::array({e, b}); label = "reversed"; break;
    case 1: {
      const std::string& other = names[rng.below(names.size())];
      off = p.header[other]["data_offsets"];
      label = "those of " + other;
      break;
    }
    case 2: off = ojson::array({b + 1, e + 1}); label = "shifted by one"; break;
    case 3: off = ojson::array({size, size + (e - b)}); label = "past the end"; break;
    case 4: off[rng.below(2)] = odd_value(rng); label = "one = " + off.dump().substr(0, 60); break;
    case 5: off.push_back(e); label = "three entries"; break;
    default: off = odd_value(rng); label = "not an array: " + off.dump().substr(0, 40);
  }
  return {"data_offsets of " + t + ": " + label, st_join(dump_text(p.header), p.data)};
}

Mutant mutate_entry(StParts p, const std::string& t, sl::Rng& rng) {
  static const char* fields[] = {"dtype", "shape", "data_offsets"};
  std::string label;
  switch (rng.below(4)) {
    case 0: {
      const char* f = fields[rng.below(3)];
      p.header[t].erase(f);
      label = std::string("without ") + f;
      break;
    }
    case 1: p.header[t] = odd_value(rng); label = "entry = " + p.header[t].dump().substr(0, 40); break;
    case 2: p.header[t]["extra"] = odd_value(rng); label = "extra field"; break;
    default: {
      static const std::vector<std::string> names = {"", "__metadata__", std::string(300, 'n'), "\u00e9", "a\nb"};
      ojson renamed;
      const std::string to = names[rng.below(names.size())];
      for (auto& [k, v] : p.header.items()) renamed[k == t ? to : k] = v;
      p.header = renamed;
      label = "renamed to \"" + to.substr(0, 20) + "\"";
    }
  }
  return {t + ": " + label, st_join(dump_text(p.header), p.data)};
}

Mutant mutate_metadata(StParts p, sl::Rng& rng) {
  const ojson& odd = odd_value(rng);
  std::string label;
  switch (rng.below(3)) {
    case 0: p.header["__metadata__"] = odd; label = "= " + odd.dump().substr(0, 40); break;
    case 1: p.header["__metadata__"]["k"] = odd; label = "value = " + odd.dump().substr(0, 40); break;
    default: p.header.erase("__metadata__"); label = "removed";
  }
  return {"__metadata__ " + label, st_join(dump_text(p.header), p.data)};
}

// The header as a whole: not an object, empty, duplicate keys, bytes after the JSON, resized data.
Mutant mutate_header_text(StParts p, const std::string& t, sl::Rng& rng) {
  std::string text = dump_text(p.header);
  switch (rng.below(6)) {
    case 0: return {"header = odd value", st_join(dump_text(odd_value(rng)), p.data)};
    case 1: return {"header {}", st_join("{}", p.data)};
    case 2: {  // a second entry for t, before the real one (JSON parsers differ on which wins)
      ojson dup = p.header[t];
      dup["data_offsets"] = ojson::array({0, p.data.size()});
      return {"duplicate key " + t, st_join("{\"" + t + "\":" + dup.dump() + "," + text.substr(1), p.data)};
    }
    case 3: {
      static const std::vector<std::string> tails = {" ", std::string(3, '\0'), "x", "{}", "\xff"};
      return {"bytes after the JSON", st_join(text + tails[rng.below(tails.size())], p.data)};
    }
    case 4: return {"data grown", st_join(text, p.data + std::string(rng.range(1, 16), '\x7f'))};
    default: {
      const size_t cut = std::min<size_t>(p.data.size(), rng.range(1, 16));
      return {"data shrunk", st_join(text, p.data.substr(0, p.data.size() - cut))};
    }
  }
}

Mutant header_mutant(const std::string& file, sl::Rng& rng) {
  StParts p = st_split(file);
  const auto names = tensor_names(p.header);
  const std::string& t = names[rng.below(names.size())];
  switch (rng.below(6)) {
    case 0: return mutate_dtype(p, t, rng);
    case 1: return mutate_shape(p, t, rng);
    case 2: return mutate_offsets(p, t, rng);
    case 3: return mutate_entry(p, t, rng);
    case 4: return mutate_metadata(p, rng);
    default: return mutate_header_text(p, t, rng);
  }
}

// What an accepted file guarantees its users: sane shapes and views that can be read in full.
std::string st_invariant_problem(const sl::SafetensorsFile& f, size_t file_size) {
  for (const auto& [name, t] : f.tensors()) {
    for (int64_t d : t.shape)
      if (d < 0 || d >= kMaxDim) return "accepted tensor " + name + " with dimension " + std::to_string(d);
    if (t.numel() < 0 || t.nbytes != (size_t)t.numel() * sl::dtype_size(t.dtype) || t.nbytes > file_size)
      return "accepted tensor " + name + " with " + std::to_string(t.nbytes) + " bytes for its shape";
    volatile uint8_t acc = 0;  // every byte read: a view past the mapping faults here
    for (size_t i = 0; i < t.nbytes; ++i) acc = (uint8_t)(acc ^ t.data[i]);
  }
  return "";
}

// Small valid files: mixed dtypes, an empty tensor, a scalar, misaligned sizes, with and without metadata.
std::vector<std::string> safetensors_seeds(const std::string& dir) {
  const std::vector<float> f = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f, -0.125f};
  const std::vector<uint16_t> h = {0x3f80, 0xc000, 0x0001};
  const std::vector<int64_t> i = {42};
  const std::vector<uint8_t> b = {1, 2, 3, 4, 5};
  const std::vector<std::vector<sl::TensorBlob>> files = {
      {{"a.weight", "F32", {2, 3}, f.data(), 24},
       {"b", "BF16", {3}, h.data(), 6},
       {"empty", "F32", {0, 4}, f.data(), 0}},
      {{"scalar", "I64", {}, i.data(), 8}},
      {{"u", "U8", {5}, b.data(), 5}, {"half", "F16", {1, 1, 2}, h.data(), 4}, {"w", "F32", {3, 1}, f.data(), 12}}};
  std::vector<std::string> seeds;
  for (size_t k = 0; k < files.size(); ++k) {
    const std::string path = dir + "/seed" + std::to_string(k) + ".safetensors";
    if (k == 1) sl::write_safetensors(path, files[k], {});
    else sl::write_safetensors(path, files[k]);
    seeds.push_back(sl_test::read_file(path));
  }
  return seeds;
}

// ---------------------------------------------------------------------------------------------
// config.json and model directories

sl::ModelConfig tiny_config() {
  sl::ModelConfig c;
  c.dim = 8;
  c.hidden_dim = 16;
  c.n_layers = 2;
  c.n_heads = 2;
  c.n_kv_heads = 1;
  c.vocab_size = 32;
  c.max_seq_len = 16;
  return c;
}

// The integer keys and where from_json puts them: an accepted config must hold exactly the JSON value.
const std::vector<std::pair<const char*, int64_t sl::ModelConfig::*>>& int_keys() {
  static const std::vector<std::pair<const char*, int64_t sl::ModelConfig::*>> keys = {
      {"hidden_size", &sl::ModelConfig::dim},
      {"intermediate_size", &sl::ModelConfig::hidden_dim},
      {"num_hidden_layers", &sl::ModelConfig::n_layers},
      {"num_attention_heads", &sl::ModelConfig::n_heads},
      {"num_key_value_heads", &sl::ModelConfig::n_kv_heads},
      {"vocab_size", &sl::ModelConfig::vocab_size},
      {"max_position_embeddings", &sl::ModelConfig::max_seq_len},
      {"bos_token_id", &sl::ModelConfig::bos_id},
      {"eos_token_id", &sl::ModelConfig::eos_id}};
  return keys;
}

const std::vector<std::string>& config_keys() {
  static const std::vector<std::string> keys = [] {
    std::vector<std::string> k;
    for (auto& [name, field] : int_keys()) k.push_back(name);
    for (const char* s : {"rms_norm_eps", "rope_theta", "tie_word_embeddings", "torch_dtype", "model_type",
                          "rope_scaling", "sortedllama"})
      k.push_back(s);
    return k;
  }();
  return keys;
}

std::string config_invariant_problem(const json& j, const sl::ModelConfig& c) {
  for (auto& [key, field] : int_keys()) {
    if (!j.contains(key) || j[key].is_null()) continue;
    const json& v = j[key];
    if (!v.is_number_integer() || v.get<int64_t>() != c.*field || (v.is_number_unsigned() && c.*field < 0))
      return std::string("accepted \"") + key + "\": " + v.dump() + " as " + std::to_string(c.*field);
  }
  if (j.contains("sortedllama") && j["sortedllama"].is_object() && j["sortedllama"].contains("ict_exits")) {
    const json& e = j["sortedllama"]["ict_exits"];
    bool same = e.is_array() && e.size() == c.ict_exits.size();
    for (size_t i = 0; same && i < e.size(); ++i)
      same = e[i].is_number_integer() && e[i].get<int64_t>() == c.ict_exits[i];
    if (!same) return "accepted sortedllama.ict_exits " + e.dump().substr(0, 60);
  }
  return "";
}

// One key set to an odd value (sortedllama: odd exits); returns what it did. The deep marker stays
// a string until dump_text().
std::string set_config_key(ojson& cfg, const std::string& key, const ojson& value) {
  if (key == "sortedllama") cfg[key] = {{"ict_exits", ojson::array({1, value})}};
  else cfg[key] = value;
  return key + " = " + value.dump().substr(0, 40);
}

std::string mutate_config(ojson& cfg, sl::Rng& rng) {
  const auto& keys = config_keys();
  const std::string& key = keys[rng.below(keys.size())];
  if (rng.below(8) == 0) {
    cfg.erase(key);
    return "without " + key;
  }
  return set_config_key(cfg, key, odd_value(rng));
}

// A tiny saved model: one file (untied, an ICT exit head) or shards with an index (tied).
std::string tiny_model_dir(const std::string& dir, bool sharded) {
  sl::ModelConfig c = tiny_config();
  c.tie_embeddings = sharded;
  if (!sharded) c.ict_exits = {1};
  sl::Llama m(c);
  m->init_weights(0.5, 3);
  sl::save_model(m, dir, "", torch::kFloat32, sharded ? 1500 : 5'000'000'000LL);
  return dir;
}

Mutant index_mutant(const std::string& text, const std::vector<std::string>& shards, sl::Rng& rng) {
  ojson idx = ojson::parse(text);
  ojson& map = idx["weight_map"];
  auto entry = std::next(map.begin(), (std::ptrdiff_t)rng.below(map.size()));
  const std::string name = entry.key();
  static const std::vector<std::string> hostile = {"", ".", "..", "../model.safetensors", "/etc/passwd", "config.json",
                                                   "model.safetensors.index.json", "missing.safetensors",
                                                   std::string("a\0b", 3)};
  switch (rng.below(6)) {
    case 0: {
      const std::string& s = shards[rng.below(shards.size())];
      *entry = s;
      return {name + " -> " + s, idx.dump()};
    }
    case 1: {
      const std::string& h = hostile[rng.below(hostile.size())];
      *entry = h;
      return {name + " -> \"" + h + "\"", idx.dump()};
    }
    case 2: *entry = odd_value(rng); return {name + " -> " + entry->dump().substr(0, 40), dump_text(idx)};
    case 3: map.erase(entry); return {"without " + name, idx.dump()};
    case 4: map["model.extra.weight"] = shards[0]; return {"an unknown tensor", idx.dump()};
    default: {
      const std::string label = mutate_value(idx, rng);
      return {label, dump_text(idx)};
    }
  }
}

// One file of a model directory mutated as what it is, or as bytes.
Mutant model_file_mutant(const std::string& file, const std::string& original, const std::vector<std::string>& shards,
                         sl::Rng& rng) {
  const int k = (int)rng.below(3);
  if (k == 0) return byte_mutant(original, rng);
  if (file == "config.json") {
    ojson c = ojson::parse(original);
    const std::string label = mutate_config(c, rng);
    return {label, dump_text(c)};
  }
  if (file == "model.safetensors.index.json") return index_mutant(original, shards, rng);
  if (k == 1) return header_mutant(original, rng);
  const auto cuts = boundary_truncations(original);
  return cuts[rng.below(cuts.size())];
}

// ---------------------------------------------------------------------------------------------
// Data records

// Lines duplicated, dropped, swapped or joined, or a stray line inserted.
Mutant line_mutant(const std::string& text, sl::Rng& rng) {
  std::vector<std::string> lines;
  for (size_t at = 0; at < text.size();) {
    size_t nl = text.find('\n', at);
    if (nl == std::string::npos) nl = text.size();
    lines.push_back(text.substr(at, nl - at));
    at = nl + 1;
  }
  if (lines.empty()) lines.push_back("");
  const size_t i = rng.below(lines.size()), j = rng.below(lines.size());
  std::string label;
  static const std::vector<std::string> strays = {"{", "[]", "null", "{}", "   ", "\r", "[{\"a\": 1}]", "1", "\"x\""};
  switch (rng.below(5)) {
    case 0:
      lines.insert(lines.begin() + (std::ptrdiff_t)i, lines[j]);
      label = "line " + std::to_string(j) + " repeated";
      break;
    case 1: lines.erase(lines.begin() + (std::ptrdiff_t)i); label = "line " + std::to_string(i) + " dropped"; break;
    case 2: std::swap(lines[i], lines[j]); label = "lines swapped"; break;
    case 3:
      if (i + 1 < lines.size()) {
        lines[i] += lines[i + 1];
        lines.erase(lines.begin() + (std::ptrdiff_t)i + 1);
      }
      label = "lines joined";
      break;
    default: {
      const std::string& s = strays[rng.below(strays.size())];
      lines.insert(lines.begin() + (std::ptrdiff_t)i, s);
      label = "stray line " + s;
    }
  }
  std::string out;
  for (size_t k = 0; k < lines.size(); ++k) out += lines[k] + (k + 1 < lines.size() ? "\n" : "");
  return {label, out};
}

// One value inside one record changed: the whole document for JSON, one line for JSONL.
Mutant record_value_mutant(const std::string& text, sl::Rng& rng) {
  const size_t first = text.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && (text[first] == '[' || text.compare(first, 7, "{\"Data\"") == 0)) {
    ojson doc = ojson::parse(text);
    const std::string label = mutate_value(doc, rng);
    return {label, dump_text(doc)};
  }
  std::vector<size_t> starts = {0};
  for (size_t at = text.find('\n'); at != std::string::npos && at + 1 < text.size(); at = text.find('\n', at + 1))
    starts.push_back(at + 1);
  const size_t k = rng.below(starts.size()), begin = starts[k];
  const size_t end = std::min(text.find('\n', begin), text.size());
  ojson rec = ojson::parse(text.substr(begin, end - begin));
  const std::string label = "line " + std::to_string(k + 1) + ": " + mutate_value(rec, rng);
  return {label, text.substr(0, begin) + dump_text(rec) + text.substr(end)};
}

Mutant data_mutant(const std::string& text, sl::Rng& rng) {
  switch (rng.below(4)) {
    case 0: return byte_mutant(text, rng);
    case 1: return line_mutant(text, rng);
    case 2: return truncated(text, rng.below(text.size() + 1));
    default: return record_value_mutant(text, rng);
  }
}

std::string jsonl(const std::vector<ojson>& records) {
  std::string s;
  for (const auto& r : records) s += r.dump() + "\n";
  return s;
}

// Valid inputs of a load_examples format: JSONL and a JSON array.
std::vector<std::string> example_seeds(const std::string& format) {
  std::vector<ojson> r;
  if (format == "alpaca")
    r = {{{"instruction", "Say hi"}, {"input", ""}, {"output", "Hi there."}},
         {{"instruction", "Add"}, {"input", "2 and 3"}, {"output", "5"}},
         {{"instruction", "Name a colour"}, {"input", nullptr}, {"output", "Blue"}}};
  else if (format == "triviaqa")
    r = {{{"question", "Who wrote Hamlet"}, {"answers", {"Shakespeare", "William Shakespeare"}}},
         {{"question", "Capital of France"}, {"answer", {{"value", "Paris"}, {"aliases", {"paris", "Paris"}}}}}};
  else
    r = {{{"text", "Once upon a time there was a cat."}}, {{"text", "The dog ran home."}}};
  return {jsonl(r), ojson(r).dump(1)};
}

// Valid inputs of every prepare_dataset kind.
std::vector<std::string> prepare_seeds(const std::string& kind) {
  if (kind == "alpaca") return example_seeds("alpaca");
  if (kind == "triviaqa") {
    const ojson official = {{"Data",
                             {{{"Answer", {{"Aliases", {"Paris", "paris"}}, {"Value", "Paris"}}},
                               {"EntityPages", ojson::array()},
                               {"Question", "Capital of France"},
                               {"QuestionId", "tc_1"},
                               {"SearchResults", ojson::array()}}}},
                            {"Domain", "Web"},
                            {"Version", 1.0}};
    const ojson hf = {{"question", "Who wrote Hamlet"},
                      {"question_id", "tc_2"},
                      {"answer", {{"value", "Shakespeare"}, {"aliases", {"William Shakespeare"}}}}};
    const ojson flat = {{"question_id", 3}, {"question", "Two plus two"}, {"answers", {"four", "4"}}};
    return {official.dump(), jsonl({hf, flat})};
  }
  if (kind == "pandalm")
    return {ojson::array({{{"motivation_app", "Writing"}, {"instruction", "Write a poem"}, {"input", "about rain"}},
                          {{"motivation_app", "Math"}, {"instruction", "Add 2 and 2"}, {"input", ""}}})
                .dump(1)};
  if (kind == "vicuna")
    return {jsonl({{{"question_id", 1}, {"category", "generic"}, {"turns", {"How are you?"}}},
                   {{"question_id", 2}, {"category", "math"}, {"turns", {"What is 2+2?", "And 3+3?"}}}})};
  if (kind == "koala") return {jsonl({{{"id", "k1"}, {"prompt", "Tell a joke"}}, {{"id", 7}, {"prompt", "Hello"}}})};
  return {jsonl({{{"id", "s1"},
                  {"instruction", "Translate"},
                  {"instances", {{{"input", "hola"}, {"output", "hello"}}, {{"input", "adios"}, {"output", "bye"}}}}},
                 {{"id", "s2"}, {"instruction", "Greet"}, {"instances", {{{"input", ""}, {"output", "Hi"}}}}}})};
}

std::string examples_invariant_problem(const std::vector<sl::Example>& ex, const sl::DataOptions& o, int vocab) {
  for (const auto& e : ex) {
    if (e.tokens.size() < 2 || (int64_t)e.tokens.size() > o.max_seq_len || e.target.size() != e.tokens.size() ||
        e.target[0] != 0 || std::count(e.target.begin(), e.target.end(), 1) == 0)
      return "accepted an example with " + std::to_string(e.tokens.size()) + " tokens and bad targets";
    for (int t : e.tokens)
      if (t < 0 || t >= vocab) return "token " + std::to_string(t) + " outside the vocabulary";
  }
  return "";
}

// ---------------------------------------------------------------------------------------------
// llama2.c checkpoints

const char* kLlama2cFields[7] = {"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "max_seq_len"};

// A valid .bin for the 512-piece stories tokenizer; negative vocab_size: a separate classifier.
std::string llama2c_bin(bool shared_classifier) {
  const int32_t D = 8, I = 16, L = 2, H = 2, KV = 1, V = 512, T = 16, hd = D / H;
  const int32_t header[7] = {D, I, L, H, KV, shared_classifier ? V : -V, T};
  const int64_t floats = V * D + L * D + L * D * D + 2 * L * KV * hd * D + L * D * D + L * D + 3 * L * I * D + D +
                         T * hd + (shared_classifier ? 0 : V * D);
  std::string bytes(reinterpret_cast<const char*>(header), sizeof(header));
  for (int64_t i = 0; i < floats; ++i) {
    const float v = (float)((i * 37) % 17 - 8) * 0.01f;
    bytes.append(reinterpret_cast<const char*>(&v), 4);
  }
  return bytes;
}

Mutant with_llama2c_field(std::string bin, int field, int32_t value) {
  std::memcpy(&bin[4 * field], &value, 4);
  return {std::string(kLlama2cFields[field]) + " = " + std::to_string(value), bin};
}

// Each header field set to zero, signs, neighbours, multiples and the int32 edges.
std::vector<Mutant> llama2c_field_mutants(const std::string& bin) {
  std::vector<Mutant> out;
  for (int f = 0; f < 7; ++f) {
    int32_t v;
    std::memcpy(&v, &bin[4 * f], 4);
    for (int64_t x : {int64_t{0}, int64_t{-1}, int64_t{1}, int64_t{2}, int64_t{3}, int64_t{v} - 1, int64_t{v} + 1,
                      int64_t{v} * 2, int64_t{v} / 2, -int64_t{v}, int64_t{1} << 17, (int64_t{1} << 17) + 1,
                      int64_t{1} << 22, int64_t{std::numeric_limits<int32_t>::max()},
                      int64_t{std::numeric_limits<int32_t>::min()}})
      out.push_back(with_llama2c_field(bin, f, (int32_t)x));
  }
  return out;
}

// Head counts: more KV heads than heads, heads not dividing dim, odd head dims; and one change
// that keeps every size (head dim 2 instead of 4, twice the positions), so the file still converts.
std::vector<Mutant> llama2c_head_mutants(const std::string& bin) {
  static const std::vector<std::pair<int32_t, int32_t>> heads = {{1, 2}, {2, 4}, {3, 1}, {4, 4}, {8, 1},
                                                                 {8, 8}, {16, 1}, {2, 2}, {8, 4}};
  std::vector<Mutant> out;
  for (auto [h, kv] : heads) {
    Mutant m = with_llama2c_field(with_llama2c_field(bin, 3, h).bytes, 4, kv);
    m.label = "n_heads " + std::to_string(h) + ", n_kv_heads " + std::to_string(kv);
    out.push_back(m);
  }
  Mutant same_sizes = with_llama2c_field(with_llama2c_field(with_llama2c_field(bin, 3, 4).bytes, 4, 2).bytes, 6, 32);
  same_sizes.label = "n_heads 4, n_kv_heads 2, max_seq_len 32";
  out.push_back(same_sizes);
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------

TEST(Fuzz, SafetensorsFiles) {
  QuietLogs quiet;
  const std::string dir = sl_test::temp_dir("fuzz-st");
  const std::string path = dir + "/x.safetensors";
  Fuzz fuzz("SafetensorsFile");
  sl::Rng rng(kSeed);
  auto feed = [&](const std::string& seed, const Mutant& m) {
    put_file(path, m.bytes);
    fuzz.feed(seed + ": " + m.label, path, [&] {
      sl::SafetensorsFile f(path);
      if (std::string p = st_invariant_problem(f, m.bytes.size()); !p.empty()) fuzz.finding(seed + ": " + m.label, p);
    });
  };
  const auto seeds = safetensors_seeds(dir);
  for (size_t s = 0; s < seeds.size(); ++s) {
    const std::string seed = "seed " + std::to_string(s);
    for (const Mutant& m : all_truncations(seeds[s])) feed(seed, m);
    for (const Mutant& m : header_length_mutants(seeds[s])) feed(seed, m);
    for (int i = 0; i < 1000; ++i) feed(seed + " #" + std::to_string(i), byte_mutant(seeds[s], rng));
    for (int i = 0; i < 1500; ++i) feed(seed + " #" + std::to_string(i), header_mutant(seeds[s], rng));
  }
  fuzz.finish(8100);
}

TEST(Fuzz, ConfigJson) {
  const std::string dir = sl_test::temp_dir("fuzz-config");
  const std::string source = dir + "/config.json";
  sl::ModelConfig base_cfg = tiny_config();
  base_cfg.ict_exits = {1};
  const ojson base = ojson::parse(base_cfg.to_json().dump());
  sl::Rng rng(kSeed);

  Fuzz values("ModelConfig::from_json");
  auto feed_json = [&](const Mutant& m) {
    const json j = json::parse(m.bytes);  // parsed once and never copied: it may be deeply nested
    values.feed(m.label, source, [&] {
      const sl::ModelConfig c = sl::ModelConfig::from_json(j, source);
      if (std::string p = config_invariant_problem(j, c); !p.empty()) values.finding(m.label, p);
    });
  };
  for (const std::string& key : config_keys()) {
    for (const auto* values : {&odd_numbers(), &odd_values()})
      for (const ojson& v : *values) {
        ojson c = base;
        const std::string label = set_config_key(c, key, v);
        feed_json({label, dump_text(c)});
      }
  }
  for (int i = 0; i < 1500; ++i) {  // two or three keys at once
    ojson c = base;
    std::string label = "#" + std::to_string(i);
    for (int k = rng.range(2, 3); k > 0; --k) label += " " + mutate_config(c, rng);
    feed_json({label, dump_text(c)});
  }
  values.finish(2100);

  Fuzz files("ModelConfig::from_file");
  const std::string text = base.dump(2);
  auto feed_file = [&](const Mutant& m) {
    put_file(source, m.bytes);
    files.feed(m.label, source, [&] { sl::ModelConfig::from_file(source); });
  };
  for (size_t n = 0; n < text.size(); n += 3) feed_file(truncated(text, n));
  for (int i = 0; i < 800; ++i) feed_file(byte_mutant(text, rng));
  fs::remove(source);
  feed_file({"missing file", ""});
  files.finish(1000);
}

TEST(Fuzz, ModelDirectories) {
  QuietLogs quiet;
  const std::string root = sl_test::temp_dir("fuzz-model");
  Fuzz fuzz("load_model");
  sl::Rng rng(kSeed);
  for (bool sharded : {false, true}) {
    const std::string base = tiny_model_dir(root + (sharded ? "/sharded" : "/single"), sharded);
    const std::string work = root + "/work";
    fs::remove_all(work);
    fs::copy(base, work);
    ASSERT_NO_THROW(sl::load_model(work));
    std::vector<std::string> files, shards;
    for (auto& e : fs::directory_iterator(base)) files.push_back(e.path().filename().string());
    std::sort(files.begin(), files.end());
    for (const auto& f : files)
      if (f.size() > 12 && f.compare(f.size() - 12, 12, ".safetensors") == 0) shards.push_back(f);

    for (int i = 0; i < 1500; ++i) {
      const std::string& f = files[rng.below(files.size())];
      const std::string original = sl_test::read_file(base + "/" + f);
      const std::string label = std::string(sharded ? "sharded" : "single") + " #" + std::to_string(i) + " " + f;
      if (rng.below(30) == 0) {
        fs::remove(work + "/" + f);
        fuzz.feed(label + " deleted", work, [&] { sl::load_model(work); });
      } else {
        const Mutant m = model_file_mutant(f, original, shards, rng);
        put_file(work + "/" + f, m.bytes);
        fuzz.feed(label + ": " + m.label, work, [&] { sl::load_model(work); });
      }
      put_file(work + "/" + f, original);
    }
  }
  fuzz.finish(3000);
}

TEST(Fuzz, DataRecords) {
  QuietLogs quiet;
  const std::string dir = sl_test::temp_dir("fuzz-data");
  const std::string path = dir + "/records.jsonl";
  const sl::Tokenizer tok(sl_test::shared_dir() + "/models/stories260K/tok512.model");
  sl::Rng rng(kSeed);

  Fuzz examples("load_examples"), records("read_records");
  for (const char* format : {"alpaca", "triviaqa", "text"}) {
    for (const std::string& seed : example_seeds(format)) {
      for (int i = 0; i < 500; ++i) {
        const Mutant m = data_mutant(seed, rng);
        const std::string label = std::string(format) + " #" + std::to_string(i) + ": " + m.label;
        put_file(path, m.bytes);
        sl::DataOptions o;
        o.format = format;
        o.on_bad_record = rng.below(2) ? "fail" : "skip";
        o.max_seq_len = std::vector<int64_t>{2, 8, 64, 512}[rng.below(4)];
        o.train_on_prompt = rng.below(2);
        o.answer_alias = (int)rng.below(3);
        examples.feed(label, path, [&] {
          const auto ex = sl::load_examples(path, tok, o, nullptr);
          const std::string p = examples_invariant_problem(ex, o, tok.vocab_size());
          if (!p.empty()) examples.finding(label, p);
        });
        records.feed(label, path, [&] { sl::read_records(path); });
      }
    }
  }
  examples.finish(3000);
  records.finish(3000);

  Fuzz prepare("prepare_dataset");
  const ShmDir shm;
  const std::string out = (shm.path.empty() ? dir : shm.path) + "/out.jsonl";
  for (const std::string& kind : sl::prepare_kinds()) {
    for (const std::string& seed : prepare_seeds(kind)) {
      for (int i = 0; i < 300; ++i) {
        const Mutant m = data_mutant(seed, rng);
        const std::string label = kind + " #" + std::to_string(i) + ": " + m.label;
        put_file(path, m.bytes);
        prepare.feed(label, path, [&] {
          const sl::PrepareResult r = sl::prepare_dataset(kind, path, out);
          int64_t lines = 0;
          std::ifstream f(out);
          for (std::string line; std::getline(f, line); ++lines)
            if (!json::parse(line, nullptr, false).is_object())
              prepare.finding(label, "wrote a line that is not a JSON object");
          if (lines != r.records_out)
            prepare.finding(label, "wrote " + std::to_string(lines) + " records, counted " + std::to_string(r.records_out));
        });
      }
    }
  }
  prepare.finish(2400);
}

TEST(Fuzz, Llama2cCheckpoints) {
  QuietLogs quiet;
  const std::string dir = sl_test::temp_dir("fuzz-llama2c");
  const std::string path = dir + "/model.bin", out = dir + "/out";
  const std::string tokenizer = sl_test::shared_dir() + "/models/stories260K/tok512.model";
  Fuzz fuzz("convert_llama2c");
  sl::Rng rng(kSeed);
  for (bool shared_classifier : {true, false}) {
    const std::string bin = llama2c_bin(shared_classifier);
    const std::string seed = shared_classifier ? "tied" : "separate classifier";
    auto feed = [&](const Mutant& m) {
      put_file(path, m.bytes);
      fuzz.feed(seed + ": " + m.label, path, [&] {
        sl::convert_llama2c(path, tokenizer, out);
        const sl::ModelConfig c = sl::load_model(out)->config();
        int32_t h[7];
        std::memcpy(h, m.bytes.data(), sizeof(h));
        if (c.dim != h[0] || c.hidden_dim != h[1] || c.n_layers != h[2] || c.n_heads != h[3] ||
            c.n_kv_heads != h[4] || c.vocab_size != std::abs(h[5]) || c.tie_embeddings != (h[5] > 0) ||
            c.max_seq_len != h[6])
          fuzz.finding(seed + ": " + m.label, "converted model's config differs from the header");
      });
    };
    feed({"unchanged", bin});
    for (const Mutant& m : llama2c_field_mutants(bin)) feed(m);
    for (const Mutant& m : llama2c_head_mutants(bin)) feed(m);
    for (size_t n : {size_t{0}, size_t{1}, size_t{4}, size_t{27}, size_t{28}, size_t{29}, size_t{32}, bin.size() / 2,
                     bin.size() - 4, bin.size() - 1})
      feed(truncated(bin, n));
    feed({"trailing byte", bin + "x"});
    feed({"trailing float", bin + std::string(4, '\0')});
    for (int i = 0; i < 120; ++i) {
      Mutant m = flip_bytes(bin.substr(0, 28), rng);
      feed({"header " + m.label, m.bytes + bin.substr(28)});
    }
  }
  fuzz.finish(490);
}
