#include "sortedllama/eval_generate.h"

#include <chrono>

#include "sortedllama/dynamic.h"
#include "sortedllama/speculative.h"

namespace sl {

namespace {
double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// Greedy decoding of sub-model `exit` from a cache that already holds the left-padded prompts
// (P slots); logits [B,V] predict each row's first new token. As in generate(), finished rows
// leave the batch. Writes out[b] for the batch's rows.
void decode_greedy(Llama& model, int exit, KVCache& cache, torch::Tensor key_mask, torch::Tensor logits, int64_t P,
                   const EvalGenOptions& opt, Generation* out, GenerateStats& st) {
  auto dev = logits.device();
  std::vector<int64_t> rows(logits.size(0));  // batch row -> sequence index, for the rows still running
  for (size_t b = 0; b < rows.size(); ++b) rows[b] = (int64_t)b;
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t step = 0;; ++step) {
    torch::Tensor next = logits.argmax(-1).to(torch::kCPU);  // [rows]
    std::vector<int64_t> keep;
    for (size_t r = 0; r < rows.size(); ++r) {
      Generation& g = out[rows[r]];
      const int tok = (int)next[r].item<int64_t>();
      if (tok == opt.eos_id) {
        g.finish_reason = "eos";
        continue;
      }
      g.tokens.push_back(tok);
      if (opt.stop && opt.stop(g.tokens)) g.finish_reason = "stop";
      else if ((int64_t)g.tokens.size() >= opt.max_new_tokens) g.finish_reason = "length";
      else keep.push_back((int64_t)r);
    }
    st.new_tokens += (int64_t)rows.size();
    if (keep.empty()) break;
    if (keep.size() < rows.size()) {
      torch::Tensor idx = torch::tensor(keep, torch::kInt64);
      cache.keep_rows(idx.to(dev));
      key_mask = key_mask.index_select(0, idx.to(dev));
      next = next.index_select(0, idx);
      std::vector<int64_t> still;
      for (int64_t r : keep) still.push_back(rows[r]);
      rows = still;
    }
    const int64_t slot = P + step;
    key_mask.select(1, slot).fill_(1);
    torch::Tensor h = model->forward(next.to(dev).unsqueeze(1), {exit}, key_mask.narrow(1, 0, slot + 1), &cache)[0];
    logits = model->head(h.select(1, 0), exit);  // [rows,V]
  }
  st.decode_ms += ms_since(t0);
}

// One batch of prompts at every plain exit: a single prefill up to the deepest exit gives every
// exit's prompt cache (layers below an exit do not depend on the exit) and first-token logits.
void generate_batch(Llama& model, const std::vector<std::vector<int>>& prompts, size_t begin, size_t end,
                    const std::vector<ExitGenerations*>& rows, const EvalGenOptions& opt) {
  const auto& cfg = model->config();
  auto dev = model->body->norm->weight.device();
  const int64_t B = (int64_t)(end - begin);
  int64_t P = 0;
  for (size_t i = begin; i < end; ++i) {
    if (prompts[i].empty()) throw std::runtime_error("empty prompt (LLaMA prompts start with BOS)");
    P = std::max<int64_t>(P, (int64_t)prompts[i].size());
  }
  const int64_t capacity = P + opt.max_new_tokens;
  torch::Tensor tokens = torch::zeros({B, P}, torch::kInt64), key_mask = torch::zeros({B, capacity}, torch::kInt64);
  for (int64_t b = 0; b < B; ++b) {
    const auto& p = prompts[begin + b];
    const int64_t pad = P - (int64_t)p.size();
    tokens[b].narrow(0, pad, (int64_t)p.size()).copy_(torch::tensor(std::vector<int64_t>(p.begin(), p.end())));
    key_mask[b].narrow(0, pad, (int64_t)p.size()).fill_(1);
  }
  tokens = tokens.to(dev);
  key_mask = key_mask.to(dev);
  std::vector<int> exits;
  for (const auto* r : rows) exits.push_back(r->exit);
  KVCache cache(cfg, B, capacity, torch::dtype(model->body->norm->weight.scalar_type()).device(dev));
  auto t0 = std::chrono::steady_clock::now();
  std::vector<torch::Tensor> hidden = model->forward(tokens, exits, key_mask.narrow(1, 0, P), &cache);  // each [B,P,D]
  rows.back()->stats.prefill_ms += ms_since(t0);
  for (size_t e = 0; e < exits.size(); ++e) {
    rows[e]->stats.prompt_tokens += key_mask.narrow(1, 0, P).sum().item<int64_t>();
    // The deepest exit decodes in the prefill cache itself; shallower ones in a copy of their layers
    // (deeper layers become empty views they never touch).
    KVCache own = cache;
    if (e + 1 < exits.size())
      for (int64_t i = 0; i < cfg.n_layers; ++i) {
        own.k[i] = i < exits[e] ? cache.k[i].clone() : cache.k[i].narrow(2, 0, 0);
        own.v[i] = i < exits[e] ? cache.v[i].clone() : cache.v[i].narrow(2, 0, 0);
      }
    torch::Tensor logits = model->head(hidden[e].select(1, P - 1), exits[e]);  // [B,V]
    decode_greedy(model, exits[e], own, key_mask.clone(), logits, P, opt, rows[e]->gens.data() + begin, rows[e]->stats);
    if (opt.on_batch) opt.on_batch(B);
  }
}

// One batch through issue 5's decoders (greedy, verified by / ending at the full model).
void generate_batch_other(Llama& model, const std::vector<std::vector<int>>& prompts, ExitGenerations& row,
                          const EvalGenOptions& opt) {
  auto fill = [&](GenerateOptions& g) {
    g.max_new_tokens = opt.max_new_tokens;
    g.eos_id = opt.eos_id;
    if (opt.stop) g.on_token = [&opt](size_t, const std::vector<int>& t) { return opt.stop(t); };
  };
  std::vector<Generation> gens;
  if (row.mode == "speculative") {
    SpeculativeOptions so;
    fill(so);
    so.draft_layer = row.exit;
    so.draft_tokens = opt.draft_tokens;
    SpeculativeStats st;
    gens = generate_speculative(model, prompts, so, &st);
    row.stats.prompt_tokens += st.prompt_tokens, row.stats.new_tokens += st.new_tokens;
    row.stats.prefill_ms += st.prefill_ms, row.stats.decode_ms += st.decode_ms;
    row.decode["drafted"] += (double)st.drafted;
    row.decode["accepted"] += (double)st.accepted;
    row.decode["rounds"] += (double)st.rounds;
  } else {
    DynamicOptions dyn;
    fill(dyn);
    const int L = (int)model->config().n_layers;
    dyn.thresholds = opt.thresholds.empty() ? default_thresholds(L) : parse_thresholds(opt.thresholds, L);
    dyn.confidence = opt.confidence;
    DynamicStats st;
    gens = generate_dynamic(model, prompts, dyn, &st);
    row.stats.prompt_tokens += st.prompt_tokens, row.stats.new_tokens += st.new_tokens;
    row.stats.prefill_ms += st.prefill_ms, row.stats.decode_ms += st.decode_ms;
    row.decode["layers_run"] += (double)st.layers_run;
    for (const auto& [exit, n] : st.exit_histogram) row.decode["exit_" + std::to_string(exit) + "_tokens"] += (double)n;
  }
  row.gens.insert(row.gens.end(), gens.begin(), gens.end());
  if (opt.on_batch) opt.on_batch((int64_t)prompts.size());
}

double decode_ms_per_token(const GenerateStats& s) { return s.new_tokens ? s.decode_ms / (double)s.new_tokens : 0.0; }
}  // namespace

std::vector<DecodeRow> decode_rows(const EvalGenOptions& opt, const std::vector<int>& exits, int n_layers) {
  const DecodeRow full{std::to_string(n_layers), "exit", n_layers};
  std::vector<DecodeRow> rows;
  if (opt.decode == "exit") {
    for (int e : exits) {
      if (e < 1 || e > n_layers)
        throw std::runtime_error("exit " + std::to_string(e) + " is outside the model's 1.." + std::to_string(n_layers) + " layers");
      rows.push_back({std::to_string(e), "exit", e});
    }
  } else if (opt.decode == "full") {
    rows.push_back(full);
  } else if (opt.decode == "speculative") {
    rows.push_back(full);
    std::vector<int> drafts = opt.draft_layer > 0 ? std::vector<int>{opt.draft_layer} : exits;
    for (int k : drafts)
      if (k >= 1 && k < n_layers) rows.push_back({"spec" + std::to_string(k), "speculative", k});
      else if (opt.draft_layer > 0)
        throw std::runtime_error("--draft-layer " + std::to_string(k) + " must be in 1.." + std::to_string(n_layers - 1));
    if (rows.size() == 1) throw std::runtime_error("--decode speculative: no exit below the last layer to draft with");
  } else if (opt.decode == "dynamic") {
    if (!opt.thresholds.empty()) parse_thresholds(opt.thresholds, n_layers);  // fail before any work
    if (opt.confidence != "max_prob" && opt.confidence != "margin")
      throw std::runtime_error("--confidence " + opt.confidence + ": use max_prob or margin");
    rows.push_back(full);
    rows.push_back({"dynamic", "dynamic", n_layers});
  } else {
    throw std::runtime_error("--decode " + opt.decode + ": unknown mode (known: full, exit, speculative, dynamic)");
  }
  return rows;
}

std::vector<ExitGenerations> eval_generate(Llama& model, const std::vector<std::vector<int>>& prompts,
                                           const std::vector<int>& exits, const EvalGenOptions& opt) {
  torch::NoGradGuard no_grad;
  const int L = (int)model->config().n_layers;
  std::vector<ExitGenerations> rows;
  for (const DecodeRow& d : decode_rows(opt, exits, L)) {
    rows.emplace_back();
    static_cast<DecodeRow&>(rows.back()) = d;
  }
  std::vector<ExitGenerations*> plain;  // plain exits, shallowest first: they share each batch's prefill
  for (auto& r : rows)
    if (r.mode == "exit") {
      r.gens.resize(prompts.size());
      plain.push_back(&r);
    }
  std::sort(plain.begin(), plain.end(), [](auto* a, auto* b) { return a->exit < b->exit; });
  if (!prompts.empty() && rows.size() > 1) {  // warm-up, so that no row's timing pays for first-call set-up
    GenerateOptions w;
    w.max_new_tokens = 2;
    generate(model, {prompts[0]}, w);
  }
  const size_t bs = (size_t)std::max<int64_t>(1, opt.batch_size);
  for (size_t b = 0; b < prompts.size(); b += bs) {
    const size_t end = std::min(prompts.size(), b + bs);
    if (!plain.empty()) generate_batch(model, prompts, b, end, plain, opt);
    for (auto& r : rows)
      if (r.mode != "exit")
        generate_batch_other(model, std::vector<std::vector<int>>(prompts.begin() + b, prompts.begin() + end), r, opt);
  }
  // Against the full model's plain decoding, when it ran: speed-up and identical outputs.
  const ExitGenerations* full = nullptr;
  for (const auto& r : rows)
    if (r.mode == "exit" && r.exit == L) full = &r;
  for (auto& r : rows) {
    if (r.mode == "speculative") {
      r.decode["acceptance_rate"] = r.decode["drafted"] > 0 ? r.decode["accepted"] / r.decode["drafted"] : 0.0;
      r.decode["mean_accepted_per_round"] = r.decode["rounds"] > 0 ? r.decode["accepted"] / r.decode["rounds"] : 0.0;
    }
    if (r.mode == "dynamic")
      r.decode["mean_layers_per_token"] = r.stats.new_tokens ? r.decode["layers_run"] / (double)r.stats.new_tokens : 0.0;
    if (!full) continue;
    const double ms = decode_ms_per_token(r.stats);
    r.decode["speedup"] = ms > 0 ? decode_ms_per_token(full->stats) / ms : 0.0;
    int64_t same = 0;
    for (size_t i = 0; i < prompts.size(); ++i) same += r.gens[i].tokens == full->gens[i].tokens;
    r.decode["agree_full"] = prompts.empty() ? 0.0 : (double)same / (double)prompts.size();
  }
  return rows;
}

}  // namespace sl
