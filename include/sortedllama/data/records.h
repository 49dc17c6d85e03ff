// Reading record files: JSONL (one object per line) or a JSON array. Errors name file and line.
#pragma once
#include <functional>
#include <stdexcept>
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

// ---- Field helpers: the one set every record reader uses ----
// Each throws BadRecord with what is wrong ("field \"x\" is number, not a string") and no location;
// with_location() (or the caller) adds the file and line.

struct BadRecord : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// "<what> is <type>, not <expected>"
std::string type_error(const std::string& what, const nlohmann::json& v, const char* expected);
const nlohmann::json& require_object(const nlohmann::json& v);
// Present, not null, a string and (unless allow_empty) not empty.
std::string required_string(const nlohmann::json& obj, const std::string& key, bool allow_empty = false);
// A string, or "" when missing or null.
std::string optional_string(const nlohmann::json& obj, const std::string& key);
// Each element a string; `key` names the field in messages ("field \"answers[1]\" is number, ...").
std::vector<std::string> string_array(const nlohmann::json& v, const std::string& key);
// An id kept as the source has it: a string or an integer; null when missing or null.
nlohmann::json id_value(const nlohmann::json& obj, const std::string& key);
// The same as text ("" when missing).
std::string id_string(const nlohmann::json& obj, const std::string& key);

// TriviaQA's answers: {"answers": [aliases]} or HF's {"answer": {"value", "aliases"}} (value first).
// Empty and repeated aliases are dropped; throws when none is left.
std::vector<std::string> triviaqa_aliases(const nlohmann::json& obj);

// Runs f(); a BadRecord it throws becomes runtime_error("<where>: <what>").
template <class F>
auto with_location(const std::string& where, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const BadRecord& e) {
    throw std::runtime_error(where + ": " + e.what());
  }
}

}  // namespace sl
