#include "sortedllama/jsonl.h"

#include <fstream>
#include <sstream>
#include <stdexcept>

namespace sl {

std::vector<Record> read_records(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw std::runtime_error("cannot open " + path);
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string text = ss.str();
  std::vector<Record> out;
  const size_t first = text.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && text[first] == '[') {
    nlohmann::json arr;
    try {
      arr = nlohmann::json::parse(text);
    } catch (const nlohmann::json::parse_error& e) {
      throw std::runtime_error(path + ": malformed JSON: " + e.what());
    }
    for (size_t i = 0; i < arr.size(); ++i) out.push_back({arr[i], path + ": record " + std::to_string(i)});
    return out;
  }
  std::istringstream lines(text);
  std::string line;
  for (size_t n = 1; std::getline(lines, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    Record r{{}, path + ":" + std::to_string(n)};
    try {
      r.value = nlohmann::json::parse(line);
    } catch (const nlohmann::json::parse_error& e) {
      throw std::runtime_error(r.where + ": malformed JSON: " + e.what());
    }
    out.push_back(std::move(r));
  }
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
