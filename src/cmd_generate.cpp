// sortedllama generate: text from one sub-model (plain decoding).
#include <fstream>
#include <iostream>

#include <spdlog/spdlog.h>

#include "cli.h"
#include "sortedllama/generate.h"
#include "sortedllama/jsonl.h"

namespace sl {

namespace {
struct GenerateArgs {
  std::string model, tokenizer, prompt, prompt_file;
  bool prompt_given = false;
  int exit_layer = 0;
  int64_t max_new_tokens = 256, batch_size = 8, top_k = 0;
  double temperature = 0.0, top_p = 1.0;
  uint64_t seed = 0;
  bool json = false;
};

// --prompt-file: `.jsonl` files hold {"prompt": ...} objects; any other file one prompt per line.
std::vector<std::string> read_prompts(const std::string& path) {
  std::vector<std::string> prompts;
  if (path.size() >= 6 && path.substr(path.size() - 6) == ".jsonl") {
    for (const auto& r : read_records(path)) prompts.push_back(string_field(r, "prompt"));
    return prompts;
  }
  std::ifstream f(path);
  if (!f) throw std::runtime_error("cannot open " + path);
  for (std::string line; std::getline(f, line);)
    if (!line.empty()) prompts.push_back(line);
  return prompts;
}

void run_generate(const GenerateArgs& a, const GlobalOptions& g) {
  if (a.prompt_given == !a.prompt_file.empty())
    throw std::runtime_error("generate needs exactly one of --prompt and --prompt-file");
  std::vector<std::string> prompts = a.prompt_given ? std::vector<std::string>{a.prompt} : read_prompts(a.prompt_file);
  LoadedModel m = load_model_and_tokenizer(a.model, a.tokenizer, g);
  const auto& cfg = m.model->config();
  if (a.exit_layer < 0 || a.exit_layer > cfg.n_layers)
    throw std::runtime_error("--exit-layer " + std::to_string(a.exit_layer) + " is outside the model's 1.." +
                             std::to_string(cfg.n_layers) + " layers");
  GenerateOptions opt;
  opt.exit_layer = a.exit_layer > 0 ? a.exit_layer : (int)cfg.n_layers;
  opt.max_new_tokens = a.max_new_tokens;
  opt.sampling = {a.temperature, a.top_p, a.top_k};
  opt.seed = a.seed;
  opt.eos_id = cfg.eos_id;
  const bool stream = prompts.size() == 1 && !a.json;
  std::string shown;  // text already printed while streaming
  if (stream)
    opt.on_token = [&](size_t, const std::vector<int>& toks) {
      std::string text = m.tokenizer->decode(toks);
      // Hold back an incomplete UTF-8 sequence (decoded as U+FFFD) until its bytes arrive.
      if (text.size() >= 3 && text.compare(text.size() - 3, 3, "\xEF\xBF\xBD") == 0) return false;
      if (text.compare(0, shown.size(), shown) == 0) {
        std::cout << text.substr(shown.size()) << std::flush;
        shown = text;
      }
      return false;
    };

  for (size_t start = 0; start < prompts.size(); start += (size_t)a.batch_size) {
    const size_t end = std::min(prompts.size(), start + (size_t)a.batch_size);
    std::vector<std::vector<int>> ids;
    for (size_t i = start; i < end; ++i) ids.push_back(m.tokenizer->encode(prompts[i], /*bos=*/true));
    GenerateStats st;
    auto gens = generate(m.model, ids, opt, &st);
    const double tok_s = st.decode_ms > 0 ? 1000.0 * st.new_tokens / st.decode_ms : 0.0;
    const double ms_tok = st.new_tokens ? (st.prefill_ms + st.decode_ms) / st.new_tokens : 0.0;
    for (size_t i = 0; i < gens.size(); ++i) {
      std::string text = m.tokenizer->decode(gens[i].tokens);
      if (a.json) {
        nlohmann::json j = {{"prompt", prompts[start + i]},
                            {"text", text},
                            {"tokens", gens[i].tokens},
                            {"exit_layer", opt.exit_layer},
                            {"finish_reason", gens[i].finish_reason},
                            {"stats",
                             {{"prompt_tokens", ids[i].size()},
                              {"new_tokens", gens[i].tokens.size()},
                              {"batch_size", gens.size()},
                              {"prefill_ms", st.prefill_ms},
                              {"decode_ms", st.decode_ms},
                              {"tokens_per_s", tok_s},
                              {"ms_per_token", ms_tok}}}};
        std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
      } else if (stream) {
        std::cout << text.substr(std::min(shown.size(), text.size())) << "\n";
      } else {
        std::cout << text << "\n";
      }
    }
    std::cout << std::flush;
    spdlog::info("exit {}: {} prompts, {} prompt tokens, {} new tokens, {:.1f} tokens/s, {:.2f} ms/token", opt.exit_layer,
                 gens.size(), st.prompt_tokens, st.new_tokens, tok_s, ms_tok);
  }
}
}  // namespace

void add_generate_command(CLI::App& app, const GlobalOptions& g) {
  auto a = std::make_shared<GenerateArgs>();
  CLI::App* cmd = app.add_subcommand("generate", "generate text with one sub-model of a checkpoint");
  cmd->add_option("--model", a->model, "HF model directory")->required()->check(CLI::ExistingDirectory);
  cmd->add_option("--tokenizer", a->tokenizer, "sentencepiece model (default: MODEL/tokenizer.model)");
  cmd->add_option("--prompt", a->prompt, "prompt text (BOS is prepended; \"\" = BOS alone)");
  cmd->add_option("--prompt-file", a->prompt_file, "prompts: .jsonl with {\"prompt\": ...}, else one per line")
      ->check(CLI::ExistingFile);
  cmd->add_option("--exit-layer", a->exit_layer, "run sub-model K = first K layers (default: all)");
  cmd->add_option("--max-new-tokens", a->max_new_tokens, "at most this many new tokens")->check(CLI::PositiveNumber);
  cmd->add_option("--temperature", a->temperature, "0 = greedy")->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-p", a->top_p, "nucleus sampling mass")->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--top-k", a->top_k, "sample among the k most likely tokens (0 = all)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--seed", a->seed, "sampling seed");
  cmd->add_option("--batch-size", a->batch_size, "prompts decoded together")->check(CLI::PositiveNumber);
  cmd->add_flag("--json", a->json, "one JSON object per prompt on stdout");
  cmd->callback([a, cmd, &g] {
    a->prompt_given = cmd->count("--prompt") > 0;
    run_generate(*a, g);
  });
}

}  // namespace sl
