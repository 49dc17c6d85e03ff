// Converting the dataset files users download into the toolkit's JSONL, with the SHA-256 of
// input and output. Every converted record keeps the source's order; a record that does not have
// the expected shape is an error naming the file and line (or record), never silently dropped.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace sl {

// Source kinds and what each becomes (one JSON object per line, keys in this order):
//   alpaca:        Stanford alpaca_data.json or a cleaned variant (JSON array or JSONL)
//                  -> {instruction, input, output}; a missing or null input becomes ""
//   triviaqa:      the official {"Data": [{Question, QuestionId, Answer: {Value, Aliases}}]} document
//                  (unfiltered-web-*.json, verified-*.json), HF trivia_qa JSONL {question, question_id,
//                  answer: {value, aliases}}, or flat {question_id, question, answers[]}
//                  -> {question_id, question, answers}: value first, then aliases; empty and repeated
//                  aliases dropped
//   pandalm:       testset-inference-v1.json [{motivation_app, instruction, input}] -> {id (index), instruction, input}
//   vicuna:        question.jsonl {question_id, category, turns[]} -> {id, instruction: turns[0], input: ""}
//   koala:         {id, prompt} -> {id, instruction: prompt, input: ""}
//   self-instruct: user_oriented_instructions.jsonl {id, instruction, instances: [{input, output}]}
//                  -> {id, instruction, input, output}, one record per instance ("id#k" when several)
const std::vector<std::string>& prepare_kinds();

struct PrepareResult {
  int64_t records_in = 0, records_out = 0;
  std::string input_sha256, output_sha256;
};

// Converts `input` of `kind` into JSONL at `output` (written atomically). Throws runtime_error
// "<file>:<line> (record N): ..." on a malformed record and on an unknown kind.
PrepareResult prepare_dataset(const std::string& kind, const std::string& input, const std::string& output);

}  // namespace sl
