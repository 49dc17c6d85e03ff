// Reading record files: JSONL (one object per line) or a JSON array. Errors name file and line.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace sl {

struct Record {
  nlohmann::json value;
  std::string where;  // "file:line" (JSONL) or "file: record N" (JSON array), for messages
};

// A file whose first non-space byte is '[' is a JSON array; anything else is JSONL (blank lines skipped).
std::vector<Record> read_records(const std::string& path);

// The string field `key` of a record, or a runtime_error "<where>: ..." when missing or not a string.
std::string string_field(const Record& r, const std::string& key);

}  // namespace sl
