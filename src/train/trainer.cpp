#include "sortedllama/train/trainer.h"

#include <unistd.h>

#include <cmath>
#include <filesystem>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "sortedllama/io/checkpoint.h"
#include "sortedllama/io/tokenizer.h"
#include "sortedllama/model/exits.h"
#include "sortedllama/train/recipe.h"
#include "sortedllama/train/state.h"
#include "sortedllama/util/files.h"
#include "sortedllama/util/rng.h"
#include "sortedllama/util/stopwatch.h"

namespace fs = std::filesystem;
using torch::Tensor;

namespace sl {

namespace {
// extracted fine-tuning: a new model holding the first k layers, the final norm and the head.
Llama extract_layers(Llama& full, int64_t k) {
  ModelConfig c = full->config();
  if (k < 1 || k > c.n_layers)
    throw std::runtime_error("config key \"extract_layers\": " + std::to_string(k) + " is outside the model's 1.." +
                             std::to_string(c.n_layers) + " layers");
  c.n_layers = k;
  c.ict_exits.clear();
  Llama small(c);
  small->to(full->device(), full->dtype());
  torch::NoGradGuard no_grad;
  auto src = full->named_parameters();
  for (auto& p : small->named_parameters()) p.value().copy_(src[p.key()]);
  return small;
}

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const int64_t t = (int64_t)s;
  return t >= 3600 ? fmt::format("{}h{:02d}m", t / 3600, (t % 3600) / 60) : fmt::format("{}m{:02d}s", t / 60, t % 60);
}

// Keys that change how a run is logged, saved or spread over ranks, not what it computes: free to
// differ on resume.
bool operational_key(const std::string& key) {
  return key.rfind("/log/", 0) == 0 || key.rfind("/save/", 0) == 0 || key.rfind("/dist/", 0) == 0 || key == "/out_dir";
}
}  // namespace

Trainer::Trainer(const nlohmann::json& config, const std::string& resume, torch::Device device, const FinetuneHooks& hooks)
    : config_(config), o_(parse_train_options(config)), hooks_(hooks), resume_(resume), device_(device),
      tty_(isatty(STDERR_FILENO)) {
  init_distributed();
  load_or_init_model();
  plan_method();
  load_data();
  sched_ = Schedule::plan((int64_t)train_.size(), o_.batch_size, o_.grad_accum, o_.epochs, o_.max_steps, o_.warmup_ratio);
  loss_chunk_ = o_.loss_chunk > 0 ? o_.loss_chunk : default_loss_chunk(model_->config().vocab_size);
  make_optimizer_and_resume();
  open_run_log();
}

Trainer::~Trainer() = default;

// Data-parallel ranks (torchrun's environment, or `sortedllama launch`); a lone process is rank 0 of 1.
void Trainer::init_distributed() {
  const DistEnv env = DistEnv::from_environment();
  if (device_.is_cuda() && env.world > 1) device_ = torch::Device(torch::kCUDA, (c10::DeviceIndex)env.local_rank);
  if (o_.batch_size % env.world != 0)
    throw std::runtime_error("config key \"train.batch_size\" (" + std::to_string(o_.batch_size) +
                             " sequences per micro-batch, over all ranks) is not divisible by the " +
                             std::to_string(env.world) + " ranks");
  dist_ = std::make_unique<Dist>(env, std::chrono::seconds(o_.dist_timeout_s));
  dtype_ = o_.precision == Precision::kBf16 ? torch::kBFloat16 : torch::kFloat32;
  if (lead()) {
    fs::create_directories(o_.out_dir);
    remove_stale_temporaries(o_.out_dir);
  }
}

// Where to start: a checkpoint when resuming, else the configured model or a fresh one.
void Trainer::load_or_init_model() {
  resume_dir_ = resume_ == "auto" ? latest_checkpoint(o_.out_dir) : resume_;
  if (resume_ == "auto" && resume_dir_.empty() && lead()) spdlog::info("no checkpoint in {}: starting fresh", o_.out_dir);
  if (!resume_dir_.empty()) {
    model_ = load_model(resume_dir_, device_, dtype_);
  } else if (!o_.model.empty()) {
    model_ = load_model(o_.model, device_, dtype_);
    const ModelConfig& c = model_->config();
    if ((c.dynamic_profile || c.speculative_profile) && lead())
      spdlog::info("{}: its decoding profiles are not kept (training changes the weights they were measured on)", o_.model);
    model_->drop_decoding_profiles();
  } else {
    model_ = Llama(ModelConfig::from_json(o_.init, "config key \"init\""));
    model_->init_weights(0.02, o_.seed);
    model_->to(device_, dtype_);
  }
  tok_path_ = !o_.tokenizer.empty() ? o_.tokenizer : model_tokenizer_path(o_.model.empty() ? resume_dir_ : o_.model);
}

// Which exits carry loss, with which weights, and which tensors train.
void Trainer::plan_method() {
  if (o_.method == Method::kExtracted && model_->config().n_layers != o_.extract_layers)
    model_ = extract_layers(model_, o_.extract_layers);
  const int L = (int)model_->config().n_layers;
  exits_ = parse_exits(o_.exits, L);
  if (o_.method == Method::kSft || o_.method == Method::kExtracted) exits_ = {L};
  if (o_.method == Method::kIct) {
    exits_.erase(std::remove(exits_.begin(), exits_.end(), L), exits_.end());
    if (exits_.empty()) throw std::runtime_error("config key \"exits\": ict needs intermediate exits below layer " + std::to_string(L));
    model_->add_ict_heads(exits_);
  }
  weights_ = exit_weights_in_exit_order(L);
  drop_rates_ = layer_drop_rates(o_.layer_dropout, o_.layer_dropout_schedule, L);
  if (o_.exit_sample > (int64_t)exits_.size())
    throw std::runtime_error("config key \"exit_sample\" (" + std::to_string(o_.exit_sample) + ") is more than the " +
                             std::to_string(exits_.size()) + " exits (" + format_exits(exits_) + ")");
  for (auto& p : model_->named_parameters()) {
    const bool train = o_.method != Method::kIct || p.key().rfind("ict_heads.", 0) == 0;
    p.value().set_requires_grad(train);
    if (train) trainable_.emplace_back(p.key(), p.value());
  }
  model_->train();
  if (dist_->world() > 1) {  // every rank starts from rank 0's weights, whatever its own initialisation did
    torch::NoGradGuard no_grad;
    for (auto& p : model_->parameters()) {
      Tensor t = p.to(torch::kFloat32);
      dist_->broadcast(t, 0);
      p.copy_(t);
    }
  }
}

// exit_weights pair with the exits in the order the config lists them; exits_ is sorted. Without
// them, train.exit_scale gives the weights.
std::vector<double> Trainer::exit_weights_in_exit_order(int n_layers) const {
  if (o_.exit_weights.empty()) return exit_scale_weights(o_.exit_scale, exits_, o_.exit_scale_last);
  const bool listed = o_.method == Method::kSoft && o_.exits != "auto" && o_.exits != "all";
  const std::vector<int> order = listed ? parse_exits_in_order(o_.exits, n_layers) : exits_;
  for (size_t i = 0; i < order.size(); ++i)
    if (std::find(order.begin(), order.begin() + (std::ptrdiff_t)i, order[i]) != order.begin() + (std::ptrdiff_t)i)
      throw std::runtime_error("config key \"exits\": layer " + std::to_string(order[i]) +
                               " is listed twice, so its weight in \"exit_weights\" is ambiguous");
  if (o_.exit_weights.size() != exits_.size())
    throw std::runtime_error("config key \"exit_weights\" has " + std::to_string(o_.exit_weights.size()) + " values for " +
                             std::to_string(exits_.size()) + " exits (" + format_exits(exits_) + ")");
  std::map<int, double> by_exit;
  for (size_t i = 0; i < order.size(); ++i) by_exit[order[i]] = o_.exit_weights[i];
  std::vector<double> w;
  for (int e : exits_) w.push_back(by_exit.at(e));
  return w;
}

void Trainer::load_data() {
  Tokenizer tok(tok_path_);
  if (tok.vocab_size() > model_->config().vocab_size)
    throw std::runtime_error(tok_path_ + " has more pieces than the model has embedding rows");
  DataStats st;
  train_ = load_examples(o_.train_file, tok, o_.data, &st);
  if (lead())
    spdlog::info("{}: {} examples ({} skipped, {} dropped as too long, {} truncated), {} target tokens", o_.train_file,
                 st.used, st.skipped, st.too_long, st.truncated, st.target_tokens);
  if (!o_.valid_file.empty()) valid_ = load_examples(o_.valid_file, tok, o_.data, nullptr);
  else if (o_.valid_fraction > 0) split_validation(train_, valid_, o_.valid_fraction, o_.seed);
}

void Trainer::make_optimizer_and_resume() {
  const AdamWConfig adam{o_.beta1, o_.beta2, o_.adam_eps, o_.weight_decay};  // decay on matrices only, as HF does for LLaMA
  opt_ = std::make_unique<DistAdamW>(trainable_, adam, *dist_, o_.zero_stage == 2, o_.bucket_mb);
  if (!resume_dir_.empty()) {
    nlohmann::json saved;
    step_ = load_trainer_state(resume_dir_, *opt_, &saved);
    check_resumed_config(saved);
    if (lead()) spdlog::info("resumed from {} at step {}", resume_dir_, step_);
  }
  start_step_ = step_;
}

// A checkpoint continues the run it came from: a changed config would silently follow another
// schedule (or objective) from the middle of this one.
void Trainer::check_resumed_config(const nlohmann::json& saved) const {
  if (!saved.is_object()) return;  // written before configs were saved with the state
  std::string changes;
  for (const auto& d : nlohmann::json::diff(saved, config_)) {
    const std::string path = d.value("path", "");
    if (operational_key(path)) continue;
    changes += fmt::format("\n  {} {}: {}", d.value("op", "?"), path, d.contains("value") ? d["value"].dump() : "(removed)");
  }
  if (changes.empty()) return;
  if (!hooks_.resume_with_changes)
    throw std::runtime_error("cannot resume from " + resume_dir_ + ": the config differs from the one it was trained with:" +
                             changes + "\n(give --resume-with-changes to continue with the new config anyway)");
  if (lead()) spdlog::warn("resuming from {} with a changed config:{}", resume_dir_, changes);
}

// metrics.jsonl: one line per step. On resume, lines of steps after the checkpoint (logged before
// the interruption) are dropped: those steps run again and each step keeps one line.
void Trainer::open_run_log() {
  if (!lead()) return;
  spdlog::info("{} on {} layers, exits {} (weights {}, curriculum {}, layer dropout {}), {} steps of {} x {} sequences over {} rank(s), lr {} (warmup {}), "
               "{} trainable tensors, {}, optimizer {} ({} of {} elements on this rank)",
               method_name(o_.method), model_->config().n_layers, format_exits(exits_), nlohmann::json(weights_).dump(),
               config_["train"]["curriculum"].get<std::string>(), nlohmann::json(drop_rates_).dump(),
               sched_.total, o_.grad_accum, o_.batch_size, dist_->world(), o_.lr, sched_.warmup, trainable_.size(),
               o_.precision == Precision::kBf16 ? "bf16" : "fp32", o_.zero_stage == 2 ? "sharded (ZeRO-2)" : "replicated",
               opt_->owned_numel(), [&] { int64_t n = 0; for (auto& t : trainable_) n += t.second.numel(); return n; }());
  write_file_atomic(o_.out_dir + "/config.json", config_.dump(2) + "\n");
  std::vector<std::string> kept;
  if (!resume_dir_.empty()) {
    std::ifstream old(o_.out_dir + "/metrics.jsonl");
    for (std::string line; std::getline(old, line);) {
      auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (j.is_object() && j.value("step", (int64_t)0) <= step_) kept.push_back(line);
    }
  }
  metrics_.open(o_.out_dir + "/metrics.jsonl", std::ios::trunc);
  for (const auto& line : kept) metrics_ << line << "\n";
}

// The step's exits with their weights: all, a curriculum's subset, or (exit_sample) a seeded
// random subset; the last exit is always in.
Trainer::StepExits Trainer::exits_for_step() const {
  StepExits se;
  for (size_t i : active_exit_indices()) {
    se.exits.push_back(exits_[i]);
    se.weights.push_back(weights_[i]);
    se.weight_sum += weights_[i];
  }
  return se;
}

std::vector<size_t> Trainer::active_exit_indices() const {
  if (o_.method == Method::kSoft && o_.exit_sample > 0 && o_.exit_sample < (int64_t)exits_.size()) {
    std::vector<size_t> idx = shuffled_indices(exits_.size() - 1, o_.seed * 1000003 + (uint64_t)step_);
    idx.resize(o_.exit_sample - 1);
    idx.push_back(exits_.size() - 1);
    std::sort(idx.begin(), idx.end());
    return idx;
  }
  return curriculum_exits(o_.curriculum, exits_.size(), step_, sched_.total, o_.seed, o_.curriculum_period);
}

// This rank's share of the step's micro-batches. Every rank knows the whole global batch (for the
// token counts) and runs its contiguous share.
std::vector<Trainer::MicroBatch> Trainer::micro_batches(int64_t* targets, int64_t* tokens) {
  std::vector<MicroBatch> micro;
  *targets = *tokens = 0;
  dropped_.assign(drop_rates_.size(), 0);
  for (int64_t a = 0; a < o_.grad_accum; ++a) {
    const int64_t m = step_ * o_.grad_accum + a, epoch = m / sched_.per_epoch;
    if (epoch != batches_epoch_) {
      batches_ = epoch_batches(train_, o_.batch_size, o_.seed, epoch, o_.group_by_length);
      batches_epoch_ = epoch;
    }
    const std::vector<size_t>& global = batches_[m % sched_.per_epoch];
    const size_t n = global.size(), lo = n * dist_->rank() / dist_->world(), hi = n * (dist_->rank() + 1) / dist_->world();
    std::vector<const Example*> group;
    for (size_t j = 0; j < n; ++j) {
      *targets += target_count(train_[global[j]]);
      *tokens += (int64_t)train_[global[j]].tokens.size();
      if (j >= lo && j < hi) group.push_back(&train_[global[j]]);
    }
    Tensor keep = o_.layer_dropout > 0 ? layer_keep_mask(m, lo, hi, n) : Tensor();
    if (!group.empty()) micro.push_back({collate(group, device_), keep});
  }
  return micro;
}

// Layer dropout of global micro-batch m: rows lo..hi-1 of its n sequences, as [n_layers, hi-lo]
// bool (true = run the layer). Drawn for the whole global batch, so dropped_ counts every rank's
// sequences and the draws do not depend on the number of ranks.
Tensor Trainer::layer_keep_mask(int64_t m, size_t lo, size_t hi, size_t n) {
  const int L = (int)drop_rates_.size();
  Tensor keep = torch::ones({L, (int64_t)(hi - lo)}, torch::kBool);
  auto k = keep.accessor<bool, 2>();
  for (int l = 0; l < L; ++l)
    for (size_t j = 0; j < n; ++j) {
      if (!layer_dropped(drop_rates_[l], o_.seed, m, (int64_t)j, l)) continue;
      ++dropped_[l];
      if (j >= lo && j < hi) k[l][(int64_t)(j - lo)] = false;
    }
  return keep.to(device_);
}

// Forward and backward of every micro-batch; returns this rank's summed NLL per exit.
std::map<int, double> Trainer::train_step(const StepExits& se, const std::vector<MicroBatch>& micro, int64_t targets) {
  std::map<int, double> exit_nll;
  for (size_t m = 0; m < micro.size(); ++m) {
    if (m + 1 == micro.size()) opt_->overlap_next_backward();  // reduce layers' gradients as they complete
    for (auto& [e, v] : multi_exit_backward(model_, micro[m].batch, se.exits, se.weights,
                                            se.weight_sum * (double)std::max<int64_t>(1, targets), loss_chunk_,
                                            o_.checkpoint_activations, micro[m].layer_keep, &phases_))
      exit_nll[e] += v;
  }
  return exit_nll;
}

// The step's loss per exit, summed over ranks and divided by the step's target tokens.
Trainer::StepLoss Trainer::reduce_step_loss(const StepExits& se, const std::map<int, double>& exit_nll, int64_t targets) {
  Tensor nll = torch::zeros({(int64_t)se.exits.size()}, torch::kFloat64);
  for (size_t i = 0; i < se.exits.size(); ++i) nll[(int64_t)i] = exit_nll.count(se.exits[i]) ? exit_nll.at(se.exits[i]) : 0.0;
  dist_->all_reduce_sum(nll);
  StepLoss out;
  out.per_exit = nlohmann::json::object();
  for (size_t i = 0; i < se.exits.size(); ++i) {
    const double l = nll[(int64_t)i].item<double>() / (double)std::max<int64_t>(1, targets);
    out.per_exit[std::to_string(se.exits[i])] = l;
    out.loss += se.weights[i] * l / se.weight_sum;
  }
  return out;
}

// A NaN/Inf loss or gradient would turn every weight into NaN: stop before the update (the newest
// checkpoint is the last good one), or, when the config says so, skip the step.
bool Trainer::accept_finite(const StepLoss& sl, double grad_norm) {
  if (std::isfinite(sl.loss) && std::isfinite(grad_norm)) return true;
  const std::string what = fmt::format("step {}: the training loss is {} (per exit {}) and the gradient norm {}", step_ + 1,
                                       sl.loss, sl.per_exit.dump(), grad_norm);
  if (!o_.skip_nonfinite) {
    const std::string last = latest_checkpoint(o_.out_dir);
    throw std::runtime_error(what + "; stopping before the update (newest checkpoint: " + (last.empty() ? "none" : last) +
                             "; set train.skip_nonfinite=true to skip such steps)");
  }
  if (lead()) {
    spdlog::warn("{}; skipping the step (train.skip_nonfinite)", what);
    metrics_ << nlohmann::json{{"type", "skipped"}, {"step", step_ + 1}, {"loss", sl.loss}, {"grad_norm", grad_norm}}.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n" << std::flush;
  }
  return false;
}

// One line of metrics.jsonl per step (with the step's exits, their weights and the sequences that
// skipped each layer) and the progress line.
void Trainer::log_step(const StepExits& se, const StepLoss& sl, int64_t tokens, double lr, double grad_norm, double ms) {
  elapsed_s_ += ms / 1000.0;
  const double eta = elapsed_s_ / (double)(step_ - start_step_) * (double)(sched_.total - step_);
  const double epoch_f = (double)(step_ * o_.grad_accum) / (double)sched_.per_epoch;
  const double tok_s = (double)tokens / (ms / 1000.0);
  if (!lead()) return;
  metrics_ << nlohmann::json{{"type", "train"}, {"step", step_},        {"epoch", epoch_f},       {"loss", sl.loss},
                             {"exit_loss", sl.per_exit}, {"exits", se.exits}, {"exit_weights", se.weights},
                             {"layers_dropped", dropped_}, {"lr", lr},    {"grad_norm", grad_norm}, {"tokens", tokens},
                             {"tokens_per_s", tok_s}, {"ms_per_step", ms}, {"eta_s", eta},
                             {"phase_ms", {{"data", phases_.data}, {"trunk_forward", phases_.trunk_forward},
                                           {"heads", phases_.heads}, {"trunk_backward", phases_.trunk_backward},
                                           {"optimizer", phases_.optimizer}}}}
                  .dump()
           << "\n"
           << std::flush;
  if (step_ % o_.log_every != 0 && step_ != sched_.total) return;
  std::string exit_str;
  for (auto& [e, l] : sl.per_exit.items()) exit_str += fmt::format(" {}:{:.3f}", e, l.get<double>());
  const std::string line = fmt::format("step {}/{} epoch {:.2f} loss {:.4f} [{} ] lr {:.2e} gnorm {:.2f} {:.0f} tok/s {:.0f} ms/step ETA {}",
                                       step_, sched_.total, epoch_f, sl.loss, exit_str, lr, grad_norm, tok_s, ms, format_duration(eta));
  if (tty_) fmt::print(stderr, "\r\033[K{}{}", line, step_ == sched_.total ? "\n" : "");
  else spdlog::info("{}", line);
}

std::map<int, double> Trainer::validate() {
  if (valid_.empty()) return {};
  model_->eval();
  auto v = validation_loss(model_, valid_, exits_, o_.batch_size, dist_.get());
  model_->train();
  if (!lead()) return v;
  nlohmann::json per = nlohmann::json::object();
  std::string line;
  for (auto& [e, l] : v) {
    per[std::to_string(e)] = l;
    line += fmt::format(" {}:{:.4f}", e, l);
  }
  metrics_ << nlohmann::json{{"type", "valid"}, {"step", step_}, {"exit_loss", per}}.dump() << "\n" << std::flush;
  spdlog::info("step {} validation loss per exit:{}", step_, line);
  return v;
}

// Every rank takes part (the optimizer state is gathered); rank 0 writes.
void Trainer::save_checkpoint(const std::string& dir, bool with_state) {
  OptimizerState state;
  if (with_state) state = opt_->gather_state();
  if (lead()) {
    require_replaceable_model_dir(dir);
    write_dir_atomically(dir, [&](const std::string& tmp) {
      write_model_files(model_, tmp, tok_path_, dtype_);  // bf16 training saves BF16, like HF checkpoints
      if (with_state) save_trainer_state(tmp, state, step_, dist_->world(), config_);
    });
  }
  dist_->barrier();
}

void Trainer::save_and_rotate() {
  save_checkpoint(o_.out_dir + "/" + step_dir_name(step_), true);
  if (lead()) prune_checkpoints(o_.out_dir, o_.keep_last);
}

FinetuneResult Trainer::run() {
  FinetuneResult result;
  bool told_buckets = false;  // the reduction plan is logged after the first step
  while (step_ < sched_.total) {
    if (hooks_.stop_after > 0 && step_ - start_step_ >= hooks_.stop_after) {
      result.steps = step_;
      return result;
    }
    const Stopwatch clock;
    phases_ = StepPhases{};
    const StepExits se = exits_for_step();
    int64_t targets = 0, tokens = 0;
    const std::vector<MicroBatch> micro = micro_batches(&targets, &tokens);
    phases_.data = clock.ms();
    const StepLoss loss = reduce_step_loss(se, train_step(se, micro, targets), targets);
    const double lr = lr_at(step_, sched_.total, sched_.warmup, o_.lr, o_.min_lr_ratio);
    const Stopwatch update;
    const double grad_norm = opt_->reduce_and_clip(o_.clip);
    if (accept_finite(loss, grad_norm)) opt_->apply(lr);
    opt_->zero_grad();
    phases_.optimizer = update.ms();
    ++step_;
    if (lead() && dist_->world() > 1 && !told_buckets) {
      spdlog::info("gradient reduction: {} buckets of at most {} MiB, {} started during the backward pass",
                   opt_->bucket_count(), o_.bucket_mb, opt_->early_buckets());
      told_buckets = true;
    }
    log_step(se, loss, tokens, lr, grad_norm, clock.ms());
    result.losses.push_back(loss.loss);
    if (o_.eval_every > 0 && step_ % o_.eval_every == 0 && step_ < sched_.total) {
      if (tty_ && lead()) fmt::print(stderr, "\n");
      validate();
    }
    if (o_.save_every > 0 && step_ % o_.save_every == 0 && step_ < sched_.total) save_and_rotate();
  }
  result.valid_loss = validate();
  result.final_dir = o_.out_dir + "/final";
  model_->eval();
  save_checkpoint(result.final_dir, false);
  result.steps = step_;
  if (lead()) spdlog::info("saved {}", result.final_dir);
  return result;
}

FinetuneResult finetune(const nlohmann::json& config, const std::string& resume, torch::Device device,
                        const FinetuneHooks& hooks) {
  return Trainer(config, resume, device, hooks).run();
}

}  // namespace sl
