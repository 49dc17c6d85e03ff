// The eval tasks of the paper: loss, triviaqa, instruct, compare, analysis and speed, one file each
// in src/eval/. Each returns a TaskResult (results.h) of per-exit rows.
#pragma once
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "sortedllama/eval/generate.h"
#include "sortedllama/eval/progress.h"
#include "sortedllama/eval/results.h"
#include "sortedllama/eval/metrics.h"
#include "sortedllama/model/llama.h"
#include "sortedllama/io/tokenizer.h"

namespace sl {

// ---- loss: response-only NLL of Alpaca-format data per exit ----
TaskResult eval_loss(Llama& model, const Tokenizer& tok, const std::string& data, const std::vector<int>& exits,
                     int64_t batch_size, int64_t limit);

// ---- triviaqa ----
struct TriviaQuestion {
  std::string id, question;
  std::vector<std::string> aliases;  // every accepted answer (value first, repeats dropped)
  std::string fewshot_target;        // lm-eval's few-shot answer: answer.aliases[0] (HF), else answers[0]
};
// JSONL/JSON {question_id?, question, answers: [...]} or HF's {question, answer: {value, aliases}}.
// Errors name file, line and field; a missing question_id becomes the record index.
std::vector<TriviaQuestion> load_triviaqa(const std::string& path);
// lm-eval's few-shot context: n solved examples drawn from `pool` (seeded, never `exclude_id`),
// each "Question: q?\nAnswer: a" and followed by "\n\n".
std::string triviaqa_fewshot(const std::vector<TriviaQuestion>& pool, int64_t n, uint64_t seed,
                             const std::string& exclude_id);
// Per-exit metrics of scored predictions: exact_match, exact_match_case_sensitive,
// exact_match_official, f1 (means) and n.
ojson triviaqa_metrics(const std::vector<QAScore>& scores);
// Greedy answers of every row of the decode mode (max opt.max_new_tokens, cut at "\n" . ,).
// add_bos: prompts start with BOS; lm-evaluation-harness's HF backend adds none by default.
TaskResult eval_triviaqa(Llama& model, const Tokenizer& tok, const std::vector<TriviaQuestion>& questions,
                         const std::vector<TriviaQuestion>& fewshot_pool, int64_t num_fewshot,
                         const std::vector<int>& exits, const EvalGenOptions& opt, bool add_bos);
// Scores pre-generated answers without a model. Each file is JSONL {question_id, prediction, exit?};
// a record without "exit" takes it from a file name "...exit<k>..." or else 0 (one system). An id
// not among `questions` or given twice for one exit is an error naming file and line.
TaskResult score_triviaqa_predictions(const std::vector<TriviaQuestion>& questions,
                                      const std::vector<std::string>& files, int64_t limit);

// ---- instruct ----
struct Instruction {
  std::string id, instruction, input, reference;  // reference empty when the set has none
};
// Alpaca {instruction, input?, output?}, PandaLM {instruction, input}, Vicuna {question_id, turns},
// Koala {id, prompt}, self-instruct {id, instruction, instances: [{input, output}]}.
std::vector<Instruction> load_instructions(const std::string& path);
// Alpaca-prompted greedy responses per exit into samples_exit<k>.jsonl; ROUGE-L and token F1
// against the references when every instruction has one.
TaskResult eval_instruct(Llama& model, const Tokenizer& tok, const std::vector<Instruction>& items,
                         const std::vector<int>& exits, const EvalGenOptions& opt);

// ---- compare (PandaLM protocol) ----
struct Sample {
  std::string instruction, input, output;
};
// exit -> id -> sample, from samples_exit<k>.jsonl files (a directory of them, or one file).
using SampleSet = std::map<int, std::map<std::string, Sample>>;
SampleSet load_sample_set(const std::string& path);
// Judge continuations for judge prompts (in order).
using JudgeFn = std::function<std::vector<std::string>(const std::vector<std::string>& prompts)>;
// A LLaMA judge run through eval_generate (full model, greedy, until its first line is complete).
JudgeFn model_judge(Llama& judge, const Tokenizer& tok, int64_t batch_size, int64_t max_new_tokens);
// Every (a_exit, b_exit) pair judged over the ids both sets hold, each in both orders.
// Rows: wins, ties, losses, n, score of A against B; extra["matrix"] when pairs form a grid.
TaskResult eval_compare(const SampleSet& a, const SampleSet& b, const std::vector<std::pair<int, int>>& pairs,
                        const JudgeFn& judge, int64_t limit);

// ---- analysis (paper section 4.4) ----
// The full model generates `positions` tokens greedily per instruction; at each generated position
// and exit: KL(p_last || p_exit) between next-token distributions, KL(p_reference || p_exit) with a
// reference model (same tokenizer), and the cosine similarity of the residual stream entering the
// shared norm + head at the exit and at the last layer. Means over instructions, per position and overall.
TaskResult eval_analysis(Llama& model, const Tokenizer& tok, const std::vector<Instruction>& items,
                         const std::vector<int>& exits, int64_t positions, int64_t batch_size, Llama* reference);

// ---- speed ----
// Per exit: prefill and decode ms/token and tokens/s of plain greedy decoding (no shared prefill).
TaskResult eval_speed(Llama& model, const std::vector<std::vector<int>>& prompts, const std::vector<int>& exits,
                      int64_t max_new_tokens, int64_t batch_size, int64_t eos_id);

}  // namespace sl
