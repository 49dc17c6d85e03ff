// Fine-tuning data: Alpaca / TriviaQA / plain-text records -> token sequences with loss targets,
// a seeded validation split and per-epoch batches. Prompt formats follow FORMATS.md byte for byte.
// No torch here: the trainer turns Examples into tensors.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "sortedllama/data/records.h"
#include "sortedllama/io/tokenizer.h"

namespace sl {

struct DataOptions {
  std::string format = "alpaca";       // alpaca | triviaqa | text
  int64_t max_seq_len = 512;           // sequences (BOS..EOS) are cut to this many tokens
  bool train_on_prompt = false;        // also put loss on prompt tokens (never on BOS)
  std::string on_bad_record = "fail";  // fail | skip
  int answer_alias = 0;                // triviaqa: which non-empty alias is the target (a record with fewer is bad)
};

struct Example {
  std::vector<int> tokens;      // BOS + prompt + response + EOS (possibly truncated)
  std::vector<uint8_t> target;  // same length; 1 where tokens[t] is a loss target (predicted from t-1); target[0] == 0
  int64_t prompt_tokens = 0;    // tokens belonging to BOS + prompt
};

// records = used + skipped + too_long; truncated and target_tokens cover the used examples.
// too_long: records whose prompt alone fills max_seq_len (no response token left to learn from);
// they are not malformed, so they are always dropped and counted, never an error.
struct DataStats {
  int64_t records = 0, used = 0, skipped = 0, too_long = 0, truncated = 0, target_tokens = 0;
};

// The prompt fills max_seq_len: no target survives truncation.
struct PromptTooLong : BadRecord {
  using BadRecord::BadRecord;
};

// Stanford Alpaca templates (with / without input); ends in "### Response:" with no newline.
std::string alpaca_prompt(const std::string& instruction, const std::string& input);
// lm-evaluation-harness triviaqa: "Question: {q}?\nAnswer:" (a question ending in '?' gets two).
std::string triviaqa_prompt(const std::string& question);

// Stanford Alpaca tokenization: tokens = encode(prompt + response, bos) + [eos]; the first
// encode(prompt, bos).size() of them are the prompt. Targets are the positions after the prompt
// (after BOS with train_on_prompt). Cut to max_seq_len; throws PromptTooLong when no target survives.
// Adds to st->truncated and st->target_tokens (st may be null).
Example make_example(const Tokenizer& tok, const std::string& prompt, const std::string& response,
                     const DataOptions& o, DataStats* st);

// Reads a JSON array or JSONL file (see jsonl.h) in o.format:
//   alpaca:   {instruction, input (optional / null), output}; instruction and output non-empty
//   triviaqa: {question, answers: [aliases]} or HF's {question, answer: {value, aliases}} (value
//             first); empty aliases are ignored; the response is " " + the chosen alias
//   text:     {text}; no prompt, loss on every token after BOS
// A bad record throws "<file>:<line>: <what> (set data.on_bad_record=skip ...)", or with skip is
// counted in st->skipped and warned about (the first 5). Fills *st (may be null) from zero.
std::vector<Example> load_examples(const std::string& path, const Tokenizer& tok, const DataOptions& o,
                                   DataStats* st);

// Moves a seeded random fraction (0 < f < 1, at least one example, never all) of train into valid
// (replacing its contents). Both keep file order.
void split_validation(std::vector<Example>& train, std::vector<Example>& valid, double fraction, uint64_t seed);

// Index batches for one epoch: a Fisher-Yates shuffle seeded by (seed, epoch), cut into batches of
// batch_size (the last may be shorter). group_by_length sorts each run of 50 * batch_size shuffled
// indices by length, longest first, before cutting and then shuffles the batch order, so batches
// hold similar lengths (little padding) yet come in random order, like HF's length-grouped sampler.
std::vector<std::vector<size_t>> epoch_batches(const std::vector<Example>& data, int64_t batch_size, uint64_t seed,
                                               int64_t epoch, bool group_by_length);

}  // namespace sl
