#include "sortedllama/data/prepare.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "sortedllama/data/records.h"
#include "sortedllama/util/files.h"
#include "sortedllama/util/sha256.h"

namespace sl {

// ---------------------------------------------------------------------------------------------
// Conversions

namespace {
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

[[noreturn]] void bad(const std::string& where, const std::string& what) {
  throw std::runtime_error(where + ": " + what);
}

// The official release: {Question, QuestionId, Answer: {Value, Aliases, ...}}.
ojson official_triviaqa_record(const json& r) {
  ojson o;
  o["question_id"] = id_value(r, "QuestionId");
  if (o["question_id"].is_null()) throw BadRecord("missing field \"QuestionId\"");
  o["question"] = required_string(r, "Question");
  auto ans = r.find("Answer");
  if (ans == r.end()) throw BadRecord("missing field \"Answer\" (the official test files ship without answers)");
  if (!ans->is_object()) throw BadRecord(type_error("field \"Answer\"", *ans, "an object"));
  json hf = {{"answer", json::object()}};
  if (auto v = ans->find("Value"); v != ans->end()) hf["answer"]["value"] = *v;
  if (auto al = ans->find("Aliases"); al != ans->end()) hf["answer"]["aliases"] = *al;
  o["answers"] = triviaqa_aliases(hf);
  return o;
}

ojson triviaqa_record(const json& r, size_t index) {
  if (r.contains("Question")) return official_triviaqa_record(r);
  ojson o;
  o["question_id"] = r.contains("question_id") ? id_value(r, "question_id") : json(std::to_string(index));
  if (o["question_id"].is_null()) throw BadRecord("missing field \"question_id\"");
  o["question"] = required_string(r, "question");
  o["answers"] = triviaqa_aliases(r);
  return o;
}

json required_id(const json& r, const std::string& key) {
  json id = id_value(r, key);
  if (id.is_null()) throw BadRecord("missing field \"" + key + "\"");
  return id;
}

// Records of one source record (self-instruct may give several).
std::vector<ojson> convert(const std::string& kind, const std::string& where, const json& r, size_t index) {
  require_object(r);
  ojson o;
  if (kind == "alpaca") {
    o["instruction"] = required_string(r, "instruction");
    o["input"] = optional_string(r, "input");
    o["output"] = required_string(r, "output");
  } else if (kind == "triviaqa") {
    o = triviaqa_record(r, index);
  } else if (kind == "pandalm") {
    o["id"] = index;
    o["instruction"] = required_string(r, "instruction");
    o["input"] = optional_string(r, "input");
  } else if (kind == "vicuna") {
    o["id"] = required_id(r, "question_id");
    auto t = r.find("turns");
    if (t == r.end()) throw BadRecord("missing field \"turns\"");
    if (!t->is_array() || t->empty() || !(*t)[0].is_string() || (*t)[0].get<std::string>().empty())
      throw BadRecord("field \"turns\" is not an array starting with a non-empty string");
    o["instruction"] = (*t)[0];
    o["input"] = "";
  } else if (kind == "koala") {
    o["id"] = required_id(r, "id");
    o["instruction"] = required_string(r, "prompt");
    o["input"] = "";
  } else {  // self-instruct
    const json id = required_id(r, "id");
    const std::string instruction = required_string(r, "instruction");
    auto inst = r.find("instances");
    if (inst == r.end()) throw BadRecord("missing field \"instances\"");
    if (!inst->is_array() || inst->empty()) throw BadRecord("field \"instances\" is not a non-empty array");
    std::vector<ojson> out;
    for (size_t k = 0; k < inst->size(); ++k) {
      const std::string w = where + " instances[" + std::to_string(k) + "]";
      const json& x = with_location(w, [&]() -> const json& { return require_object((*inst)[k]); });
      ojson e;
      e["id"] = id;
      if (inst->size() > 1) e["id"] = (id.is_string() ? id.get<std::string>() : id.dump()) + "#" + std::to_string(k);
      e["instruction"] = instruction;
      with_location(w, [&] {
        e["input"] = optional_string(x, "input");
        e["output"] = required_string(x, "output");
      });
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
    for (const ojson& o : with_location(where, [&] { return convert(kind, where, r, (size_t)res.records_in); })) {
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
