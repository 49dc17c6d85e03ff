// Shared pieces of the subcommands (src/cli/*.cpp): global options and model loading.
#pragma once
#include <memory>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

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

// The KV cache of `batch` sequences of prompt_len + max_new_tokens positions must fit in this
// machine's memory (CPU models); throws naming --max-new-tokens and --batch-size otherwise.
void check_kv_cache_fits(const Llama& model, int64_t batch, int64_t prompt_len, int64_t max_new_tokens);

// A subcommand's options as parsed: every long option with the value given (or its default), keyed
// by its name with '_' for '-' (results files record this).
nlohmann::ordered_json recorded_options(const CLI::App& cmd);

void add_generate_command(CLI::App& app, const GlobalOptions& g);
void add_eval_command(CLI::App& app, const GlobalOptions& g);
void add_convert_command(CLI::App& app, const GlobalOptions& g);
void add_data_command(CLI::App& app, const GlobalOptions& g);
void add_finetune_command(CLI::App& app, const GlobalOptions& g);
void add_launch_command(CLI::App& app, const GlobalOptions& g);

}  // namespace sl
