// Instance-aware dynamic inference (early exit): each token leaves at the first exit that is sure.
//
// Per token the layers run in order; after each exit layer k of the threshold set, the sub-model
// k's head (the exit's ICT head when the checkpoint has one, via model->head) gives a confidence,
// top-1 probability or top-1 minus top-2 (softmax at temperature 1, whatever the sampling settings);
// the first exit whose confidence reaches its threshold emits the token (argmax, or sampled from
// that exit's logits with the sampling settings). The last layer always accepts.
//
// Skipped layers still owe later tokens their K/V. Choice: CALM-style state copying. The exited
// hidden state h_k is the input of every deeper layer for that position: each deeper layer caches
// the K/V it would compute from h_k (LlamaImpl::layer_kv: input norm, K/V projections, rotary),
// costing two projections per skipped layer instead of a whole layer, and nothing is ever missing
// or recomputed. So a position's entries in layer i are computed from its layer-i input when it
// ran that far, and from its exit state otherwise; tests check generation against a cache-free
// recomputation with exactly these semantics. Batched: while any row still runs, a layer runs
// for the whole batch with the exited rows' input held at their exit state (their output is
// discarded; the K/V they cache are exactly the copied state's); once every row has exited, the
// remaining layers only append K/V. The prompt runs through every layer.
#include <cmath>

#include "sortedllama/util/stopwatch.h"
#include "strategies.h"

namespace sl {

using torch::Tensor;

namespace {
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

  // Exit k's test on the running rows of x [R,D]. Returns the rows that leave here as a mask [R].
  Tensor at_exit(int k, const Tensor& x) {
    const int64_t R = x.size(0);
    const bool last = k == (int)threshold.size() - 1;
    std::vector<int64_t> running;
    for (int64_t r = 0; r < R; ++r)
      if (!exit[r]) running.push_back(r);
    Tensor idx = torch::tensor(running, torch::kInt64);
    Tensor logits = model->head((int64_t)running.size() == R ? x : x.index_select(0, idx.to(x.device())), k);  // [U,V]
    Tensor top = std::get<0>(decodable_logits(logits, opt.sampling).to(torch::kFloat32).softmax(-1).topk(2, -1)).to(torch::kCPU);  // [U,2]
    Tensor conf = opt.dynamic.confidence == Confidence::kMargin ? top.select(1, 0) - top.select(1, 1) : top.select(1, 0);  // [U]
    Tensor leave = last ? torch::ones_like(conf, torch::kBool) : conf >= threshold[k];  // [U]
    Tensor sel = leave.nonzero().squeeze(1);                                            // [E] into running
    Tensor mask = torch::zeros({R}, torch::kBool);
    if (sel.numel() == 0) return mask;
    Tensor chosen = (int64_t)sel.numel() == (int64_t)running.size() ? logits : logits.index_select(0, sel.to(logits.device()));
    Tensor toks = next_tokens(chosen, opt.sampling, gen).to(torch::kCPU);  // [E]
    for (int64_t e = 0; e < sel.numel(); ++e) {
      const int64_t u = sel[e].item<int64_t>(), r = running[u];
      token[r] = (int)toks[e].item<int64_t>();
      exit[r] = k;
      mask[r].fill_(true);
      --left;
      if (opt.dynamic.on_exit) opt.dynamic.on_exit(seqs[r], k, conf[u].item<double>());
    }
    return mask;
  }
};
}  // namespace

std::vector<Generation> generate_dynamic(Llama& model, const std::vector<std::vector<int>>& prompts,
                                         const DecodeOptions& opt, DecodeStats& stats) {
  const int L = (int)model->config().n_layers;
  std::vector<double> threshold(L + 1, std::nan(""));  // per layer; the last always accepts
  std::vector<int> exits;                              // increasing, ends with L
  for (const auto& t : opt.dynamic.thresholds) {
    threshold[t.layer] = t.threshold;
    exits.push_back(t.layer);
  }
  if (exits.empty() || exits.back() != L) exits.push_back(L);
  std::vector<Generation> out(prompts.size());
  if (prompts.empty()) return out;

  DecodeBatch batch(model, prompts, opt.max_new_tokens);
  const int64_t P = batch.prompt_len;
  auto dev = batch.key_mask.device();
  KVCache cache = batch.make_cache(model);
  at::Generator gen = make_generator(opt.seed);

  // Emits each row's decided token; drops finished rows. Returns the running rows' tokens.
  auto finish_step = [&](const ExitDecider& d) {
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
    batch.keep(keep, cache);
    return next;
  };

  // Prefill: the prompt through every layer; its last position takes the first exit that is sure.
  Stopwatch clock;
  std::vector<Tensor> hidden = model->forward(batch.tokens, exits, batch.key_mask.narrow(1, 0, P), &cache);  // [B,P,D] each
  ExitDecider first(model, opt, threshold, gen, batch.rows);
  for (size_t e = 0; e < exits.size() && first.left > 0; ++e) first.at_exit(exits[e], hidden[e].select(1, P - 1));
  stats.prefill_ms += clock.ms();
  stats.prompt_tokens += batch.prompt_tokens();
  clock.restart();
  std::vector<int64_t> next = finish_step(first);

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
      if (!std::isnan(threshold[i + 1]) || i + 1 == L) {
        Tensor leave = d.at_exit(i + 1, x.select(1, 0)).to(dev).view({R, 1, 1});
        state = torch::where(leave, x, state);
        gone = gone.logical_or(leave);
      }
    }
    next = finish_step(d);
  }
  stats.decode_ms += clock.ms();
  return out;
}

}  // namespace sl
