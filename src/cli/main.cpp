// sortedllama: Sorted Fine-Tuning (SoFT) of LLaMA 2 and its nested sub-models.
// Subcommands live in src/cli/<name>.cpp; this file holds the global options and error handling.
#include <malloc.h>
#include <unistd.h>

#include <charconv>
#include <fstream>
#include <iostream>

#include <fmt/format.h>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "cli.h"
#include "sortedllama/data/records.h"
#include "sortedllama/io/checkpoint.h"
#include "sortedllama/util/files.h"
#include "sortedllama/util/runtime.h"

namespace sl {

torch::Device resolve_device(const std::string& name) {
  if (name == "auto") return torch::cuda::is_available() ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);
  torch::Device d(name);  // throws on a malformed name
  if (d.is_cuda() && !torch::cuda::is_available())
    throw std::runtime_error("--device " + name + ": this build or machine has no CUDA");
  return d;
}

torch::Dtype compute_dtype(const torch::Device& d) { return d.is_cuda() ? torch::kBFloat16 : torch::kFloat32; }

LoadedModel load_model_and_tokenizer(const std::string& dir, const std::string& tokenizer, const GlobalOptions& g) {
  LoadedModel m;
  torch::Device dev = resolve_device(g.device);
  m.model = load_model(dir, dev, compute_dtype(dev));
  const std::string tok = tokenizer.empty() ? model_tokenizer_path(dir) : tokenizer;
  m.tokenizer = std::make_unique<Tokenizer>(tok);
  if (m.tokenizer->vocab_size() > m.model->config().vocab_size)
    throw std::runtime_error(tok + " has " + std::to_string(m.tokenizer->vocab_size()) + " pieces but " + dir +
                             " has only " + std::to_string(m.model->config().vocab_size) +
                             " embedding rows: tokenizer and weights do not belong together");
  return m;
}

uint64_t parse_u64(const std::string& text, const std::string& option) {
  uint64_t v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec == std::errc::result_out_of_range)
    throw std::runtime_error(option + " " + text + " is out of range (0 .. 18446744073709551615)");
  if (ec != std::errc() || end != text.data() + text.size() || text.empty())
    throw std::runtime_error(option + " " + text + " is not a non-negative integer");
  return v;
}

std::vector<std::string> read_prompts(const std::string& path, const std::string& option) {
  std::vector<std::string> prompts;
  if (path.size() >= 6 && path.substr(path.size() - 6) == ".jsonl") {
    try {
      for (const auto& r : read_records(path)) prompts.push_back(string_field(r, "prompt"));
    } catch (const std::runtime_error& e) {
      throw std::runtime_error(option + ": " + e.what());  // e names the file and line
    }
  } else {
    std::ifstream f(path);
    if (!f) throw std::runtime_error(option + ": cannot open " + path);
    for (std::string line; std::getline(f, line);)
      if (!line.empty()) prompts.push_back(line);
  }
  if (prompts.empty()) throw std::runtime_error(option + " " + path + ": no prompts in it");
  return prompts;
}

DynamicParams choose_dynamic(const std::string& thresholds, const std::string& confidence, bool confidence_given,
                             const LoadedModel& m, const std::string& model_dir) {
  const ModelConfig& cfg = m.model->config();
  DynamicParams p;
  p.confidence = parse_confidence(confidence);
  if (!thresholds.empty()) {
    p.thresholds = parse_thresholds(thresholds, (int)cfg.n_layers);
    spdlog::info("dynamic exit: thresholds {} from --thresholds ({})", format_thresholds(p.thresholds), confidence);
    return p;
  }
  const auto& profile = cfg.dynamic_profile;
  if (profile && (!confidence_given || profile->confidence == confidence)) {
    p = dynamic_params(*profile);
    const nlohmann::json& c = profile->calibrated;
    spdlog::info("dynamic exit: thresholds {} ({}) from the decoding profile in {}/config.json{}", format_thresholds(p.thresholds),
                 profile->confidence, model_dir,
                 c.is_object() && c.contains("agreement") && c.contains("confidence")
                     ? fmt::format(", calibrated for agreement {} with probability {}", c["agreement"].dump(), c["confidence"].dump())
                     : std::string());
    return p;
  }
  if (profile)
    spdlog::warn("dynamic exit: {}/config.json's decoding profile is for --confidence {}, not {}: using the default thresholds",
                 model_dir, profile->confidence, confidence);
  p.thresholds = default_thresholds((int)cfg.n_layers);
  spdlog::info("dynamic exit: default thresholds {} ({})", format_thresholds(p.thresholds), confidence);
  return p;
}

SpeculativeParams choose_speculative(const SpeculativeChoice& given, bool full_verifier, const LoadedModel& m,
                                     const std::string& model_dir) {
  SpeculativeParams p;
  p.draft_layer = given.draft_layer;
  p.draft_tokens = given.draft_tokens;
  p.draft_confidence = given.draft_confidence;
  const auto& profile = m.model->config().speculative_profile;
  if (given.draft_layer > 0 || !profile) return p;
  if (!full_verifier) {
    spdlog::info("speculative: {}/config.json's tuned profile is for the full model as verifier: using the defaults", model_dir);
    return p;
  }
  p.draft_layer = profile->draft_layer;
  if (!given.tokens_given) p.draft_tokens = profile->draft_tokens;
  if (!given.confidence_given) p.draft_confidence = profile->draft_confidence;
  const nlohmann::json& t = profile->tuned;
  spdlog::info("speculative: draft layer {}, {} from the tuned profile in {}/config.json{}", p.draft_layer,
               p.draft_confidence > 0 ? fmt::format("confidence-stopped at {}", p.draft_confidence)
               : p.draft_tokens > 0   ? fmt::format("{} drafts per round", p.draft_tokens)
                                      : std::string("adaptive length"),
               model_dir,
               t.is_object() && t.contains("measured_end_to_end")
                   ? fmt::format(" (measured {:.2f}x at batch {})", t["measured_end_to_end"].get<double>(), profile->batch_size)
                   : std::string());
  return p;
}

void add_profile_source_options(CLI::App* cmd, std::string& model, std::string& tokenizer, std::string& prompts) {
  cmd->add_option("--model", model, "HF model directory (its config.json receives the decoding profile)")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--tokenizer", tokenizer, "sentencepiece model (default: MODEL/tokenizer.model)");
  cmd->add_option("--prompts", prompts, "calibration prompts: .jsonl with {\"prompt\": ...}, else one per line")
      ->required()
      ->check(CLI::ExistingFile);
}

std::vector<std::vector<int>> encode_prompts(const std::vector<std::string>& texts, const LoadedModel& m, int64_t batch_size,
                                             int64_t extra_positions) {
  std::vector<std::vector<int>> ids;
  size_t longest = 0;
  for (const auto& t : texts) {
    ids.push_back(m.tokenizer->encode(t, /*bos=*/true));
    longest = std::max(longest, ids.back().size());
  }
  check_kv_cache_fits(m.model, std::min<int64_t>(batch_size, (int64_t)ids.size()), (int64_t)longest, extra_positions);
  return ids;
}

void emit_results(const nlohmann::ordered_json& result, const std::string& out, bool json, const std::string& table) {
  if (!out.empty()) write_file_atomic(out, result.dump(2) + "\n");
  if (json) std::cout << result.dump(2) << "\n";
  else std::cout << table;
}

void check_kv_cache_fits(const Llama& model, int64_t batch, int64_t prompt_len, int64_t max_new_tokens) {
  if (!model->device().is_cpu()) return;
  const ModelConfig& cfg = model->config();
  const double positions = (double)prompt_len + (double)max_new_tokens;
  const double bytes = 2.0 * (double)cfg.n_layers * (double)batch * (double)cfg.n_kv_heads * (double)cfg.head_dim() *
                       positions * (double)c10::elementSize(model->dtype());
  const double ram = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGE_SIZE);
  if (bytes > ram)
    throw std::runtime_error(fmt::format("--max-new-tokens {} needs a KV cache of {:.1f} GiB for {} sequence(s) of {} "
                                         "prompt tokens, more than this machine's {:.1f} GiB of memory; lower "
                                         "--max-new-tokens or --batch-size",
                                         max_new_tokens, bytes / (1 << 30), batch, prompt_len, ram / (1 << 30)));
}

nlohmann::ordered_json recorded_options(const CLI::App& cmd) {
  nlohmann::ordered_json out = nlohmann::ordered_json::object();
  for (const CLI::Option* opt : cmd.get_options()) {
    if (opt->get_lnames().empty() || opt->get_lnames()[0] == "help") continue;
    std::string key = opt->get_lnames()[0];
    std::replace(key.begin(), key.end(), '-', '_');
    if (opt->get_type_size() == 0) {  // a flag
      out[key] = opt->count() > 0;
      continue;
    }
    auto typed = [](const std::string& text) {  // numbers and booleans as such, the rest as text
      auto j = nlohmann::ordered_json::parse(text, nullptr, /*allow_exceptions=*/false);
      return j.is_number() || j.is_boolean() ? j : nlohmann::ordered_json(text);
    };
    const std::vector<std::string>& given = opt->results();
    if (opt->get_expected_max() > 1) {
      out[key] = nlohmann::ordered_json::array();
      for (const auto& v : given) out[key].push_back(typed(v));
    } else {
      out[key] = typed(given.empty() ? opt->get_default_str() : given.back());
    }
  }
  return out;
}

// The subcommand named on the command line: the first word that is neither a global option nor
// a global option's value.
std::string subcommand_of(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--threads" || a == "--device" || a == "--log-level") ++i;
    else if (a.empty() || a[0] != '-') return a;
  }
  return "";
}

}  // namespace sl

int main(int argc, char** argv) {
  // Settings that libraries read once, when they load (before main), take a restart of this same
  // binary (through its real path, so that ps and top still show "sortedllama"): a better OpenBLAS
  // kernel than the one it detected (or dropping one that failed its check), and the thread settings
  // of the subcommand (sl::thread_env_for).
  bool restart = sl::prepare_blas_kernel();
  for (const auto& [name, value] : sl::thread_env_for(sl::subcommand_of(argc, argv)))
    restart = setenv(name.c_str(), value.c_str(), 1) == 0 || restart;
  if (restart) {
    char self[4096];
    const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
      self[n] = '\0';
      execv(self, argv);  // returns only on failure: then carry on as this process is
    }
  }
  // glibc malloc, tuned for tensors: blocks up to 32 MiB come from the heap and are reused, and the
  // heap is not trimmed until 1 GiB of its top is free. glibc's defaults (a threshold that moves, a
  // 128 KiB trim) hand big blocks back to the kernel and fault them in again on the next step, which
  // made training 2-3x slower here. The loss allocates its logits buffer once per exit
  // (model/objective.h), so that block's size above the threshold costs one mapping, not one per chunk.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  auto logger = spdlog::stderr_color_mt("sortedllama");
  logger->set_pattern("[%H:%M:%S %^%l%$] %v");
  spdlog::set_default_logger(logger);

  sl::GlobalOptions g;
  bool version = false;
  CLI::App app{"sortedllama: Sorted Fine-Tuning (SoFT) of LLaMA 2 models and their nested sub-models"};
  app.require_subcommand(0, 1);
  app.add_flag("--version", version, "print version, BLAS and thread count");
  app.add_option("--threads", g.threads, "intra-op CPU threads (default: one per core)")->check(CLI::NonNegativeNumber);
  app.add_option("--device", g.device, "auto | cpu | cuda | cuda:N (auto: cuda when available)");
  app.add_option("--log-level", g.log_level, "trace | debug | info | warn | error")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}));
  app.parse_complete_callback([&] {
    spdlog::set_level(spdlog::level::from_str(g.log_level));
    int n = sl::init_threads(g.threads);
    spdlog::debug("{} threads, BLAS: {}", n, sl::blas_description());
    if (const std::string kernel = sl::blas_kernel_note(); !kernel.empty()) spdlog::info("OpenBLAS {}", kernel);
    if (!sl::blas_is_optimized()) spdlog::warn("slow BLAS in use: {}", sl::blas_description());
  });
  sl::add_generate_command(app, g);
  sl::add_calibrate_command(app, g);
  sl::add_tune_command(app, g);
  sl::add_eval_command(app, g);
  sl::add_convert_command(app, g);
  sl::add_data_command(app, g);
  sl::add_finetune_command(app, g);
  sl::add_launch_command(app, g);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const c10::Error& e) {
    spdlog::error("{}", e.what_without_backtrace());
    return 1;
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return 1;
  }
  if (version) {
    std::cout << sl::version_string() << "\n";
  } else if (app.get_subcommands().empty()) {
    std::cerr << app.help() << "\nerror: a subcommand is required\n";
    return 1;
  }
  // Results go to stdout: a write that failed (a full disk, a closed pipe) must not look like success.
  std::cout.flush();
  if (!std::cout) {
    spdlog::error("cannot write to standard output: results were lost");
    return 1;
  }
  return 0;
}
