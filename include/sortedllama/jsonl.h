// Reading record files: JSONL (one object per line) or a JSON array. Errors name file and line.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace sl {

struct Record {
  nlohmann::json value;
  std::string where;  // "file:line" (JSONL) or "file:line (record N)" (JSON array, N from 0), for messages
};

// A file whose first non-space byte is '[' is a JSON array; anything else is JSONL (blank lines skipped).
std::vector<Record> read_records(const std::string& path);

// Like read_records, but streams records in file order and hands a JSONL line that is not valid
// JSON to on_malformed(where, message) instead of throwing, so callers can skip it. A malformed
// JSON array has no recoverable records and still throws.
void for_each_record(const std::string& path, const std::function<void(Record&&)>& on_record,
                     const std::function<void(const std::string& where, const std::string& what)>& on_malformed);

// The string field `key` of a record, or a runtime_error "<where>: ..." when missing or not a string.
std::string string_field(const Record& r, const std::string& key);

}  // namespace sl
