#include "sortedllama/jsonl.h"

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

}  // namespace sl
