// Generation for eval: every exit of a checkpoint over one prompt set, batched, through one entry
// point that takes the decode mode (the `--decode` option of `sortedllama eval`).
#pragma once
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "sortedllama/decode/generate.h"

namespace sl {

// How eval decodes (the `--decode` option of `sortedllama eval`).
enum class DecodeMode { kExit, kFull, kSpeculative, kDynamic };
DecodeMode parse_decode_mode(const std::string& name);  // exit | full | speculative | dynamic; throws naming it
const char* decode_mode_name(DecodeMode m);

struct EvalGenOptions {
  // exit:        every requested exit decodes with its own sub-model (one prefill of the deepest
  //              exit serves every exit's prompt and first token);
  // full:        the full model only;
  // speculative: self-speculative decoding verified by the full model, one row per draft layer
  //              (draft_layer, or every requested exit below the last layer);
  // dynamic:     instance-aware early exit with `thresholds` and `confidence`.
  // speculative and dynamic also run the full model as their baseline row (Table 2 of the paper).
  DecodeMode decode = DecodeMode::kExit;
  int64_t max_new_tokens = 256;
  int64_t batch_size = 8;
  int64_t eos_id = 2;
  int64_t vocab_limit = 0;  // > 0: ids the tokenizer can decode (see SamplingParams)
  // speculative: draft_layer 0 = one row per requested exit below the last layer
  SpeculativeParams speculative;
  DynamicParams dynamic;
  // Per-sequence stop test on the new tokens so far (e.g. TriviaQA's "\n", ".", ","); may be empty.
  std::function<bool(const std::vector<int>& tokens)> stop;
  // Called after each batch of one row with the number of prompts done (progress bars).
  std::function<void(int64_t prompts)> on_batch;
};

// One row of results: a decoder (plain sub-model, speculative, dynamic) and its generations.
struct DecodeRow {
  std::string name;  // "5" (plain exit 5), "spec2" (speculative, draft layer 2), "dynamic"
  DecodeMode mode;   // kExit (plain sub-model), kSpeculative or kDynamic
  int exit = 0;      // plain: the sub-model; speculative: the draft layer; dynamic: the last layer
};

// This row against the full model's plain decoding in the same call.
struct VersusFull {
  double speedup = 0;     // the full model's decode ms/token over this row's
  double agree_full = 0;  // fraction of sequences identical to its output
};

struct ExitGenerations : DecodeRow {
  std::vector<Generation> gens;  // in prompt order
  DecodeStats stats;             // exit mode: the shared prefill is counted once, under the deepest exit
  std::optional<VersusFull> versus_full;  // when the full model ran in the same call
};

// The rows a decode mode produces for the requested exit set; throws on a bad mode or option.
std::vector<DecodeRow> decode_rows(const EvalGenOptions& opt, const std::vector<int>& exits, int n_layers);

// Greedy generations of every decode_rows() row. Batched output equals unbatched output, and a
// plain row equals generate() with the same exit.
std::vector<ExitGenerations> eval_generate(Llama& model, const std::vector<std::vector<int>>& prompts,
                                           const std::vector<int>& exits, const EvalGenOptions& opt);

}  // namespace sl
