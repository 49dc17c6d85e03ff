#include "sortedllama/train/optimizer.h"

#include <cmath>
#include <stdexcept>

#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

namespace sl {

using torch::Tensor;

namespace {
constexpr int64_t kBucketElems = 16 << 20;  // 64 MiB of fp32 per broadcast

// Consecutive runs of `idx` of one owner holding at most `cap` elements (at least one slot each).
template <class Slots>
std::vector<std::vector<size_t>> buckets(const Slots& slots, const std::vector<size_t>& idx, int64_t cap = kBucketElems) {
  std::vector<std::vector<size_t>> out;
  int64_t n = 0;
  for (size_t i : idx) {
    if (out.empty() || slots[out.back().back()].owner != slots[i].owner || n + slots[i].param.numel() > cap) {
      out.emplace_back();
      n = 0;
    }
    out.back().push_back(i);
    n += slots[i].param.numel();
  }
  return out;
}

bool in_decoder_layer(const std::string& name) { return name.rfind("model.layers.", 0) == 0; }

// Runs after autograd has accumulated a parameter's gradient.
// Runs before autograd accumulates a bf16 parameter's gradient: makes .grad an fp32 tensor.
struct Fp32GradHook : torch::autograd::FunctionPreHook {
  explicit Fp32GradHook(Tensor p) : param(std::move(p)) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& grads) override {
    Tensor& g = param.mutable_grad();
    if (!g.defined()) g = torch::zeros(param.sizes(), param.options().dtype(torch::kFloat32));
    else if (g.scalar_type() != torch::kFloat32) g = g.to(torch::kFloat32);
    return grads;
  }
  Tensor param;
};

struct ReadyHook : torch::autograd::FunctionPostHook {
  ReadyHook(std::function<void()> f) : f(std::move(f)) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list&) override {
    f();
    return outputs;
  }
  std::function<void()> f;
};
}  // namespace

DistAdamW::DistAdamW(std::vector<std::pair<std::string, Tensor>> params, const AdamWConfig& cfg, Dist& dist,
                     bool shard, double bucket_mb)
    : cfg_(cfg), dist_(dist), shard_(shard && dist.world() > 1) {
  // Owners: largest tensors first, each to the rank holding the fewest elements so far.
  std::vector<size_t> order(params.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return params[a].second.numel() > params[b].second.numel(); });
  std::vector<int64_t> load(dist.world(), 0);
  slots_.resize(params.size());
  for (size_t i : order) {
    Slot& s = slots_[i];
    s.name = params[i].first;
    s.param = params[i].second;
    if (shard_) {
      s.owner = (int)(std::min_element(load.begin(), load.end()) - load.begin());
      load[s.owner] += s.param.numel();
    }
  }
  for (Slot& s : slots_) {
    if (!owns(s)) continue;
    s.master = s.param.scalar_type() == torch::kFloat32 ? s.param : s.param.detach().to(torch::kFloat32);
    s.weight_decay = s.param.dim() >= 2 ? cfg.weight_decay : 0.0;
  }
  // Parameters that compute in bf16 collect their gradients in fp32: before autograd accumulates a
  // backward pass's gradient (each loss chunk of each exit, each micro-batch), the .grad it adds into
  // becomes an fp32 tensor, so hundreds of contributions are summed without a bf16 rounding each.
  for (Slot& s : slots_)
    if (s.param.scalar_type() != torch::kFloat32) {
      auto acc = torch::autograd::impl::grad_accumulator(s.param);
      acc->add_pre_hook(std::make_unique<Fp32GradHook>(s.param));
      hooked_.push_back(std::move(acc));
    }
  if (dist.world() == 1) return;

  // Reduction plan: decoder layers from the last (their gradients complete first in the backward
  // pass), then the rest (head, norms, embeddings: complete only at the end, or used by several
  // exits), cut where the owner changes or the bucket is full.
  std::vector<size_t> plan;
  for (bool layers : {true, false})
    for (size_t i = slots_.size(); i-- > 0;)
      if (in_decoder_layer(slots_[i].name) == layers) plan.push_back(i);
  bucket_of_.resize(slots_.size());
  slot_ready_.assign(slots_.size(), false);
  for (auto& run : buckets(slots_, plan, std::max<int64_t>(1, (int64_t)(bucket_mb * (1 << 20) / 4)))) {
    for (size_t i : run) bucket_of_[i] = buckets_.size();
    Bucket b;
    b.root = slots_[run.front()].owner;
    b.slots = std::move(run);
    buckets_.push_back(std::move(b));
  }
  for (size_t i = 0; i < slots_.size(); ++i) {
    if (!in_decoder_layer(slots_[i].name)) continue;
    auto acc = torch::autograd::impl::grad_accumulator(slots_[i].param);
    acc->add_post_hook(std::make_unique<ReadyHook>([this, i] { slot_ready(i); }));
    hooked_.push_back(std::move(acc));
  }
}

void DistAdamW::overlap_next_backward() {
  std::lock_guard<std::mutex> lock(mu_);
  armed_ = !buckets_.empty();
  early_ = 0;
}

void DistAdamW::slot_ready(size_t i) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!armed_ || slot_ready_[i]) return;
  slot_ready_[i] = true;
  ++buckets_[bucket_of_[i]].ready;
  const size_t before = launched_;
  launch_ready();
  early_ += (int64_t)(launched_ - before);
}

void DistAdamW::launch_ready() {
  while (launched_ < buckets_.size() && buckets_[launched_].ready == buckets_[launched_].slots.size())
    launch(buckets_[launched_++]);
}

void DistAdamW::launch(Bucket& b) {
  std::vector<Tensor> parts;  // a rank that saw no data for a parameter contributes zeros
  std::vector<float> reached;
  for (size_t i : b.slots) {
    const Tensor& g = slots_[i].param.grad();
    parts.push_back(g.defined() ? g.reshape(-1).to(torch::kFloat32)
                                : torch::zeros({slots_[i].param.numel()}, slots_[i].param.options().dtype(torch::kFloat32)));
    reached.push_back(g.defined() ? 1.0f : 0.0f);
  }
  // One more element per parameter counts the ranks whose backward reached it: a parameter no rank
  // reached (above the deepest exit) keeps no gradient, as in one process, so AdamW leaves it alone.
  parts.push_back(torch::tensor(reached).to(parts.front().device()));
  b.flat = torch::cat(parts);
  b.work = b.root < 0 ? dist_.all_reduce_sum_async(b.flat) : dist_.reduce_sum_async(b.flat, b.root);
}

int64_t DistAdamW::owned_numel() const {
  int64_t n = 0;
  for (const Slot& s : slots_) n += owns(s) ? s.param.numel() : 0;
  return n;
}

void DistAdamW::reduce_gradients() {
  auto set_master_grad = [](Slot& s, const Tensor& g) {  // g: fp32, shaped like the parameter; undefined: none
    if (s.master.is_same(s.param)) s.param.mutable_grad() = g;
    else s.master.mutable_grad() = g;
  };
  if (dist_.world() == 1) {
    for (size_t i = 0; i < slots_.size(); ++i)
      set_master_grad(slots_[i], slots_[i].param.grad().defined() ? slots_[i].param.grad().to(torch::kFloat32) : Tensor());
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    armed_ = false;
    for (Bucket& b : buckets_) b.ready = b.slots.size();  // every gradient is final now
    launch_ready();
  }
  for (Bucket& b : buckets_) {
    dist_.wait(b.work);
    int64_t off = 0, flag = b.flat.numel() - (int64_t)b.slots.size();
    const Tensor reached = b.flat.narrow(0, flag, (int64_t)b.slots.size()).to(torch::kCPU);
    for (size_t k = 0; k < b.slots.size(); ++k) {
      Slot& s = slots_[b.slots[k]];
      const bool any = reached[(int64_t)k].item<float>() > 0;
      if (owns(s)) set_master_grad(s, any ? b.flat.narrow(0, off, s.param.numel()).view(s.param.sizes()) : Tensor());
      else s.param.mutable_grad() = Tensor();  // ZeRO-2: gradients of others' parameters are dropped
      off += s.param.numel();
    }
    b.flat = Tensor();
    b.work = nullptr;
    b.ready = 0;
  }
  launched_ = 0;
  slot_ready_.assign(slots_.size(), false);
}

void DistAdamW::broadcast_parameters() {
  torch::NoGradGuard no_grad;
  for (int r = 0; r < dist_.world(); ++r) {
    std::vector<size_t> idx;
    for (size_t i = 0; i < slots_.size(); ++i)
      if (slots_[i].owner == r) idx.push_back(i);
    for (const auto& bucket : buckets(slots_, idx)) {
      std::vector<Tensor> parts;
      int64_t n = 0;
      for (size_t i : bucket) {
        if (r == dist_.rank()) parts.push_back(slots_[i].master.reshape(-1));
        n += slots_[i].param.numel();
      }
      Tensor flat = r == dist_.rank() ? torch::cat(parts)
                                      : torch::empty({n}, slots_[bucket[0]].param.options().dtype(torch::kFloat32));
      dist_.broadcast(flat, r);
      if (r == dist_.rank()) continue;
      int64_t off = 0;
      for (size_t i : bucket) {
        slots_[i].param.copy_(flat.narrow(0, off, slots_[i].param.numel()).view(slots_[i].param.sizes()));
        off += slots_[i].param.numel();
      }
    }
  }
}

double DistAdamW::step(double lr, double clip) {
  const double norm = reduce_and_clip(clip);
  apply(lr);
  return norm;
}

double DistAdamW::reduce_and_clip(double clip) {
  reduce_gradients();
  Tensor sq = torch::zeros({1}, torch::kFloat64);
  for (Slot& s : slots_)
    if (owns(s) && s.master.grad().defined()) sq += sum_of_squares(s.master.grad());
  if (shard_) dist_.all_reduce_sum(sq);
  const double norm = std::sqrt(sq.item<double>());
  // torch.nn.utils.clip_grad_norm_'s rule; the update applies the factor as it reads each gradient.
  grad_scale_ = clip > 0 && clip / (norm + 1e-6) < 1.0 ? clip / (norm + 1e-6) : 1.0;
  return norm;
}

void DistAdamW::apply(double lr) {
  torch::NoGradGuard no_grad;
  for (Slot& s : slots_) {
    if (!owns(s) || !s.master.grad().defined()) continue;  // no backward pass reached it: left alone
    if (!s.exp_avg.defined()) {
      s.exp_avg = torch::zeros_like(s.master);
      s.exp_avg_sq = torch::zeros_like(s.master);
    }
    adamw_update(s.master, s.master.grad(), s.exp_avg, s.exp_avg_sq,
                 AdamWStep::of(cfg_, lr, s.weight_decay, ++s.steps, grad_scale_));
    if (!s.master.is_same(s.param)) s.param.copy_(s.master);
  }
  if (shard_) broadcast_parameters();
}

void DistAdamW::zero_grad() {
  for (Slot& s : slots_) {
    s.param.mutable_grad() = Tensor();
    if (s.master.defined()) s.master.mutable_grad() = Tensor();
  }
}

OptimizerState DistAdamW::gather_state() {
  OptimizerState out;
  const bool lead = dist_.rank() == 0;
  for (Slot& s : slots_) {
    const bool mine = owns(s);
    // Step count first: a parameter without state (never stepped) is skipped on every rank alike.
    Tensor steps = torch::tensor({mine ? (double)s.steps : 0.0}, torch::kFloat64);
    if (shard_) dist_.all_reduce_sum(steps);  // only the owner contributes a non-zero count
    const int64_t n = (int64_t)steps.item<double>();
    std::vector<std::pair<std::string, Tensor>> parts = {{".exp_avg", mine ? s.exp_avg : Tensor()},
                                                         {".exp_avg_sq", mine ? s.exp_avg_sq : Tensor()}};
    if (s.param.scalar_type() != torch::kFloat32) parts.emplace_back(".master", mine ? s.master : Tensor());
    for (auto& [suffix, t] : parts) {
      if (n == 0 && suffix != ".master") continue;
      Tensor c = t.defined() ? t.detach().to(torch::kFloat32).clone()
                             : torch::zeros(s.param.sizes(), s.param.options().dtype(torch::kFloat32));
      if (shard_) dist_.reduce_sum(c, 0);
      if (lead) out.tensors.emplace_back(s.name + suffix, c.to(torch::kCPU).contiguous());
    }
    if (lead && n > 0) out.steps[s.name] = n;
  }
  return out;
}

void DistAdamW::load_state(const std::function<Tensor(const std::string&)>& lookup, const nlohmann::json& steps,
                           const std::string& source) {
  torch::NoGradGuard no_grad;
  for (Slot& s : slots_) {
    if (!owns(s)) continue;
    auto fetch = [&](const std::string& key) {
      Tensor t = lookup(key);
      if (t.defined() && t.sizes() != s.param.sizes())
        throw std::runtime_error(source + ": tensor " + key + " does not match parameter " + s.name);
      return t.defined() ? t.to(s.param.device(), torch::kFloat32) : t;
    };
    if (!s.master.is_same(s.param)) {
      Tensor m = fetch(s.name + ".master");
      if (m.defined()) s.master.copy_(m);  // exact fp32 weights behind a bf16 model
    }
    if (!steps.contains(s.name)) continue;
    Tensor m = fetch(s.name + ".exp_avg"), v = fetch(s.name + ".exp_avg_sq");
    if (!m.defined() || !v.defined()) throw std::runtime_error(source + ": moments of " + s.name + " are missing");
    s.steps = steps[s.name].get<int64_t>();
    s.exp_avg = m.clone();
    s.exp_avg_sq = v.clone();
  }
}

}  // namespace sl
