#include "sortedllama/eval/tune.h"

#include <algorithm>
#include <stdexcept>

#include <spdlog/spdlog.h>
#include <torch/cuda.h>

#include "sortedllama/decode/acceptance.h"
#include "sortedllama/eval/teacher_forced.h"
#include "sortedllama/model/exits.h"
#include "sortedllama/util/stopwatch.h"

namespace sl {

using torch::Tensor;

double LatencyModel::plain_step_ms() const { return call_ms[0] + n_layers * layer_ms[0] + head_ms[0] + plain_extra_ms; }

double LatencyModel::draft_ms(int K, int64_t N) const {
  return (double)(N + 1) * (call_ms[0] + K * layer_ms[0] + draft_extra_ms) + (double)N * head_ms[0];
}

double LatencyModel::verify_ms(int K, int64_t N) const {
  const size_t t = (size_t)std::min<int64_t>(N, max_positions() - 1);  // N + 1 positions
  return call_ms[t] + (n_layers - K) * layer_ms[t] + head_ms[t] + round_extra_ms;
}

void SimulatedRun::add(const SimulatedRun& o) {
  rounds += o.rounds;
  drafted += o.drafted;
  accepted += o.accepted;
  batch_rounds += o.batch_rounds;
  draft_steps += o.draft_steps;
  plain_steps += o.plain_steps;
  draft_ms += o.draft_ms;
  verify_ms += o.verify_ms;
  plain_ms += o.plain_ms;
}

namespace {
double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

void check(const TuneOptions& o) {
  if (o.max_draft_tokens < 1) throw std::invalid_argument("max_draft_tokens must be at least 1");
  for (double c : o.confidences)
    if (!(c > 0 && c < 1)) throw std::invalid_argument("confidences must be in (0, 1), got " + std::to_string(c));
  if (o.verify < 1) throw std::invalid_argument("verify must be at least 1");
  if (o.repeats < 1) throw std::invalid_argument("repeats must be at least 1");
  if (o.latency_reps < 1) throw std::invalid_argument("latency_reps must be at least 1");
  if (o.batch_size < 1) throw std::invalid_argument("batch_size must be at least 1");
  if (o.max_new_tokens < 1) throw std::invalid_argument("max_new_tokens must be at least 1");
}

DecodeOptions greedy(const TuneOptions& o) { return greedy_options(o.max_new_tokens, o.eos_id, o.vocab_limit); }

void synchronize(const torch::Device& d) {
  if (d.is_cuda()) torch::cuda::synchronize(d.index());
}

// Step 3: T = 1 .. max_positions new positions per row through every layer and the head, on a cache
// holding these prompts; each point's median over `reps`, the cache cropped back after each.
LatencyModel measure_latency(Llama& model, const std::vector<std::vector<int>>& prompts, int64_t max_positions, int reps) {
  torch::NoGradGuard no_grad;
  const int L = (int)model->config().n_layers;
  DecodeBatch batch(model, prompts, max_positions);
  KVCache cache = batch.make_cache(model);
  const int64_t R = batch.tokens.size(0), P = batch.prompt_len;
  model->forward(batch.tokens, {L}, batch.key_mask.narrow(1, 0, P), &cache);
  batch.key_mask.narrow(1, P, max_positions).fill_(1);
  LatencyModel m;
  m.n_layers = L;
  for (int64_t T = 1; T <= max_positions; ++T) {
    const Tensor tokens = batch.tokens.narrow(1, P - 1, 1).expand({R, T}).contiguous();  // [R,T]
    std::vector<double> call, layers, head;
    for (int rep = 0; rep < reps; ++rep) {
      Stopwatch clock;
      const AttnInputs in = model->attn_inputs(batch.key_mask.narrow(1, 0, P + T), R, P, T);
      Tensor x = model->embed(tokens);  // [R,T,D]
      synchronize(model->device());
      call.push_back(clock.ms());
      clock.restart();
      for (int i = 0; i < L; ++i) x = model->layer(i, x, in, &cache);
      synchronize(model->device());
      layers.push_back(clock.ms() / L);
      clock.restart();
      model->head(x, L).argmax(-1).to(torch::kCPU);  // [R,T]
      head.push_back(clock.ms());
      cache.crop(P);
    }
    m.call_ms.push_back(median(call));
    m.layer_ms.push_back(median(layers));
    m.head_ms.push_back(median(head));
  }
  return m;
}

std::vector<SpeculativeParams> length_rules(int K, const TuneOptions& o) {
  std::vector<SpeculativeParams> rules;
  SpeculativeParams p;
  p.draft_layer = K;
  for (int n = 1; n <= o.max_draft_tokens; ++n) {
    p.draft_tokens = n;
    rules.push_back(p);
  }
  p.draft_tokens = 0;
  if (o.adaptive) rules.push_back(p);
  for (double c : o.confidences) {
    p.draft_confidence = c;
    rules.push_back(p);
  }
  return rules;
}

struct Measured {
  std::vector<Generation> out;
  DecodeStats stats;
};

Measured decode(Llama& model, const std::vector<std::vector<int>>& prompts, const DecodeOptions& d, int64_t batch_size) {
  Measured m;
  m.out = generate_in_batches(model, prompts, d, batch_size, &m.stats);
  return m;
}

DecodeOptions speculative(const TuneOptions& o, const SpeculativeParams& p) {
  DecodeOptions d = greedy(o);
  d.strategy = Strategy::kSpeculative;
  d.speculative = p;
  return d;
}

bool same_tokens(const std::vector<Generation>& a, const std::vector<Generation>& b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end(),
                    [](const Generation& x, const Generation& y) { return x.tokens == y.tokens && x.finish_reason == y.finish_reason; });
}

class Tuner {
 public:
  Tuner(Llama& model, const std::vector<std::vector<int>>& prompts, const TuneOptions& o)
      : model_(model), prompts_(prompts), o_(o), L_((int)model->config().n_layers) {}

  Tuning run() {
    layers_ = early_exits(o_.draft_layers, L_, "draft layers");
    reference();
    traces();
    const int64_t longest = std::max<int64_t>(o_.max_draft_tokens, SpeculativeParams{}.max_draft_tokens) + 1;
    const std::vector<std::vector<int>> first(prompts_.begin(), prompts_.begin() + std::min<int64_t>(o_.batch_size, (int64_t)prompts_.size()));
    r_.latency = measure_latency(model_, first, longest, o_.latency_reps);
    spdlog::info("tune: latency at batch {}: layer {:.3f} ms (1 position) / {:.3f} ms ({} positions), head {:.3f} ms",
                 first.size(), r_.latency.layer_ms[0], r_.latency.layer_ms.back(), longest, r_.latency.head_ms[0]);
    for (size_t c = 0; c < layers_.size(); ++c)
      for (const SpeculativeParams& p : length_rules(layers_[c], o_)) r_.candidates.push_back(predict(c, p));
    fit_extras();
    verify();
    return std::move(r_);
  }

 private:
  // Step 1.
  void reference() {
    const Measured m = decode(model_, prompts_, greedy(o_), o_.batch_size);
    reference_ = m.out;
    r_.plain = m.stats;
    r_.prompts = (int64_t)prompts_.size();
    for (const Generation& g : reference_) r_.reference_tokens += (int64_t)g.tokens.size();
    spdlog::info("tune: {} prompts, {} reference tokens ({:.1f} tok/s plain)", r_.prompts, r_.reference_tokens,
                 r_.plain.tokens_per_s());
  }

  // Step 2.
  void traces() {
    std::vector<int> exits = layers_;
    exits.push_back(L_);
    for (size_t i = 0; i < prompts_.size(); ++i) {
      const std::vector<ExitPredictions> pred = teacher_forced(model_, prompts_[i], reference_[i], exits, o_.vocab_limit);
      PromptTrace t;
      t.full = pred.back().token;
      for (size_t c = 0; c < layers_.size(); ++c) {
        t.draft.push_back(pred[c].token);
        t.top.push_back(pred[c].top1);
      }
      traces_.push_back(std::move(t));
    }
  }

  // Step 4, over every batch as generate_in_batches forms them.
  TunedCandidate predict(size_t c, const SpeculativeParams& p) const {
    TunedCandidate t;
    t.draft_layer = layers_[c];
    t.params = p;
    for (size_t s = 0; s < traces_.size(); s += (size_t)o_.batch_size) {
      std::vector<const PromptTrace*> rows;
      for (size_t i = s; i < std::min(traces_.size(), s + (size_t)o_.batch_size); ++i) rows.push_back(&traces_[i]);
      t.predicted.add(simulate_speculative(rows, c, layers_[c], p, o_.max_new_tokens, o_.eos_id, r_.latency));
    }
    t.predicted_speedup = t.predicted.ms() > 0 ? t.predicted.plain_ms / t.predicted.ms() : 0;
    return t;
  }

  void sort_by_prediction() {
    std::stable_sort(r_.candidates.begin(), r_.candidates.end(),
                     [](const TunedCandidate& a, const TunedCandidate& b) { return a.predicted_speedup > b.predicted_speedup; });
  }

  size_t candidate_index(int draft_layer) const {
    return (size_t)(std::find(layers_.begin(), layers_.end(), draft_layer) - layers_.begin());
  }

  // What the decoders spend beyond the calls measured alone, per plain step, draft step and round:
  // a plain run and one real run of the best predicted candidate (its draft and verify times
  // apart) against their predictions.
  void fit_extras() {
    sort_by_prediction();
    const TunedCandidate probe = r_.candidates.front();
    const SimulatedRun& pred = probe.predicted;
    LatencyModel& m = r_.latency;
    // A second plain run: the reference run paid for the first touch of the weights and threads.
    const DecodeStats plain = decode(model_, prompts_, greedy(o_), o_.batch_size).stats;
    if (pred.plain_steps > 0) m.plain_extra_ms = (plain.decode_ms - pred.plain_ms) / (double)pred.plain_steps;
    const DecodeStats st = decode(model_, prompts_, speculative(o_, probe.params), o_.batch_size).stats;
    if (pred.draft_steps > 0) m.draft_extra_ms = (st.draft_ms - pred.draft_ms) / (double)pred.draft_steps;
    if (pred.batch_rounds > 0) m.round_extra_ms = (st.decode_ms - st.draft_ms - pred.verify_ms) / (double)pred.batch_rounds;
    for (TunedCandidate& t : r_.candidates) t = predict(candidate_index(t.draft_layer), t.params);
    sort_by_prediction();
  }

  // Step 5: plain decoding, then each of the best few, `repeats` times over.
  void verify() {
    const size_t n = std::min(r_.candidates.size(), (size_t)o_.verify);
    std::vector<std::vector<double>> decode_ratio(n), total_ratio(n);
    std::vector<DecodeStats> spec(n);
    for (int rep = 0; rep < o_.repeats; ++rep) {
      const Measured plain = decode(model_, prompts_, greedy(o_), o_.batch_size);
      const double plain_total = plain.stats.prefill_ms + plain.stats.decode_ms;
      for (size_t j = 0; j < n; ++j) {
        TunedCandidate& t = r_.candidates[j];
        const Measured m = decode(model_, prompts_, speculative(o_, t.params), o_.batch_size);
        decode_ratio[j].push_back(plain.stats.decode_ms / std::max(1e-9, m.stats.decode_ms));
        total_ratio[j].push_back(plain_total / std::max(1e-9, m.stats.prefill_ms + m.stats.decode_ms));
        t.identical = (rep == 0 || t.identical) && same_tokens(m.out, reference_);
        spec[j] = m.stats;
      }
      spdlog::info("tune: verified round {}/{}", rep + 1, o_.repeats);
    }
    for (size_t j = 0; j < n; ++j) {
      TunedCandidate& t = r_.candidates[j];
      t.measured = true;
      t.measured_speedup = median(decode_ratio[j]);
      t.measured_end_to_end = median(total_ratio[j]);
      t.acceptance_rate = spec[j].acceptance_rate();
      t.mean_tokens_per_round = spec[j].mean_tokens_per_round();
      if (t.identical && (r_.chosen < 0 || t.measured_end_to_end > r_.candidates[(size_t)r_.chosen].measured_end_to_end))
        r_.chosen = (int)j;
    }
  }

  Llama& model_;
  const std::vector<std::vector<int>>& prompts_;
  const TuneOptions& o_;
  const int L_;
  std::vector<int> layers_;
  std::vector<Generation> reference_;
  std::vector<PromptTrace> traces_;
  Tuning r_;
};
}  // namespace

SimulatedRun simulate_speculative(const std::vector<const PromptTrace*>& rows, size_t candidate, int K,
                                  const SpeculativeParams& p, int64_t max_new_tokens, int64_t eos_id, const LatencyModel& cost) {
  SimulatedRun s;
  const int64_t most = p.draft_tokens > 0 ? p.draft_tokens : p.max_draft_tokens;
  const bool adaptive = p.draft_tokens == 0 && p.draft_confidence == 0;
  int64_t n_draft = adaptive ? std::min<int64_t>(4, most) : most;
  // Per running row: its trace and the tokens emitted so far (the first comes from the prefill).
  std::vector<const PromptTrace*> run;
  std::vector<int64_t> emitted;
  int64_t longest = 0;
  for (const PromptTrace* t : rows) {
    longest = std::max<int64_t>(longest, (int64_t)t->full.size());
    if (t->full.size() > 1) {
      run.push_back(t);
      emitted.push_back(1);
    }
  }
  s.plain_steps = std::max<int64_t>(0, longest - 1);
  s.plain_ms = (double)s.plain_steps * cost.plain_step_ms();
  while (!run.empty()) {
    const int64_t R = (int64_t)run.size();
    const int64_t fewest = *std::min_element(emitted.begin(), emitted.end());
    int64_t N = std::min(n_draft, max_new_tokens - fewest - 1);
    // Drafting ends early once every row has drafted EOS or (confidence-stopped) been unsure once.
    std::vector<bool> done(run.size(), false);
    for (int64_t j = 0; j + 1 < N; ++j) {
      for (size_t r = 0; r < run.size(); ++r) {
        const auto& draft = run[r]->draft[candidate];
        const size_t i = (size_t)(emitted[r] + j);
        const bool past = i >= draft.size();  // beyond the reference: the row has ended there
        done[r] = done[r] || past || draft[i] == eos_id || (p.draft_confidence > 0 && run[r]->top[candidate][i] < p.draft_confidence);
      }
      if (std::all_of(done.begin(), done.end(), [](bool d) { return d; })) N = j + 1;
    }
    std::vector<int64_t> accepted(run.size(), 0);
    for (size_t r = 0; r < run.size(); ++r) {
      const PromptTrace& t = *run[r];
      int64_t& a = accepted[r];
      while (a < N && emitted[r] + a < (int64_t)t.full.size() &&
             t.draft[candidate][(size_t)(emitted[r] + a)] == t.full[(size_t)(emitted[r] + a)])
        ++a;
    }
    const int64_t A = *std::max_element(accepted.begin(), accepted.end());
    s.rounds += R;
    s.drafted += R * N;
    for (int64_t a : accepted) s.accepted += a;
    ++s.batch_rounds;
    s.draft_steps += N + 1;
    s.draft_ms += cost.draft_ms(K, N);
    s.verify_ms += cost.verify_ms(K, N);
    if (adaptive) n_draft = next_draft_length(n_draft, N, A, most);
    std::vector<const PromptTrace*> next_run;
    std::vector<int64_t> next_emitted;
    for (size_t r = 0; r < run.size(); ++r) {
      const int64_t e = emitted[r] + accepted[r] + 1;
      if (e < (int64_t)run[r]->full.size()) {
        next_run.push_back(run[r]);
        next_emitted.push_back(e);
      }
    }
    run = std::move(next_run);
    emitted = std::move(next_emitted);
  }
  return s;
}

Tuning tune_speculative(Llama& model, const std::vector<std::vector<int>>& prompts, const TuneOptions& opt) {
  check(opt);
  if (prompts.empty()) throw std::invalid_argument("no prompts to tune on");
  torch::NoGradGuard no_grad;
  return Tuner(model, prompts, opt).run();
}

}  // namespace sl
