#include "sortedllama/data/records.h"

#include <algorithm>

#include <fstream>
#include <sstream>
#include <stdexcept>

namespace sl {

namespace {
// 1-based line on which each top-level element of a (valid) JSON array starts: nlohmann reports
// no positions for parsed values, and a 50k-record array is unusable with record numbers alone.
std::vector<size_t> array_element_lines(const std::string& text) {
  std::vector<size_t> lines;
  size_t line = 1;
  int depth = 0;
  bool in_string = false, escaped = false, expect_element = false;
  for (char c : text) {
    if (c == '\n') ++line;
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == ' ' || c == '\t' || c == '\r' || c == '\n') continue;
    if (expect_element && c != ']') lines.push_back(line);
    expect_element = false;
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth == 1) expect_element = true;
    } else if (c == ']' || c == '}') {
      --depth;
    } else if (c == ',' && depth == 1) {
      expect_element = true;
    }
  }
  return lines;
}
}  // namespace

void for_each_record(const std::string& path, const std::function<void(Record&&)>& on_record,
                     const std::function<void(const std::string& where, const std::string& what)>& on_malformed) {
  std::ifstream f(path);
  if (!f) throw std::runtime_error("cannot open " + path);
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string text = ss.str();
  const size_t first = text.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && text[first] == '[') {
    nlohmann::json arr;
    try {
      arr = nlohmann::json::parse(text);
    } catch (const nlohmann::json::parse_error& e) {
      throw std::runtime_error(path + ": malformed JSON: " + e.what());
    }
    const std::vector<size_t> lines = array_element_lines(text);
    for (size_t i = 0; i < arr.size(); ++i) {
      std::string record = "record " + std::to_string(i);
      on_record({std::move(arr[i]), i < lines.size() ? path + ":" + std::to_string(lines[i]) + " (" + record + ")"
                                                     : path + ": " + record});
    }
    return;
  }
  std::istringstream lines(text);
  std::string line;
  for (size_t n = 1; std::getline(lines, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    Record r{{}, path + ":" + std::to_string(n)};
    try {
      r.value = nlohmann::json::parse(line);
    } catch (const nlohmann::json::parse_error& e) {
      on_malformed(r.where, std::string("malformed JSON: ") + e.what());
      continue;
    }
    on_record(std::move(r));
  }
}

std::vector<Record> read_records(const std::string& path) {
  std::vector<Record> out;
  for_each_record(
      path, [&](Record&& r) { out.push_back(std::move(r)); },
      [](const std::string& where, const std::string& what) { throw std::runtime_error(where + ": " + what); });
  return out;
}

std::string string_field(const Record& r, const std::string& key) {
  if (!r.value.is_object()) throw std::runtime_error(r.where + ": expected a JSON object");
  auto it = r.value.find(key);
  if (it == r.value.end()) throw std::runtime_error(r.where + ": missing field \"" + key + "\"");
  if (!it->is_string())
    throw std::runtime_error(r.where + ": field \"" + key + "\" is " + it->type_name() + ", not a string");
  return it->get<std::string>();
}

std::string type_error(const std::string& what, const nlohmann::json& v, const char* expected) {
  return what + " is " + v.type_name() + ", not " + expected;
}

const nlohmann::json& require_object(const nlohmann::json& v) {
  if (!v.is_object()) throw BadRecord(type_error("record", v, "a JSON object"));
  return v;
}

std::string optional_string(const nlohmann::json& obj, const std::string& key) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return "";
  if (!it->is_string()) throw BadRecord(type_error("field \"" + key + "\"", *it, "a string"));
  return it->get<std::string>();
}

std::string required_string(const nlohmann::json& obj, const std::string& key, bool allow_empty) {
  auto it = obj.find(key);
  if (it == obj.end()) throw BadRecord("missing field \"" + key + "\"");
  if (!it->is_string()) throw BadRecord(type_error("field \"" + key + "\"", *it, "a string"));
  std::string s = it->get<std::string>();
  if (s.empty() && !allow_empty) throw BadRecord("field \"" + key + "\" is empty");
  return s;
}

std::vector<std::string> string_array(const nlohmann::json& v, const std::string& key) {
  if (!v.is_array()) throw BadRecord(type_error("field \"" + key + "\"", v, "an array of strings"));
  std::vector<std::string> out;
  for (size_t i = 0; i < v.size(); ++i) {
    if (!v[i].is_string())
      throw BadRecord(type_error("field \"" + key + "[" + std::to_string(i) + "]\"", v[i], "a string"));
    out.push_back(v[i].get<std::string>());
  }
  return out;
}

nlohmann::json id_value(const nlohmann::json& obj, const std::string& key) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  if (!it->is_string() && !it->is_number_integer())
    throw BadRecord(type_error("field \"" + key + "\"", *it, "a string or an integer"));
  return *it;
}

std::string id_string(const nlohmann::json& obj, const std::string& key) {
  const nlohmann::json id = id_value(obj, key);
  return id.is_null() ? "" : id.is_string() ? id.get<std::string>() : id.dump();
}

std::vector<std::string> triviaqa_aliases(const nlohmann::json& obj) {
  std::vector<std::string> out;
  auto add = [&](const std::vector<std::string>& items) {
    for (const auto& s : items)
      if (!s.empty() && std::find(out.begin(), out.end(), s) == out.end()) out.push_back(s);
  };
  if (auto it = obj.find("answers"); it != obj.end()) {
    add(string_array(*it, "answers"));
  } else if (auto a = obj.find("answer"); a != obj.end()) {  // HF trivia_qa: {value, aliases, ...}
    if (!a->is_object()) throw BadRecord(type_error("field \"answer\"", *a, "an object with \"value\" and \"aliases\""));
    if (auto v = a->find("value"); v != a->end()) {
      if (!v->is_string()) throw BadRecord(type_error("field \"answer.value\"", *v, "a string"));
      add({v->get<std::string>()});
    }
    if (auto al = a->find("aliases"); al != a->end()) add(string_array(*al, "answer.aliases"));
  } else {
    throw BadRecord("missing field \"answers\" (or \"answer\" with \"value\" and \"aliases\")");
  }
  if (out.empty()) throw BadRecord("no non-empty answer alias");
  return out;
}

}  // namespace sl
