#include "sortedllama/prepare.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "sortedllama/jsonl.h"

namespace sl {

// ---------------------------------------------------------------------------------------------
// SHA-256 (FIPS 180-4)

namespace {

class Sha256 {
 public:
  void update(const unsigned char* p, size_t n) {
    total_ += n;
    while (n > 0) {
      size_t take = std::min(n, size_t{64} - fill_);
      std::copy(p, p + take, block_.begin() + fill_);
      fill_ += take, p += take, n -= take;
      if (fill_ == 64) compress(), fill_ = 0;
    }
  }
  std::string hex() {
    const uint64_t bits = total_ * 8;
    const unsigned char one = 0x80, zero = 0;
    update(&one, 1);
    while (fill_ != 56) update(&zero, 1);
    unsigned char len[8];
    for (int i = 0; i < 8; ++i) len[i] = (unsigned char)(bits >> (56 - 8 * i));
    update(len, 8);
    static const char* digits = "0123456789abcdef";
    std::string out;
    for (uint32_t v : h_)
      for (int s = 28; s >= 0; s -= 4) out += digits[(v >> s) & 15];
    return out;
  }

 private:
  static uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }
  void compress() {
    static const uint32_t k[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
    uint32_t w[64];
    for (int i = 0; i < 16; ++i)
      w[i] = (uint32_t)block_[4 * i] << 24 | (uint32_t)block_[4 * i + 1] << 16 | (uint32_t)block_[4 * i + 2] << 8 |
             (uint32_t)block_[4 * i + 3];
    for (int i = 16; i < 64; ++i) {
      uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h_[0], b = h_[1], c = h_[2], d = h_[3], e = h_[4], f = h_[5], g = h_[6], h = h_[7];
    for (int i = 0; i < 64; ++i) {
      uint32_t t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
      uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      h = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    const uint32_t add[8] = {a, b, c, d, e, f, g, h};
    for (int i = 0; i < 8; ++i) h_[i] += add[i];
  }

  std::array<uint32_t, 8> h_{0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                             0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  std::array<unsigned char, 64> block_{};
  size_t fill_ = 0;
  uint64_t total_ = 0;
};

}  // namespace

std::string sha256_hex(const std::string& bytes) {
  Sha256 s;
  s.update(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size());
  return s.hex();
}

std::string sha256_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + path);
  Sha256 s;
  std::vector<char> buf(1 << 20);
  while (f) {
    f.read(buf.data(), (std::streamsize)buf.size());
    s.update(reinterpret_cast<const unsigned char*>(buf.data()), (size_t)f.gcount());
  }
  if (f.bad()) throw std::runtime_error("error reading " + path);
  return s.hex();
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) throw std::runtime_error("cannot write " + tmp);
    f.write(bytes.data(), (std::streamsize)bytes.size());
    f.close();
    if (!f) throw std::runtime_error("error writing " + tmp);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) throw std::runtime_error("cannot rename " + tmp + " to " + path);
}

// ---------------------------------------------------------------------------------------------
// Conversions

namespace {
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

[[noreturn]] void bad(const std::string& where, const std::string& what) {
  throw std::runtime_error(where + ": " + what);
}

const json& object_of(const std::string& where, const json& v) {
  if (!v.is_object()) bad(where, std::string("record is ") + v.type_name() + ", not a JSON object");
  return v;
}

// A string field that may be missing or null (read as "").
std::string optional_text(const std::string& where, const json& obj, const std::string& key) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return "";
  if (!it->is_string()) bad(where, "field \"" + key + "\" is " + it->type_name() + ", not a string");
  return it->get<std::string>();
}

// A string field that must be present and non-empty.
std::string required_text(const std::string& where, const json& obj, const std::string& key) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) bad(where, "missing field \"" + key + "\"");
  std::string s = optional_text(where, obj, key);
  if (s.empty()) bad(where, "field \"" + key + "\" is empty");
  return s;
}

// An id kept as the source has it (number or string).
json id_field(const std::string& where, const json& obj, const std::string& key) {
  auto it = obj.find(key);
  if (it == obj.end()) bad(where, "missing field \"" + key + "\"");
  if (!it->is_string() && !it->is_number_integer())
    bad(where, "field \"" + key + "\" is " + it->type_name() + ", not a string or integer");
  return *it;
}

// TriviaQA answers in order, empty and repeated aliases dropped (real exports have both).
struct Aliases {
  std::vector<std::string> list;
  void add(const std::string& where, const json& v, const std::string& what) {
    if (!v.is_string()) bad(where, what + " is " + v.type_name() + ", not a string");
    std::string s = v.get<std::string>();
    if (!s.empty() && std::find(list.begin(), list.end(), s) == list.end()) list.push_back(std::move(s));
  }
  void add_all(const std::string& where, const json& obj, const std::string& key, const std::string& what) {
    auto it = obj.find(key);
    if (it == obj.end()) return;
    if (!it->is_array()) bad(where, what + " is " + it->type_name() + ", not an array of strings");
    for (size_t i = 0; i < it->size(); ++i) add(where, (*it)[i], what + "[" + std::to_string(i) + "]");
  }
};

ojson triviaqa_record(const std::string& where, const json& r, size_t index) {
  Aliases a;
  std::string question;
  json qid;
  if (r.contains("Question")) {  // official: {Question, QuestionId, Answer: {Value, Aliases, ...}}
    question = required_text(where, r, "Question");
    qid = id_field(where, r, "QuestionId");
    auto ans = r.find("Answer");
    if (ans == r.end()) bad(where, "missing field \"Answer\" (the official test files ship without answers)");
    if (!ans->is_object()) bad(where, std::string("field \"Answer\" is ") + ans->type_name() + ", not an object");
    if (auto v = ans->find("Value"); v != ans->end()) a.add(where, *v, "field \"Answer.Value\"");
    a.add_all(where, *ans, "Aliases", "field \"Answer.Aliases\"");
  } else {
    question = required_text(where, r, "question");
    qid = r.contains("question_id") ? id_field(where, r, "question_id") : json(std::to_string(index));
    if (r.contains("answers")) {  // flat
      a.add_all(where, r, "answers", "field \"answers\"");
    } else if (auto ans = r.find("answer"); ans != r.end()) {  // HF trivia_qa
      if (!ans->is_object())
        bad(where, std::string("field \"answer\" is ") + ans->type_name() + ", not an object with value and aliases");
      if (auto v = ans->find("value"); v != ans->end()) a.add(where, *v, "field \"answer.value\"");
      a.add_all(where, *ans, "aliases", "field \"answer.aliases\"");
    } else {
      bad(where, "missing field \"answers\" (or HF's \"answer\" with value and aliases)");
    }
  }
  if (a.list.empty()) bad(where, "no non-empty answer");
  ojson o;
  o["question_id"] = qid;
  o["question"] = question;
  o["answers"] = a.list;
  return o;
}

// Records of one source record (self-instruct may give several).
std::vector<ojson> convert(const std::string& kind, const std::string& where, const json& r, size_t index) {
  object_of(where, r);
  ojson o;
  if (kind == "alpaca") {
    o["instruction"] = required_text(where, r, "instruction");
    o["input"] = optional_text(where, r, "input");
    o["output"] = required_text(where, r, "output");
  } else if (kind == "triviaqa") {
    o = triviaqa_record(where, r, index);
  } else if (kind == "pandalm") {
    o["id"] = index;
    o["instruction"] = required_text(where, r, "instruction");
    o["input"] = optional_text(where, r, "input");
  } else if (kind == "vicuna") {
    o["id"] = id_field(where, r, "question_id");
    auto t = r.find("turns");
    if (t == r.end()) bad(where, "missing field \"turns\"");
    if (!t->is_array() || t->empty() || !(*t)[0].is_string() || (*t)[0].get<std::string>().empty())
      bad(where, "field \"turns\" is not an array starting with a non-empty string");
    o["instruction"] = (*t)[0];
    o["input"] = "";
  } else if (kind == "koala") {
    o["id"] = id_field(where, r, "id");
    o["instruction"] = required_text(where, r, "prompt");
    o["input"] = "";
  } else {  // self-instruct
    const json id = id_field(where, r, "id");
    const std::string instruction = required_text(where, r, "instruction");
    auto inst = r.find("instances");
    if (inst == r.end()) bad(where, "missing field \"instances\"");
    if (!inst->is_array() || inst->empty()) bad(where, "field \"instances\" is not a non-empty array");
    std::vector<ojson> out;
    for (size_t k = 0; k < inst->size(); ++k) {
      const std::string w = where + " instances[" + std::to_string(k) + "]";
      const json& x = object_of(w, (*inst)[k]);
      ojson e;
      e["id"] = id;
      if (inst->size() > 1) e["id"] = (id.is_string() ? id.get<std::string>() : id.dump()) + "#" + std::to_string(k);
      e["instruction"] = instruction;
      e["input"] = optional_text(w, x, "input");
      e["output"] = required_text(w, x, "output");
      out.push_back(std::move(e));
    }
    return out;
  }
  return {o};
}

// The official TriviaQA release is one JSON document {"Data": [...], ...}, not an array or JSONL.
// It starts with "Data" as its first key (the release writes sorted keys) or is pretty-printed.
bool is_triviaqa_document(const std::string& path) {
  std::ifstream f(path);
  std::string head(4096, '\0');
  f.read(&head[0], (std::streamsize)head.size());
  head.resize((size_t)f.gcount());
  size_t p = head.find_first_not_of(" \t\r\n");
  if (p == std::string::npos || head[p] != '{') return false;
  size_t q = head.find_first_not_of(" \t\r", p + 1);
  return q != std::string::npos && (head[q] == '\n' || head.compare(q, 6, "\"Data\"") == 0);
}

// Streams the document, dropping the bulky evidence lists (the training file is gigabytes).
void for_each_triviaqa_document_record(const std::string& path,
                                       const std::function<void(const std::string&, const json&)>& fn) {
  std::ifstream f(path);
  if (!f) throw std::runtime_error("cannot open " + path);
  json doc;
  try {
    doc = json::parse(f, [](int, json::parse_event_t ev, json& v) {
      return !(ev == json::parse_event_t::key && (v == "SearchResults" || v == "EntityPages"));
    });
  } catch (const json::parse_error& e) {
    throw std::runtime_error(path + ": malformed JSON: " + e.what());
  }
  auto data = doc.find("Data");
  if (data == doc.end() || !data->is_array()) throw std::runtime_error(path + ": no \"Data\" array");
  for (size_t i = 0; i < data->size(); ++i) fn(path + ": Data[" + std::to_string(i) + "]", (*data)[i]);
}

}  // namespace

const std::vector<std::string>& prepare_kinds() {
  static const std::vector<std::string> kinds = {"alpaca", "triviaqa", "pandalm", "vicuna", "koala", "self-instruct"};
  return kinds;
}

PrepareResult prepare_dataset(const std::string& kind, const std::string& input, const std::string& output) {
  const auto& kinds = prepare_kinds();
  if (std::find(kinds.begin(), kinds.end(), kind) == kinds.end())
    throw std::runtime_error("unknown data kind \"" + kind + "\"");
  PrepareResult res;
  std::string out;
  auto add = [&](const std::string& where, const json& r) {
    for (const ojson& o : convert(kind, where, r, (size_t)res.records_in)) {
      out += o.dump();
      out += '\n';
      ++res.records_out;
    }
    ++res.records_in;
  };
  if (kind == "triviaqa" && is_triviaqa_document(input)) {
    for_each_triviaqa_document_record(input, add);
  } else {
    for_each_record(
        input, [&](Record&& r) { add(r.where, r.value); },
        [](const std::string& where, const std::string& what) { bad(where, what); });
  }
  if (res.records_in == 0) throw std::runtime_error(input + ": no records");
  if (auto dir = std::filesystem::path(output).parent_path(); !dir.empty()) std::filesystem::create_directories(dir);
  write_file_atomic(output, out);
  res.input_sha256 = sha256_file(input);
  res.output_sha256 = sha256_hex(out);
  return res;
}

}  // namespace sl
