#include "sortedllama/train.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "sortedllama/checkpoint.h"
#include "sortedllama/distributed.h"
#include "sortedllama/eval_lm.h"
#include "sortedllama/exits.h"
#include "sortedllama/optimizer.h"
#include "sortedllama/safetensors.h"
#include "sortedllama/tokenizer.h"

namespace fs = std::filesystem;
using torch::Tensor;

namespace sl {

int64_t target_count(const Example& e) {
  int64_t n = 0;
  for (size_t t = 0; t + 1 < e.tokens.size(); ++t) n += e.target[t + 1] ? 1 : 0;
  return n;
}

Batch collate(const std::vector<const Example*>& examples, torch::Device device) {
  const int64_t B = (int64_t)examples.size();
  int64_t T = 0;
  for (const Example* e : examples) T = std::max<int64_t>(T, (int64_t)e->tokens.size());
  Tensor tokens = torch::zeros({B, T}, torch::kInt64), mask = torch::zeros({B, T}, torch::kInt64);
  Tensor labels = torch::full({B, T}, -100, torch::kInt64);
  auto tok = tokens.accessor<int64_t, 2>(), msk = mask.accessor<int64_t, 2>(), lab = labels.accessor<int64_t, 2>();
  int64_t targets = 0;
  for (int64_t b = 0; b < B; ++b) {
    const Example& e = *examples[b];
    for (size_t t = 0; t < e.tokens.size(); ++t) {
      tok[b][t] = e.tokens[t];
      msk[b][t] = 1;
      if (t + 1 < e.tokens.size() && e.target[t + 1]) {
        lab[b][t] = e.tokens[t + 1];
        ++targets;
      }
    }
  }
  return {tokens.to(device), mask.to(device), labels.to(device), targets};
}

double lr_at(int64_t step, int64_t total, int64_t warmup, double lr, double min_ratio) {
  if (step < warmup) return lr * (double)step / (double)std::max<int64_t>(1, warmup);
  const double progress = (double)(step - warmup) / (double)std::max<int64_t>(1, total - warmup);
  const double cosine = 0.5 * (1.0 + std::cos(M_PI * std::min(1.0, progress)));
  return lr * (min_ratio + (1.0 - min_ratio) * cosine);
}

namespace {
// Per-layer activation checkpointing: keep only each layer's input and recompute the layer during
// the backward pass (the backward of the recomputed layer runs re-entrantly inside this one).
struct CheckpointedLayer : torch::autograd::Function<CheckpointedLayer> {
  static Tensor forward(torch::autograd::AutogradContext* ctx, Tensor x, Tensor cos, Tensor sin, Tensor mask,
                        int64_t layer, int64_t model_ptr) {
    ctx->save_for_backward({x, cos, sin, mask});
    ctx->saved_data["layer"] = layer;
    ctx->saved_data["model"] = model_ptr;
    auto* model = reinterpret_cast<LlamaImpl*>(model_ptr);
    return model->layer((int)layer, x, AttnInputs{cos, sin, mask}, nullptr);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto saved = ctx->get_saved_variables();
    auto* model = reinterpret_cast<LlamaImpl*>(ctx->saved_data["model"].toInt());
    Tensor x = saved[0].detach().requires_grad_(true);
    {
      torch::AutoGradMode enable(true);
      Tensor y = model->layer((int)ctx->saved_data["layer"].toInt(), x, AttnInputs{saved[1], saved[2], saved[3]}, nullptr);
      torch::autograd::backward({y}, {grad_out[0]});
    }
    return {x.grad(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

// The trunk of a training step: layers 1..max(exits), optionally checkpointed.
std::vector<Tensor> trunk_forward(Llama& model, const Batch& b, const std::vector<int>& exits, bool checkpoint) {
  if (!checkpoint) return model->forward(b.tokens, exits, b.key_mask);
  const int64_t B = b.tokens.size(0), T = b.tokens.size(1);
  AttnInputs in = model->attn_inputs(b.key_mask, B, 0, T);
  Tensor x = model->embed(b.tokens);
  const int deepest = *std::max_element(exits.begin(), exits.end());
  std::vector<Tensor> hidden(exits.size());
  for (int i = 0; i < deepest; ++i) {
    x = CheckpointedLayer::apply(x, in.cos, in.sin, in.mask, (int64_t)i, reinterpret_cast<int64_t>(model.get()));
    for (size_t e = 0; e < exits.size(); ++e)
      if (exits[e] == i + 1) hidden[e] = x;
  }
  return hidden;
}
}  // namespace

std::map<int, double> multi_exit_backward(Llama& model, const Batch& batch, const std::vector<int>& exits,
                                          const std::vector<double>& weights, double norm, int64_t chunk,
                                          bool checkpoint_activations) {
  std::vector<Tensor> hidden = trunk_forward(model, batch, exits, checkpoint_activations);  // each [B,T,D]
  Tensor flat_labels = batch.labels.reshape({-1});                                         // [B*T]
  Tensor pos = flat_labels.ge(0).nonzero().squeeze(1);                                     // [N]
  std::map<int, double> nll;
  std::vector<Tensor> roots, root_grads;
  for (size_t e = 0; e < exits.size(); ++e) {
    // A leaf copy of the exit's hidden state collects this exit's gradient; the trunk's graph stays.
    Tensor leaf = hidden[e].detach().requires_grad_(hidden[e].requires_grad());
    double sum = 0;
    for (int64_t s = 0; s < pos.size(0); s += chunk) {
      Tensor p = pos.narrow(0, s, std::min(chunk, pos.size(0) - s));                // [n]
      Tensor h = leaf.reshape({-1, leaf.size(-1)}).index_select(0, p);              // [n,D]
      Tensor logits = model->head(h, exits[e]).to(torch::kFloat32);                  // [n,V]
      Tensor loss = torch::nn::functional::cross_entropy(
          logits, flat_labels.index_select(0, p), torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
      sum += loss.item<double>();
      if (loss.requires_grad()) (loss * (weights[e] / norm)).backward();
    }
    nll[exits[e]] = sum;
    if (leaf.requires_grad() && leaf.grad().defined()) {
      roots.push_back(hidden[e]);
      root_grads.push_back(leaf.grad());
    }
  }
  if (!roots.empty()) torch::autograd::backward(roots, root_grads);
  return nll;
}

std::map<int, double> validation_loss(Llama& model, const std::vector<Example>& data, const std::vector<int>& exits,
                                      int64_t batch_size, Dist* dist) {
  torch::NoGradGuard no_grad;
  auto dev = model->body->norm->weight.device();
  const int rank = dist ? dist->rank() : 0, world = dist ? dist->world() : 1;
  std::vector<const Example*> mine;  // rank r scores examples r, r + world, ...
  for (size_t i = (size_t)rank; i < data.size(); i += (size_t)world) mine.push_back(&data[i]);
  Tensor sums = torch::zeros({(int64_t)exits.size() + 1}, torch::kFloat64);  // per exit, then targets
  for (size_t s = 0; s < mine.size(); s += (size_t)batch_size) {
    std::vector<const Example*> group(mine.begin() + s, mine.begin() + std::min(mine.size(), s + (size_t)batch_size));
    Batch b = collate(group, dev);
    auto hidden = model->forward(b.tokens, exits, b.key_mask);
    for (size_t e = 0; e < exits.size(); ++e)
      sums[e] += exit_nll_sum(model, hidden[e], b.labels, exits[e]).item<double>();
    sums[(int64_t)exits.size()] += (double)b.targets;
  }
  if (dist) dist->all_reduce_sum(sums);
  std::map<int, double> out;
  for (size_t e = 0; e < exits.size(); ++e)
    out[exits[e]] = sums[e].item<double>() / std::max(1.0, sums[(int64_t)exits.size()].item<double>());
  return out;
}

namespace {
std::string step_dir_name(int64_t step) { return fmt::format("step-{:06d}", step); }

// Latest out_dir/step-NNNNNN that holds a complete trainer state.
std::string latest_checkpoint(const std::string& out_dir) {
  std::string best;
  if (!fs::is_directory(out_dir)) return best;
  for (auto& e : fs::directory_iterator(out_dir)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("step-", 0) == 0 && fs::exists(e.path() / "trainer_state.json") && name > fs::path(best).filename().string())
      best = e.path().string();
  }
  return best;
}

void save_trainer_state(const std::string& dir, const OptimizerState& st, int64_t step, int world,
                        const nlohmann::json& config) {
  std::vector<TensorBlob> blobs;
  for (const auto& [name, t] : st.tensors)
    blobs.push_back({name, "F32", std::vector<int64_t>(t.sizes().begin(), t.sizes().end()), t.data_ptr(),
                     (size_t)t.numel() * 4});
  write_safetensors(dir + "/optimizer.safetensors", blobs);
  std::ofstream f(dir + "/trainer_state.json");
  f << nlohmann::json{{"step", step}, {"adam_steps", st.steps}, {"world_size", world}, {"config", config}}.dump(2) << "\n";
  if (!f) throw std::runtime_error(dir + "/trainer_state.json: write failed");
}

// Any number of ranks can resume a state saved by any other: it holds every parameter's moments.
int64_t load_trainer_state(const std::string& dir, DistAdamW& opt) {
  const std::string path = dir + "/trainer_state.json";
  std::ifstream f(path);
  if (!f) throw std::runtime_error("cannot resume: " + path + " is missing");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(f);
  } catch (const nlohmann::json::parse_error& e) {
    throw std::runtime_error(path + ": malformed JSON: " + e.what());
  }
  if (!j.contains("step") || !j["step"].is_number_integer() || !j.contains("adam_steps") || !j["adam_steps"].is_object())
    throw std::runtime_error(path + ": missing \"step\" or \"adam_steps\"");
  SafetensorsFile sf(dir + "/optimizer.safetensors");
  opt.load_state(
      [&](const std::string& key) {
        if (!sf.contains(key)) return Tensor();
        const TensorView& v = sf.at(key);
        if (v.dtype != "F32") throw std::runtime_error(sf.path() + ": tensor " + key + " is " + v.dtype + ", not F32");
        // clone: the mapping is read-only and goes away with `sf`.
        return torch::from_blob(const_cast<uint8_t*>(v.data), v.shape, torch::kFloat32).clone();
      },
      j["adam_steps"], sf.path());
  return j["step"].get<int64_t>();
}

// extracted fine-tuning: a new model holding the first k layers, the final norm and the head.
Llama extract_layers(Llama& full, int64_t k) {
  ModelConfig c = full->config();
  if (k < 1 || k > c.n_layers)
    throw std::runtime_error("config key \"extract_layers\": " + std::to_string(k) + " is outside the model's 1.." +
                             std::to_string(c.n_layers) + " layers");
  c.n_layers = k;
  c.ict_exits.clear();
  Llama small(c);
  small->to(full->body->norm->weight.device());
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
}  // namespace

FinetuneResult finetune(const nlohmann::json& config, const std::string& resume, torch::Device device,
                        const FinetuneHooks& hooks) {
  const TrainOptions o = parse_train_options(config);
  // Data-parallel ranks (torchrun's environment, or `sortedllama launch`); a lone process is rank 0 of 1.
  const DistEnv env = DistEnv::from_environment();
  if (device.is_cuda() && env.world > 1) device = torch::Device(torch::kCUDA, (c10::DeviceIndex)env.local_rank);
  if (o.batch_size % env.world != 0)
    throw std::runtime_error("config key \"train.batch_size\" (" + std::to_string(o.batch_size) +
                             " sequences per micro-batch, over all ranks) is not divisible by the " +
                             std::to_string(env.world) + " ranks");
  Dist dist(env, std::chrono::seconds(o.dist_timeout_s));
  const bool lead = dist.rank() == 0;  // rank 0 logs and writes; every rank computes
  const torch::Dtype dtype = o.precision == "bf16" ? torch::kBFloat16 : torch::kFloat32;
  if (lead) fs::create_directories(o.out_dir);

  // Where to start: a checkpoint when resuming, else the configured model or a fresh one.
  std::string resume_dir = resume == "auto" ? latest_checkpoint(o.out_dir) : resume;
  if (resume == "auto" && resume_dir.empty() && lead) spdlog::info("no checkpoint in {}: starting fresh", o.out_dir);
  Llama model{nullptr};
  if (!resume_dir.empty()) {
    model = load_model(resume_dir, device, dtype);
  } else if (!o.model.empty()) {
    model = load_model(o.model, device, dtype);
  } else {
    ModelConfig c = ModelConfig::from_json(o.init, "config key \"init\"");
    model = Llama(c);
    model->init_weights(0.02, o.seed);
    model->to(device, dtype);
  }
  const std::string tok_path = !o.tokenizer.empty() ? o.tokenizer : model_tokenizer_path(o.model.empty() ? resume_dir : o.model);
  Tokenizer tok(tok_path);
  if (tok.vocab_size() > model->config().vocab_size)
    throw std::runtime_error(tok_path + " has more pieces than the model has embedding rows");

  // Method: which exits carry loss and which tensors train.
  if (o.method == "extracted" && model->config().n_layers != o.extract_layers) model = extract_layers(model, o.extract_layers);
  const int L = (int)model->config().n_layers;
  std::vector<int> exits = parse_exits(o.exits, L);
  if (o.method == "sft" || o.method == "extracted") exits = {L};
  if (o.method == "ict") {
    exits.erase(std::remove(exits.begin(), exits.end(), L), exits.end());
    if (exits.empty()) throw std::runtime_error("config key \"exits\": ict needs intermediate exits below layer " + std::to_string(L));
    model->add_ict_heads(exits);
  }
  std::vector<double> weights = o.exit_weights;
  if (weights.empty()) weights.assign(exits.size(), 1.0);
  if (weights.size() != exits.size())
    throw std::runtime_error("config key \"exit_weights\" has " + std::to_string(weights.size()) + " values for " +
                             std::to_string(exits.size()) + " exits (" + format_exits(exits) + ")");
  std::vector<std::pair<std::string, Tensor>> trainable;
  for (auto& p : model->named_parameters()) {
    const bool train = o.method != "ict" || p.key().rfind("ict_heads.", 0) == 0;
    p.value().set_requires_grad(train);
    if (train) trainable.emplace_back(p.key(), p.value());
  }
  model->train();
  if (dist.world() > 1) {  // every rank starts from rank 0's weights, whatever its own initialisation did
    torch::NoGradGuard no_grad;
    for (auto& p : model->parameters()) {
      Tensor t = p.to(torch::kFloat32);
      dist.broadcast(t, 0);
      p.copy_(t);
    }
  }

  // Data.
  DataStats st;
  std::vector<Example> train = load_examples(o.train_file, tok, o.data, &st), valid;
  if (lead)
    spdlog::info("{}: {} examples ({} skipped, {} dropped as too long, {} truncated), {} target tokens", o.train_file,
                 st.used, st.skipped, st.too_long, st.truncated, st.target_tokens);
  if (!o.valid_file.empty()) valid = load_examples(o.valid_file, tok, o.data, nullptr);
  else if (o.valid_fraction > 0) split_validation(train, valid, o.valid_fraction, o.seed);

  // Schedule: a step is grad_accum micro-batches; epochs cycle when max_steps asks for more.
  const int64_t per_epoch = (int64_t)((train.size() + o.batch_size - 1) / o.batch_size);
  const int64_t total = o.max_steps > 0 ? o.max_steps : (o.epochs * per_epoch + o.grad_accum - 1) / o.grad_accum;
  const int64_t warmup = (int64_t)std::ceil(o.warmup_ratio * (double)total);

  // Positions per loss chunk: auto keeps one chunk's fp32 logits near 8 MiB (65 positions for a
  // 32000-token vocabulary), so the logits, their softmax and their gradient are reused heap blocks
  // rather than fresh page-faulted mappings, and SoFT's peak memory stays close to SFT's.
  const int64_t loss_chunk = o.loss_chunk > 0 ? o.loss_chunk : std::max<int64_t>(32, (8 << 20) / (4 * model->config().vocab_size));
  AdamWConfig adam{o.beta1, o.beta2, o.adam_eps, o.weight_decay};  // decay on matrices only, as HF does for LLaMA
  DistAdamW opt(trainable, adam, dist, o.zero_stage == 2, o.bucket_mb);

  int64_t step = 0;
  if (!resume_dir.empty()) {
    step = load_trainer_state(resume_dir, opt);
    if (lead) spdlog::info("resumed from {} at step {}", resume_dir, step);
  }
  if (lead) {
    std::ofstream f(o.out_dir + "/config.json");
    f << config.dump(2) << "\n";
    spdlog::info("{} on {} layers, exits {} (weights {}), {} steps of {} x {} sequences over {} rank(s), lr {} (warmup {}), "
                 "{} trainable tensors, {}, optimizer {} ({} of {} elements on this rank)",
                 o.method, L, format_exits(exits), nlohmann::json(weights).dump(), total, o.grad_accum, o.batch_size,
                 dist.world(), o.lr, warmup, trainable.size(), o.precision, o.zero_stage == 2 ? "sharded (ZeRO-2)" : "replicated",
                 opt.owned_numel(), [&] { int64_t n = 0; for (auto& t : trainable) n += t.second.numel(); return n; }());
  }

  // On resume, lines of steps after the checkpoint (logged before the interruption) are dropped:
  // those steps run again and each step keeps one line.
  std::vector<std::string> kept;
  if (lead && !resume_dir.empty()) {
    std::ifstream old(o.out_dir + "/metrics.jsonl");
    for (std::string line; std::getline(old, line);) {
      auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (j.is_object() && j.value("step", (int64_t)0) <= step) kept.push_back(line);
    }
  }
  std::ofstream metrics;
  if (lead) metrics.open(o.out_dir + "/metrics.jsonl", std::ios::trunc);
  for (const auto& line : kept) metrics << line << "\n";
  auto log_valid = [&](int64_t at) {
    if (valid.empty()) return std::map<int, double>{};
    model->eval();
    auto v = validation_loss(model, valid, exits, o.batch_size, &dist);
    model->train();
    if (!lead) return v;
    nlohmann::json per = nlohmann::json::object();
    std::string line;
    for (auto& [e, l] : v) {
      per[std::to_string(e)] = l;
      line += fmt::format(" {}:{:.4f}", e, l);
    }
    metrics << nlohmann::json{{"type", "valid"}, {"step", at}, {"exit_loss", per}}.dump() << "\n" << std::flush;
    spdlog::info("step {} validation loss per exit:{}", at, line);
    return v;
  };
  // Every rank takes part (the optimizer state is gathered); rank 0 writes.
  auto save_checkpoint = [&](const std::string& dir, bool with_state) {
    OptimizerState state;
    if (with_state) state = opt.gather_state();
    if (lead)
      write_dir_atomically(dir, [&](const std::string& tmp) {
        write_model_files(model, tmp, tok_path, dtype);  // bf16 training saves BF16, like HF checkpoints
        if (with_state) save_trainer_state(tmp, state, step, dist.world(), config);
      });
    dist.barrier();
  };

  FinetuneResult result;
  const bool tty = isatty(STDERR_FILENO);
  const auto t_start = std::chrono::steady_clock::now();
  const int64_t start_step = step;
  std::vector<std::vector<size_t>> batches;
  int64_t batches_epoch = -1;
  bool told_buckets = false;  // the reduction plan is logged after the first step
  while (step < total) {
    if (hooks.stop_after > 0 && step - start_step >= hooks.stop_after) {
      result.steps = step;
      return result;
    }
    const auto t0 = std::chrono::steady_clock::now();
    // Exits this step: all, or (exit_sample) a seeded random subset that always holds the last.
    std::vector<int> step_exits = exits;
    std::vector<double> step_weights = weights;
    if (o.method == "soft" && o.exit_sample > 0 && o.exit_sample < (int64_t)exits.size()) {
      std::vector<size_t> idx = shuffled_indices(exits.size() - 1, o.seed * 1000003 + (uint64_t)step);
      idx.resize(o.exit_sample - 1);
      idx.push_back(exits.size() - 1);
      std::sort(idx.begin(), idx.end());
      step_exits.clear();
      step_weights.clear();
      for (size_t i : idx) {
        step_exits.push_back(exits[i]);
        step_weights.push_back(weights[i]);
      }
    }
    double wsum = 0;
    for (double w : step_weights) wsum += w;
    // The step's micro-batches; micro-batch m is batch (m % per_epoch) of epoch (m / per_epoch).
    // Every rank knows the whole global batch (for the token counts) and runs its contiguous share.
    std::vector<Batch> micro;
    int64_t targets = 0, tokens = 0;
    for (int64_t a = 0; a < o.grad_accum; ++a) {
      const int64_t m = step * o.grad_accum + a, epoch = m / per_epoch;
      if (epoch != batches_epoch) {
        batches = epoch_batches(train, o.batch_size, o.seed, epoch, o.group_by_length);
        batches_epoch = epoch;
      }
      const std::vector<size_t>& global = batches[m % per_epoch];
      const size_t n = global.size(), lo = n * dist.rank() / dist.world(), hi = n * (dist.rank() + 1) / dist.world();
      std::vector<const Example*> group;
      for (size_t j = 0; j < n; ++j) {
        targets += target_count(train[global[j]]);
        tokens += (int64_t)train[global[j]].tokens.size();
        if (j >= lo && j < hi) group.push_back(&train[global[j]]);
      }
      if (!group.empty()) micro.push_back(collate(group, device));
    }
    std::map<int, double> exit_nll;
    for (size_t m = 0; m < micro.size(); ++m) {
      if (m + 1 == micro.size()) opt.overlap_next_backward();  // reduce layers' gradients as they complete
      for (auto& [e, v] : multi_exit_backward(model, micro[m], step_exits, step_weights, wsum * std::max<int64_t>(1, targets),
                                              loss_chunk, o.checkpoint_activations))
        exit_nll[e] += v;
    }
    const double lr = lr_at(step, total, warmup, o.lr, o.min_lr_ratio);
    const double grad_norm = opt.step(lr, o.clip);
    opt.zero_grad();
    ++step;
    if (lead && dist.world() > 1 && !told_buckets) {
      spdlog::info("gradient reduction: {} buckets of at most {} MiB, {} started during the backward pass",
                   opt.bucket_count(), o.bucket_mb, opt.early_buckets());
      told_buckets = true;
    }

    Tensor nll = torch::zeros({(int64_t)step_exits.size()}, torch::kFloat64);  // summed over ranks
    for (size_t i = 0; i < step_exits.size(); ++i) nll[(int64_t)i] = exit_nll[step_exits[i]];
    dist.all_reduce_sum(nll);
    double loss = 0;
    nlohmann::json per = nlohmann::json::object();
    for (size_t i = 0; i < step_exits.size(); ++i) {
      const double l = nll[(int64_t)i].item<double>() / (double)std::max<int64_t>(1, targets);
      per[std::to_string(step_exits[i])] = l;
      loss += step_weights[i] * l / wsum;
    }
    result.losses.push_back(loss);
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    const double eta = elapsed / (double)(step - start_step) * (double)(total - step);
    const double epoch_f = (double)(step * o.grad_accum) / (double)per_epoch;
    const double tok_s = tokens / (ms / 1000.0);
    if (lead) {
      nlohmann::json rec = {{"type", "train"}, {"step", step},       {"epoch", epoch_f}, {"loss", loss},
                            {"exit_loss", per}, {"lr", lr},          {"grad_norm", grad_norm},
                            {"tokens", tokens}, {"tokens_per_s", tok_s}, {"ms_per_step", ms}, {"eta_s", eta}};
      metrics << rec.dump() << "\n" << std::flush;
    }
    if (lead && (step % o.log_every == 0 || step == total)) {
      std::string exit_str;
      for (auto& [e, l] : per.items()) exit_str += fmt::format(" {}:{:.3f}", e, l.get<double>());
      const std::string line = fmt::format("step {}/{} epoch {:.2f} loss {:.4f} [{} ] lr {:.2e} gnorm {:.2f} {:.0f} tok/s {:.0f} ms/step ETA {}",
                                           step, total, epoch_f, loss, exit_str, lr, grad_norm, tok_s, ms, format_duration(eta));
      if (tty) fmt::print(stderr, "\r\033[K{}", line);
      else spdlog::info("{}", line);
      if (tty && step == total) fmt::print(stderr, "\n");
    }
    if (o.eval_every > 0 && step % o.eval_every == 0 && step < total) {
      if (tty && lead) fmt::print(stderr, "\n");
      log_valid(step);
    }
    if (o.save_every > 0 && step % o.save_every == 0 && step < total) {
      save_checkpoint(o.out_dir + "/" + step_dir_name(step), true);
      // Keep the newest keep_last step directories.
      std::vector<std::string> dirs;
      if (lead)
        for (auto& e : fs::directory_iterator(o.out_dir))
          if (e.path().filename().string().rfind("step-", 0) == 0) dirs.push_back(e.path().string());
      std::sort(dirs.begin(), dirs.end());
      for (size_t i = 0; i + (size_t)o.keep_last < dirs.size(); ++i) fs::remove_all(dirs[i]);
    }
  }
  result.valid_loss = log_valid(step);
  result.final_dir = o.out_dir + "/final";
  model->eval();
  save_checkpoint(result.final_dir, false);
  result.steps = step;
  if (lead) spdlog::info("saved {}", result.final_dir);
  return result;
}

}  // namespace sl
