// Instance-aware dynamic inference (early exit): each token leaves at the first exit that is sure.
//
// Per token the layers run in order; after each exit layer k of the threshold set, the sub-model
// k's head (the exit's ICT head when the checkpoint has one, via model->head) gives a confidence,
// top-1 probability or top-1 minus top-2 (softmax at temperature 1, whatever the sampling settings);
// the first exit whose confidence reaches its threshold emits the token (argmax, or sampled from
// that exit's logits with the sampling settings). The last layer always accepts.
//
// Skipped layers still owe later tokens their K/V. Two ways to pay (DynamicParams::kv):
//  - recompute (EE-LLM's KV recomputation, extended to the prompt): a layer runs for a position
//    only when some later token first needs that layer, over every position it still owes, in
//    one chunk. The cache is then exactly the full model's and the prompt runs only as deep as
//    its tokens' exits ask. Since a token that runs layer i first gives every earlier position
//    layer i, the depth a position ran is non-increasing along the sequence: layer i owes a
//    contiguous run of slots, from its cache length to the current slot. Each slot's residual
//    stream at the depth it reached waits in a [B, capacity, D] buffer. Batched, the batch shares
//    one depth per slot: a layer runs for every row while any row still needs it.
//  - copy (CALM state copying): the exited hidden state h_k is the input of every deeper layer
//    for that position: each deeper layer caches the K/V it would compute from h_k
//    (LlamaImpl::layer_kv: input norm, K/V projections, rotary), costing two projections per
//    skipped layer instead of a whole layer. So a position's entries in layer i are computed from
//    its layer-i input when it ran that far, and from its exit state otherwise. Batched: while any
//    row still runs, a layer runs for the whole batch with the exited rows' input held at their
//    exit state (their output is discarded; the K/V they cache are exactly the copied state's);
//    once every row has exited, the remaining layers only append K/V. The prompt runs through
//    every layer.
// Tests check both against cache-free recomputations with exactly these semantics.
#include <cmath>
#include <limits>

#include "sortedllama/util/stopwatch.h"
#include "strategies.h"

namespace sl {

using torch::Tensor;

namespace {
// Exit test of one row of logits (fp32, the decodable ids only): whether the exit's confidence at
// temperature 1 reaches `threshold` (<= 0: always) and the argmax; the confidence too when it
// leaves and `want_confidence`. One pass finds the two largest logits; then the softmax
// denominator s = sum exp(l - max) stops as soon as s rules the threshold out, since
// top-1 = 1/s and top-1 - top-2 = (1 - e2)/s with e2 = exp(second - max).
struct ExitTest {
  bool leaves = false;
  double confidence = 0;
  int64_t argmax = 0;
};

ExitTest test_exit(const float* l, int64_t V, Confidence measure, double threshold, bool want_confidence) {
  ExitTest t;
  float m1 = l[0], m2 = -std::numeric_limits<float>::infinity();
  for (int64_t v = 1; v < V; ++v) {
    if (l[v] > m1) {
      m2 = m1;
      m1 = l[v];
      t.argmax = v;
    } else if (l[v] > m2) {
      m2 = l[v];
    }
  }
  t.leaves = threshold <= 0;
  if (t.leaves && !want_confidence) return t;
  const double numerator = measure == Confidence::kMargin ? 1 - std::exp((double)m2 - (double)m1) : 1.0;
  const double most = t.leaves ? std::numeric_limits<double>::infinity() : numerator / threshold;
  double s = 0;
  for (int64_t v = 0; v < V; ++v) {
    s += std::exp((double)l[v] - (double)m1);
    if (s > most) return t;
  }
  t.leaves = true;
  t.confidence = numerator / s;
  return t;
}

// One position's exit decisions for every running row.
struct ExitDecider {
  Llama& model;
  const DecodeOptions& opt;
  const std::vector<double>& threshold;  // per layer 1..L; NaN = not an exit
  at::Generator& gen;
  const std::vector<int64_t>& seqs;      // batch row -> sequence index
  std::vector<int> token, exit;          // per row; exit 0 = still running
  int left;

  ExitDecider(Llama& m, const DecodeOptions& o, const std::vector<double>& t, at::Generator& g, const std::vector<int64_t>& s)
      : model(m), opt(o), threshold(t), gen(g), seqs(s), token(s.size(), -1), exit(s.size(), 0), left((int)s.size()) {}

  // Exit k's test on the running rows of x [R,D]. Returns the rows that leave here.
  std::vector<int64_t> at_exit(int k, const Tensor& x) {
    const int64_t R = x.size(0);
    const bool last = k == (int)threshold.size() - 1;
    std::vector<int64_t> running;
    for (int64_t r = 0; r < R; ++r)
      if (!exit[r]) running.push_back(r);
    const bool all = (int64_t)running.size() == R;
    Tensor logits = model->head(all ? x : x.index_select(0, torch::tensor(running, torch::kInt64).to(x.device())), k);  // [U,V]
    Tensor usable = decodable_logits(logits, opt.sampling).to(torch::kCPU, torch::kFloat32).contiguous();  // [U,V']
    const int64_t V = usable.size(1);
    std::vector<int64_t> leaving, picked;  // batch rows; their indices into `running`
    std::vector<double> conf;
    std::vector<int> best;
    const double thr = last ? -std::numeric_limits<double>::infinity() : threshold[k];
    for (size_t u = 0; u < running.size(); ++u) {
      const ExitTest t = test_exit(usable.data_ptr<float>() + (int64_t)u * V, V, opt.dynamic.confidence, thr, (bool)opt.dynamic.on_exit);
      if (!t.leaves) continue;
      leaving.push_back(running[u]);
      picked.push_back((int64_t)u);
      conf.push_back(t.confidence);
      best.push_back((int)t.argmax);
    }
    if (leaving.empty()) return leaving;
    if (opt.sampling.temperature > 0) {
      const Tensor sel = torch::tensor(picked, torch::kInt64).to(logits.device());
      const Tensor toks = next_tokens(logits.index_select(0, sel), opt.sampling, gen).to(torch::kCPU).contiguous();  // [E]
      for (size_t e = 0; e < best.size(); ++e) best[e] = (int)toks.data_ptr<int64_t>()[e];
    }
    for (size_t e = 0; e < leaving.size(); ++e) {
      const int64_t r = leaving[e];
      token[r] = best[e];
      exit[r] = k;
      --left;
      if (opt.dynamic.on_exit) opt.dynamic.on_exit(seqs[r], k, conf[e]);
    }
    return leaving;
  }
};

// One generate_dynamic call: the batch, its cache and what both ways of filling skipped layers share.
struct DynamicRun {
  Llama& model;
  const DecodeOptions& opt;
  DecodeStats& stats;
  const int L;
  std::vector<double> threshold;  // per layer 1..L; NaN = not an exit; the last always accepts
  std::vector<int> exits;         // increasing, ends with L
  std::vector<Generation> out;
  DecodeBatch batch;
  KVCache cache;
  at::Generator gen;

  DynamicRun(Llama& m, const std::vector<std::vector<int>>& prompts, const DecodeOptions& o, DecodeStats& st)
      : model(m), opt(o), stats(st), L((int)m->config().n_layers), threshold(L + 1, std::nan("")),
        out(prompts.size()), batch(m, prompts, o.max_new_tokens), cache(batch.make_cache(m)), gen(make_generator(o.seed)) {
    for (const auto& t : opt.dynamic.thresholds) {
      threshold[t.layer] = t.threshold;
      exits.push_back(t.layer);
    }
    if (exits.empty() || exits.back() != L) exits.push_back(L);
  }

  bool is_exit(int layer) const { return layer == L || !std::isnan(threshold[layer]); }

  // Emits each row's decided token; drops finished rows from the batch, the cache and `rows_of`
  // (a per-row tensor, when defined). Returns the running rows' tokens.
  std::vector<int64_t> finish_step(const ExitDecider& d, Tensor& rows_of) {
    std::vector<int64_t> keep, next;
    for (size_t r = 0; r < batch.rows.size(); ++r) {
      ++stats.exit_histogram[d.exit[r]];
      stats.layers_run += d.exit[r];
      if (batch.emit(out, r, d.token[r], opt)) {
        keep.push_back((int64_t)r);
        next.push_back(d.token[r]);
      }
    }
    stats.new_tokens += (int64_t)batch.rows.size();
    if (rows_of.defined() && keep.size() != batch.rows.size())
      rows_of = rows_of.index_select(0, torch::tensor(keep, torch::kInt64).to(rows_of.device()));
    batch.keep(keep, cache);
    return next;
  }

  std::vector<Generation> copying();
  std::vector<Generation> recomputing();
};

std::vector<Generation> DynamicRun::copying() {
  const int64_t P = batch.prompt_len;
  auto dev = batch.key_mask.device();
  Tensor none;

  // Prefill: the prompt through every layer; its last position takes the first exit that is sure.
  Stopwatch clock;
  std::vector<Tensor> hidden = model->forward(batch.tokens, exits, batch.key_mask.narrow(1, 0, P), &cache);  // [B,P,D] each
  ExitDecider first(model, opt, threshold, gen, batch.rows);
  for (size_t e = 0; e < exits.size() && first.left > 0; ++e) first.at_exit(exits[e], hidden[e].select(1, P - 1));
  stats.prefill_ms += clock.ms();
  stats.prompt_tokens += batch.prompt_tokens();
  clock.restart();
  std::vector<int64_t> next = finish_step(first, none);

  for (int64_t slot = P; !batch.rows.empty(); ++slot) {
    const int64_t R = (int64_t)batch.rows.size();
    batch.key_mask.select(1, slot).fill_(1);
    AttnInputs in = model->attn_inputs(batch.key_mask.narrow(1, 0, slot + 1), R, slot, 1);
    Tensor x = model->embed(torch::tensor(next, torch::kInt64).to(dev).unsqueeze(1));  // [R,1,D]
    Tensor state = x;                                             // [R,1,D]: exited rows' exit state
    Tensor gone = torch::zeros({R, 1, 1}, torch::dtype(torch::kBool).device(dev));  // rows that exited
    ExitDecider d(model, opt, threshold, gen, batch.rows);
    for (int i = 0; i < L; ++i) {
      if (d.left == 0) {  // everyone has exited: deeper layers only need the copied state's K/V
        model->layer_kv(i, state, in, cache);
        continue;
      }
      const bool some_gone = d.left < R;
      x = model->layer(i, some_gone ? torch::where(gone, state, x) : x, in, &cache);
      if (!is_exit(i + 1)) continue;
      const std::vector<int64_t> leaving = d.at_exit(i + 1, x.select(1, 0));
      if (leaving.empty()) continue;
      if (d.left == 0 && !some_gone) {  // the whole batch leaves here together
        state = x;
        continue;
      }
      Tensor leave = torch::zeros({R, 1, 1}, torch::kBool);
      for (int64_t r : leaving) leave[r].fill_(true);
      leave = leave.to(dev);
      state = torch::where(leave, x, state);
      gone = gone.logical_or(leave);
    }
    next = finish_step(d, none);
  }
  stats.decode_ms += clock.ms();
  return out;
}

std::vector<Generation> DynamicRun::recomputing() {
  const int64_t P = batch.prompt_len;
  auto dev = batch.key_mask.device();
  // Per row and slot, the residual stream after the layers that slot has run (its embedding at first).
  Tensor stream = torch::empty({(int64_t)batch.rows.size(), batch.capacity, model->config().dim},
                               torch::dtype(model->dtype()).device(dev));  // [R,capacity,D]

  // Runs layers until every row has decided the token after `slot`: each layer first catches up
  // on the slots it owes, from its cache length (the owed slots' states wait in `stream`).
  auto decide = [&](int64_t slot) {
    const int64_t R = (int64_t)batch.rows.size();
    ExitDecider d(model, opt, threshold, gen, batch.rows);
    int64_t from = -1;  // the owed run [from, slot] that `in` was built for
    AttnInputs in;
    for (int i = 0; i < L && d.left > 0; ++i) {
      const int64_t start = cache.len[i], T = slot + 1 - start;
      if (start != from) in = model->attn_inputs(batch.key_mask.narrow(1, 0, slot + 1), R, start, T);
      from = start;
      Tensor owed = stream.narrow(1, start, T);      // [R,T,D]
      Tensor x = model->layer(i, owed, in, &cache);  // [R,T,D]
      owed.copy_(x);
      if (is_exit(i + 1)) d.at_exit(i + 1, x.select(1, T - 1));
    }
    return d;
  };

  Stopwatch clock;
  stream.narrow(1, 0, P).copy_(model->embed(batch.tokens));
  ExitDecider first = decide(P - 1);
  stats.prefill_ms += clock.ms();
  stats.prompt_tokens += batch.prompt_tokens();
  clock.restart();
  std::vector<int64_t> next = finish_step(first, stream);

  for (int64_t slot = P; !batch.rows.empty(); ++slot) {
    batch.key_mask.select(1, slot).fill_(1);
    stream.narrow(1, slot, 1).copy_(model->embed(torch::tensor(next, torch::kInt64).to(dev).unsqueeze(1)));  // [R,1,D]
    next = finish_step(decide(slot), stream);
  }
  stats.decode_ms += clock.ms();
  return out;
}
}  // namespace

std::vector<Generation> generate_dynamic(Llama& model, const std::vector<std::vector<int>>& prompts,
                                         const DecodeOptions& opt, DecodeStats& stats) {
  if (prompts.empty()) return {};
  DynamicRun run(model, prompts, opt, stats);
  return opt.dynamic.kv == SkippedKV::kCopy ? run.copying() : run.recomputing();
}

}  // namespace sl
