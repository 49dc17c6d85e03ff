// Shared pieces of the subcommands (src/cli/*.cpp): global options and model loading.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "sortedllama/decode/options.h"
#include "sortedllama/model/llama.h"
#include "sortedllama/io/tokenizer.h"

namespace sl {

struct GlobalOptions {
  int threads = 0;                // 0 = one per core
  std::string device = "auto";    // auto | cpu | cuda | cuda:N
  std::string log_level = "info";
};

// "auto" = cuda when available; models run in bf16 on CUDA and fp32 on CPU.
torch::Device resolve_device(const std::string& name);
torch::Dtype compute_dtype(const torch::Device& d);

struct LoadedModel {
  Llama model{nullptr};
  std::unique_ptr<Tokenizer> tokenizer;
};

// Loads DIR (and DIR/tokenizer.model unless `tokenizer` is given) and checks they fit together.
LoadedModel load_model_and_tokenizer(const std::string& dir, const std::string& tokenizer, const GlobalOptions& g);

// A decimal 64-bit unsigned value of `option`; throws naming it when malformed or out of range.
uint64_t parse_u64(const std::string& text, const std::string& option);

// Prompts of `option`'s file: `.jsonl` holds {"prompt": ...} objects, any other file one prompt
// per non-empty line; errors name the option, the file and (JSONL) the line.
std::vector<std::string> read_prompts(const std::string& path, const std::string& option);

// Dynamic early exit's thresholds and confidence measure: explicit options win (`thresholds`
// non-empty, `confidence_given`), else the calibrated profile in the model's config.json (when
// its measure is the one asked for), else the paper's defaults; logs which was used.
DynamicParams choose_dynamic(const std::string& thresholds, const std::string& confidence, bool confidence_given,
                             const LoadedModel& m, const std::string& model_dir);

// What a user gave of the speculative options (zeros and false: not given).
struct SpeculativeChoice {
  int draft_layer = 0, draft_tokens = 0;
  double draft_confidence = 0;
  bool tokens_given = false, confidence_given = false;
};
// Self-speculative settings: an explicit draft layer wins, with the lengths given; else, when the
// full model verifies, the tuned profile in the model's config.json (sortedllama tune) fills the
// draft layer and every length option not given; else the decoder's defaults. Logs which was used.
SpeculativeParams choose_speculative(const SpeculativeChoice& given, bool full_verifier, const LoadedModel& m,
                                     const std::string& model_dir);
// calibrate and tune: --model (whose config.json receives the profile), --tokenizer, --prompts.
void add_profile_source_options(CLI::App* cmd, std::string& model, std::string& tokenizer, std::string& prompts);
// Prompts as token ids (with BOS), after checking that a batch of them fits the KV cache with
// `extra_positions` after the longest.
std::vector<std::vector<int>> encode_prompts(const std::vector<std::string>& texts, const LoadedModel& m, int64_t batch_size,
                                             int64_t extra_positions);
// A results object to --out FILE (atomically, when given) and stdout: the JSON with --json, else the table.
void emit_results(const nlohmann::ordered_json& result, const std::string& out, bool json, const std::string& table);
// The KV cache of `batch` sequences of prompt_len + max_new_tokens positions must fit in this
// machine's memory (CPU models); throws naming --max-new-tokens and --batch-size otherwise.
void check_kv_cache_fits(const Llama& model, int64_t batch, int64_t prompt_len, int64_t max_new_tokens);

// A subcommand's options as parsed: every long option with the value given (or its default), keyed
// by its name with '_' for '-' (results files record this).
nlohmann::ordered_json recorded_options(const CLI::App& cmd);

void add_generate_command(CLI::App& app, const GlobalOptions& g);
void add_calibrate_command(CLI::App& app, const GlobalOptions& g);
void add_tune_command(CLI::App& app, const GlobalOptions& g);
void add_eval_command(CLI::App& app, const GlobalOptions& g);
void add_convert_command(CLI::App& app, const GlobalOptions& g);
void add_data_command(CLI::App& app, const GlobalOptions& g);
void add_finetune_command(CLI::App& app, const GlobalOptions& g);
void add_launch_command(CLI::App& app, const GlobalOptions& g);

}  // namespace sl
