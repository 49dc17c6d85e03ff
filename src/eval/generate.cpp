#include "sortedllama/eval/generate.h"

#include "sortedllama/util/stopwatch.h"

namespace sl {

DecodeMode parse_decode_mode(const std::string& name) {
  if (name == "exit") return DecodeMode::kExit;
  if (name == "full") return DecodeMode::kFull;
  if (name == "speculative") return DecodeMode::kSpeculative;
  if (name == "dynamic") return DecodeMode::kDynamic;
  throw std::runtime_error("--decode " + name + ": unknown mode (known: full, exit, speculative, dynamic)");
}

const char* decode_mode_name(DecodeMode m) {
  switch (m) {
    case DecodeMode::kExit: return "exit";
    case DecodeMode::kFull: return "full";
    case DecodeMode::kSpeculative: return "speculative";
    case DecodeMode::kDynamic: return "dynamic";
  }
  return "?";
}

namespace {
// Greedy decoding with eval's stop rule.
DecodeOptions stop_rule_of(const EvalGenOptions& opt) {
  DecodeOptions g = greedy_options(opt.max_new_tokens, opt.eos_id, opt.vocab_limit);
  if (opt.stop) g.on_token = [&opt](size_t, const std::vector<int>& t) { return opt.stop(t); };
  return g;
}

// One batch of prompts at every plain exit: a single prefill up to the deepest exit gives every
// exit's prompt cache (layers below an exit do not depend on the exit) and first-token logits.
void generate_batch(Llama& model, const std::vector<std::vector<int>>& prompts, const std::vector<ExitGenerations*>& rows,
                    size_t begin, const EvalGenOptions& opt) {
  const auto& cfg = model->config();
  const DecodeBatch prefilled(model, prompts, opt.max_new_tokens);
  const int64_t P = prefilled.prompt_len;
  std::vector<int> exits;
  for (const auto* r : rows) exits.push_back(r->exit);
  KVCache cache = prefilled.make_cache(model);
  const Stopwatch clock;
  std::vector<torch::Tensor> hidden = model->forward(prefilled.tokens, exits, prefilled.key_mask.narrow(1, 0, P), &cache);  // each [B,P,D]
  rows.back()->stats.prefill_ms += clock.ms();
  const DecodeOptions g = stop_rule_of(opt);
  at::Generator gen = make_generator(0);
  for (size_t e = 0; e < exits.size(); ++e) {
    rows[e]->stats.prompt_tokens += prefilled.prompt_tokens();
    // The deepest exit decodes in the prefill cache itself; shallower ones in a copy of their layers
    // (deeper layers become empty views they never touch).
    KVCache own = cache;
    if (e + 1 < exits.size())
      for (int64_t i = 0; i < cfg.n_layers; ++i) {
        own.k[i] = i < exits[e] ? cache.k[i].clone() : cache.k[i].narrow(2, 0, 0);
        own.v[i] = i < exits[e] ? cache.v[i].clone() : cache.v[i].narrow(2, 0, 0);
      }
    DecodeBatch batch = prefilled;
    batch.key_mask = prefilled.key_mask.clone();
    std::vector<Generation> out(prompts.size());
    torch::Tensor logits = model->head(hidden[e].select(1, P - 1), exits[e]);  // [B,V]
    decode_plain(model, exits[e], batch, own, logits, g, gen, out, rows[e]->stats);
    std::copy(out.begin(), out.end(), rows[e]->gens.begin() + (std::ptrdiff_t)begin);
    if (opt.on_batch) opt.on_batch((int64_t)prompts.size());
  }
}

// One batch through the speculative or the dynamic decoder (greedy, verified by / ending at the full model).
void generate_batch_other(Llama& model, const std::vector<std::vector<int>>& prompts, ExitGenerations& row,
                          const EvalGenOptions& opt) {
  DecodeOptions o = stop_rule_of(opt);
  if (row.mode == DecodeMode::kSpeculative) {
    o.strategy = Strategy::kSpeculative;
    o.speculative = opt.speculative;
    o.speculative.draft_layer = row.exit;
  } else {
    o.strategy = Strategy::kDynamic;
    o.dynamic = opt.dynamic;
  }
  const std::vector<Generation> gens = generate(model, prompts, o, &row.stats);
  row.gens.insert(row.gens.end(), gens.begin(), gens.end());
  if (opt.on_batch) opt.on_batch((int64_t)prompts.size());
}
}  // namespace

std::vector<DecodeRow> decode_rows(const EvalGenOptions& opt, const std::vector<int>& exits, int n_layers) {
  const DecodeRow full{std::to_string(n_layers), DecodeMode::kExit, n_layers};
  std::vector<DecodeRow> rows;
  switch (opt.decode) {
    case DecodeMode::kExit:
      for (int e : exits) {
        if (e < 1 || e > n_layers)
          throw std::runtime_error("exit " + std::to_string(e) + " is outside the model's 1.." + std::to_string(n_layers) + " layers");
        rows.push_back({std::to_string(e), DecodeMode::kExit, e});
      }
      break;
    case DecodeMode::kFull:
      rows.push_back(full);
      break;
    case DecodeMode::kSpeculative: {
      rows.push_back(full);
      const int draft = opt.speculative.draft_layer;
      std::vector<int> drafts = draft > 0 ? std::vector<int>{draft} : exits;
      for (int k : drafts)
        if (k >= 1 && k < n_layers) rows.push_back({"spec" + std::to_string(k), DecodeMode::kSpeculative, k});
        else if (draft > 0)
          throw std::runtime_error("--draft-layer " + std::to_string(k) + " must be in 1.." + std::to_string(n_layers - 1));
      if (rows.size() == 1) throw std::runtime_error("--decode speculative: no exit below the last layer to draft with");
      break;
    }
    case DecodeMode::kDynamic:
      rows.push_back(full);
      rows.push_back({"dynamic", DecodeMode::kDynamic, n_layers});
      break;
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
    if (r.mode == DecodeMode::kExit) {
      r.gens.resize(prompts.size());
      plain.push_back(&r);
    }
  std::sort(plain.begin(), plain.end(), [](auto* a, auto* b) { return a->exit < b->exit; });
  if (!prompts.empty() && rows.size() > 1) {  // warm-up, so that no row's timing pays for first-call set-up
    DecodeOptions w;
    w.max_new_tokens = 2;
    generate(model, {prompts[0]}, w);
  }
  const size_t bs = (size_t)std::max<int64_t>(1, opt.batch_size);
  for (size_t b = 0; b < prompts.size(); b += bs) {
    const size_t end = std::min(prompts.size(), b + bs);
    const std::vector<std::vector<int>> batch(prompts.begin() + (std::ptrdiff_t)b, prompts.begin() + (std::ptrdiff_t)end);
    if (!plain.empty()) generate_batch(model, batch, plain, b, opt);
    for (auto& r : rows)
      if (r.mode != DecodeMode::kExit) generate_batch_other(model, batch, r, opt);
  }
  // Against the full model's plain decoding, when it ran: speed-up and identical outputs.
  const ExitGenerations* full = nullptr;
  for (const auto& r : rows)
    if (r.mode == DecodeMode::kExit && r.exit == L) full = &r;
  if (!full) return rows;
  for (auto& r : rows) {
    const double ms = r.stats.decode_ms_per_token();
    int64_t same = 0;
    for (size_t i = 0; i < prompts.size(); ++i) same += r.gens[i].tokens == full->gens[i].tokens;
    r.versus_full = VersusFull{ms > 0 ? full->stats.decode_ms_per_token() / ms : 0.0,
                               prompts.empty() ? 0.0 : (double)same / (double)prompts.size()};
  }
  return rows;
}

}  // namespace sl
