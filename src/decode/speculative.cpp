// Self-speculative decoding: a shallow sub-model of the same checkpoint drafts, a deeper one verifies.
//
// Round (all running rows together, cache slots n.. shared by every row):
//   1. Draft: the pending token (emitted last round, not yet in the cache) and N drafted tokens run
//      through layers 1..K one position at a time (the draft sub-model K, with the KV cache); the
//      draft head proposes each next token. The layer-K hidden states of all N+1 positions are kept.
//   2. Verify: the verifier (sub-model `exit_layer`) runs only layers K+1..L over those N+1 states in
//      one call, starting from the draft's layer-K states (LayerSkip's "exit query cache"): layers
//      1..K are never recomputed and there is one KV cache, no second model. Every layer's cache
//      therefore advances by the same N+1 slots per round. Row b accepts its longest agreeing prefix
//      a_b <= N plus the verifier's own token after it (accept_greedy / accept_sampled), so a round
//      gives a_b + 1 tokens (N + 1 when all drafts are accepted: the last position's verifier output
//      is a free bonus token).
//   3. Commit: rows keep slots n..n+A (A = max a_b); every layer's cache is cropped to n+A+1. A row
//      that accepted fewer marks its rejected slots n+a_b+1..n+A as holes (key_mask 0): rotary
//      positions come from the cumulative key_mask, so holes shift nothing, and attention never sees
//      them. When holes fill the cache, it is compacted: each row's real entries move to the end,
//      holes to the front (like left padding), and columns that are holes in every row are dropped.
//
// Exactness: greedy output is token-for-token the greedy output of plain decoding with the same
// exit_layer (accept iff the verifier's argmax equals the draft). With temperature > 0 the standard
// speculative-sampling rule makes the output distribution equal to sampling from the verifier; p
// and q are sl::sampling_probs of the verifier and draft logits with the same temperature / top-k /
// top-p.
//
// Draft trees (tree_nodes M > 0, greedy only): the draft also ranks its alternatives at each
// position, and each row spends M extra nodes on them where it was least sure (choose_siblings):
// an alternative to draft j is a leaf whose parent is chain node j (the token before draft j).
// After the chain's draft steps, the M alternatives run through layers 1..K in one call (cache
// slots n+N+1..n+N+M), and the verifier runs over all N+1+M nodes in its one call, with a tree
// mask (every node sees the cached prefix, its ancestors on the chain and itself) and per-node
// rotary positions (an alternative to draft j has draft j's position). A row that rejects draft j
// accepts an alternative at j equal to the verifier's token there, and then the verifier's token
// after that alternative (accept_greedy_tree). At commit, the accepted path's slots stay and every
// other slot of the round becomes a hole: a kept alternative sits after the chain's slots, and as
// positions count the real slots before it, it keeps draft j's position for later tokens too.
//
// Draft length: fixed (draft_tokens > 0), adaptive (next_draft_length, from 4 within
// [1, max_draft_tokens]), or confidence-stopped (draft_confidence > 0: up to draft_tokens or
// max_draft_tokens, ending after the draft at which every row has been unsure once; a row's
// unsure drafts are still verified, so a low-confidence guess costs one verified position at
// most and output stays exact). A round never drafts more than the most tokens any row may still
// emit, minus the bonus token.
#include <algorithm>
#include <limits>

#include "sortedllama/decode/acceptance.h"
#include "sortedllama/util/stopwatch.h"
#include "strategies.h"

namespace sl {

using torch::Tensor;

namespace {
Tensor to_tensor(const std::vector<int64_t>& v) { return torch::tensor(v, torch::dtype(torch::kInt64)); }

// Squeezes the holes out of cache slots [0, n) of layers [0, layers): per row, a stable sort moves
// holes to the front and keeps the real entries in order (rotary is already applied to the stored
// keys, so moving them changes nothing); columns that are holes in every row are dropped.
// Returns the new length.
int64_t compact(KVCache& cache, Tensor& key_mask, int64_t n, int layers) {
  const int64_t R = key_mask.size(0);
  Tensor real = key_mask.narrow(1, 0, n);                                          // [R,n]
  Tensor order = std::get<1>(real.sort(/*stable=*/true, /*dim=*/1, /*descending=*/false));  // [R,n]
  const int64_t m = real.sum(1).max().item<int64_t>();
  Tensor idx = order.narrow(1, n - m, m);  // [R,m]: each row's last m slots, holes first
  Tensor kept = real.gather(1, idx);       // [R,m]
  key_mask.zero_();
  key_mask.narrow(1, 0, m).copy_(kept);
  for (int i = 0; i < layers; ++i) {
    const int64_t KV = cache.k[i].size(1), hd = cache.k[i].size(3);
    Tensor gi = idx.view({R, 1, m, 1}).expand({R, KV, m, hd});
    Tensor k = cache.k[i].narrow(2, 0, n).gather(2, gi), v = cache.v[i].narrow(2, 0, n).gather(2, gi);  // [R,KV,m,hd]
    cache.k[i].narrow(2, 0, m).copy_(k);
    cache.v[i].narrow(2, 0, m).copy_(v);
    cache.len[i] = m;
  }
  return m;
}

// The draft's top probability: logits [...,V] -> [...,1] fp32.
Tensor top_probability(const Tensor& logits, const SamplingParams& s) {
  return std::get<0>(decodable_logits(logits, s).to(torch::kFloat32).softmax(-1).max(-1, /*keepdim=*/true));
}

// A draft tree's (up to) M alternatives per row, from the draft's logits at its N positions
// ([R,V] each) and its drafts [R,N] (on the model's device); CPU tensors.
DraftSiblings tree_siblings(const std::vector<Tensor>& step_logits, const Tensor& drafts, int64_t M, const SamplingParams& s) {
  Tensor logits = torch::stack(step_logits, 1);  // [R,N,V]
  Tensor others =
      decodable_logits(logits, s).scatter(2, drafts.unsqueeze(2), -std::numeric_limits<float>::infinity());  // [R,N,V']
  const int64_t k = std::min(M, others.size(2) - 1);
  Tensor ranked = std::get<1>(others.topk(k, -1));  // [R,N,k]: the chain's draft excluded, most likely first
  return choose_siblings(top_probability(logits, s).squeeze(-1).to(torch::kCPU), ranked.to(torch::kCPU),
                         std::min(M, drafts.size(1) * k));
}

// One round's drafts.
struct Draft {
  int64_t n = 0;          // the round's first cache slot
  int64_t N = 0;          // tokens drafted (fewer than planned once every row has drafted EOS)
  int64_t M = 0;          // alternatives per row (0: a chain)
  Tensor tokens;          // [R,N] int64 on the CPU
  DraftSiblings siblings;  // [R,M] each, on the CPU
  Tensor states;          // [R,N+1+M,D]: the layer-K hidden states of the pending token, the drafts, the alternatives
  std::vector<Tensor> q;  // sampling: the draft's distribution at each of the N positions, [R,V'] on the CPU
};

class SpeculativeRun {
 public:
  SpeculativeRun(Llama& model, const std::vector<std::vector<int>>& prompts, const DecodeOptions& opt, DecodeStats& stats)
      : model_(model),
        opt_(opt),
        stats_(stats),
        K_(opt.speculative.draft_layer),
        target_(opt.exit_layer),
        most_drafts_(opt.speculative.draft_tokens > 0 ? opt.speculative.draft_tokens : opt.speculative.max_draft_tokens),
        n_draft_(opt.speculative.draft_tokens > 0 || opt.speculative.draft_confidence > 0 ? most_drafts_
                                                                                           : std::min<int64_t>(4, most_drafts_)),
        // A round may use N+1+M slots past the last emitted token; compaction keeps the rest within
        // prompt + max_new_tokens.
        batch_(model, prompts, opt.max_new_tokens + most_drafts_ + 1 + opt.speculative.tree_nodes),
        cache_(batch_.make_cache(model)),
        gen_(make_generator(opt.seed)),
        out_(prompts.size()) {}

  std::vector<Generation> run() {
    const Tensor first = prefill();
    const Stopwatch clock;
    emit_first(first);
    while (!batch_.rows.empty()) {
      const int64_t planned = planned_length();
      const Draft d = draft(reserve(planned), planned);
      const TreeAcceptance a = verify(d);
      commit(d, a);
      if (opt_.speculative.draft_tokens == 0 && opt_.speculative.draft_confidence == 0)
        n_draft_ = next_draft_length(n_draft_, d.N, *std::max_element(a.accepted.begin(), a.accepted.end()), most_drafts_);
    }
    stats_.decode_ms += clock.ms();
    return std::move(out_);
  }

 private:
  bool greedy() const { return opt_.sampling.temperature <= 0; }
  torch::Device device() const { return batch_.key_mask.device(); }

  // The prompts through the verifier; returns its first token per row [B] (CPU).
  Tensor prefill() {
    const Stopwatch clock;
    const int64_t P = batch_.prompt_len;
    Tensor h = model_->forward(batch_.tokens, {target_}, batch_.key_mask.narrow(1, 0, P), &cache_)[0];  // [B,P,D]
    Tensor first = next_tokens(model_->head(h.select(1, P - 1), target_), opt_.sampling, gen_).to(torch::kCPU);
    stats_.prefill_ms += clock.ms();
    stats_.prompt_tokens += batch_.prompt_tokens();
    return first;
  }

  void emit_first(const Tensor& first) {
    std::vector<int64_t> keep;
    for (size_t r = 0; r < batch_.rows.size(); ++r) {
      const int tok = (int)first[(int64_t)r].item<int64_t>();
      if (batch_.emit(out_, r, tok, opt_)) {
        keep.push_back((int64_t)r);
        pending_.push_back(tok);
      }
    }
    stats_.new_tokens += (int64_t)batch_.rows.size();
    batch_.keep(keep, cache_);
  }

  // The draft length of the next round: never more than the most tokens a row may still emit, minus the bonus.
  int64_t planned_length() const {
    int64_t most_left = 0;
    for (int64_t s : batch_.rows) most_left = std::max<int64_t>(most_left, opt_.max_new_tokens - (int64_t)out_[s].tokens.size());
    return std::min(n_draft_, most_left - 1);
  }

  // Makes room for N+1 chain slots and the tree's (compacting the cache when holes fill it) and
  // marks the chain's real; returns the first.
  int64_t reserve(int64_t N) {
    int64_t n = cache_.len[0];
    if (n + N + 1 + opt_.speculative.tree_nodes > batch_.capacity) {
      n = compact(cache_, batch_.key_mask, n, target_);
      ++stats_.compactions;
    }
    batch_.key_mask.narrow(1, n, N + 1).fill_(1);
    return n;
  }

  // The pending token and up to N drafts through layers 1..K, one position at a time; then the
  // tree's alternatives, in one call.
  Draft draft(int64_t n, int64_t N) {
    const Stopwatch clock;
    const int64_t R = (int64_t)batch_.rows.size();
    Draft d;
    d.n = n;
    Tensor tok = to_tensor(pending_).to(device()).unsqueeze(1);  // [R,1]
    std::vector<Tensor> states, drafts;                          // [R,1,D] each; [R,1] each
    std::vector<Tensor> step_logits;                             // trees: the draft's [R,V] per draft
    const int64_t tree = opt_.speculative.tree_nodes;
    Tensor ended = torch::zeros({R, 1}, torch::dtype(torch::kBool).device(device()));  // [R,1] drafted EOS
    Tensor unsure = ended.clone();  // [R,1] a draft below draft_confidence
    const int64_t planned = N;
    for (int64_t j = 0; j <= N; ++j) {
      AttnInputs in = model_->attn_inputs(batch_.key_mask.narrow(1, 0, n + j + 1), R, n + j, 1);
      Tensor x = model_->embed(tok);  // [R,1,D]
      for (int i = 0; i < K_; ++i) x = model_->layer(i, x, in, &cache_);
      states.push_back(x);
      if (j == N) break;  // the last draft only needs its layer-K state, for the verifier
      Tensor logits = model_->head(x.select(1, 0), K_);  // [R,V]
      if (greedy()) {
        tok = decodable_logits(logits, opt_.sampling).argmax(-1, /*keepdim=*/true);
      } else {
        d.q.push_back(sampling_probs(logits, opt_.sampling).to(torch::kCPU));
        tok = torch::multinomial(d.q.back(), 1, false, gen_).to(device());
      }
      drafts.push_back(tok);
      // Drafting past EOS, or past every row's first unsure draft, is likely wasted work: then
      // only this draft's state remains.
      ended = ended.logical_or(tok.eq(opt_.eos_id));
      if (tree > 0) step_logits.push_back(logits);
      if (opt_.speculative.draft_confidence > 0)
        unsure = unsure.logical_or(top_probability(logits, opt_.sampling) < opt_.speculative.draft_confidence);
      if (j + 1 < N && ended.logical_or(unsure).all().item<bool>()) N = j + 1;
    }
    if (N < planned) batch_.key_mask.narrow(1, n + N + 1, planned - N).zero_();
    d.N = N;
    const Tensor drafted = N > 0 ? torch::cat(drafts, 1) : torch::zeros({R, 0}, torch::kInt64);  // [R,N]
    d.tokens = drafted.to(torch::kCPU);
    d.siblings = N > 0 && tree > 0 ? tree_siblings(step_logits, drafted, tree, opt_.sampling)
                                   : DraftSiblings{torch::zeros({R, 0}, torch::kInt64), torch::zeros({R, 0}, torch::kInt64)};
    d.M = d.siblings.at.size(1);
    if (d.M > 0) states.push_back(sibling_states(d));
    d.states = torch::cat(states, 1);
    stats_.draft_ms += clock.ms();
    return d;
  }

  // The alternatives' layer-K states [R,M,D], their K/V appended after the chain's.
  Tensor sibling_states(const Draft& d) {
    AttnInputs in = tree_inputs(d, d.N + 1);
    Tensor x = model_->embed(d.siblings.tokens.to(device()));  // [R,M,D]
    for (int i = 0; i < K_; ++i) x = model_->layer(i, x, in, &cache_);
    return x;
  }

  // Attention inputs for the round's nodes from `first` on (chain nodes 0..N at slots n..n+N, then
  // the M alternatives), in plain loops: a round's few nodes would cost dozens of tensor ops. A
  // node sees the prefix's real slots, itself and the chain nodes above it (a chain node: those
  // before it; an alternative to draft j: nodes 0..j). Rotary positions continue the prefix's at
  // the node's depth (an alternative to draft j: draft j's).
  AttnInputs tree_inputs(const Draft& d, int64_t first) const {
    const int64_t R = d.siblings.at.size(0), T = d.N + 1 + d.M, Q = T - first, S = d.n + T;
    const Tensor prefix = batch_.key_mask.narrow(1, 0, d.n).to(torch::kCPU, torch::kBool).contiguous();  // [R,n]
    Tensor positions = torch::empty({R, Q}, torch::kInt64), mask = torch::empty({R, 1, Q, S}, torch::kBool);
    auto at = d.siblings.at.accessor<int64_t, 2>();
    const bool* real = prefix.data_ptr<bool>();
    int64_t* pos = positions.data_ptr<int64_t>();
    bool* sees = mask.data_ptr<bool>();
    for (int64_t r = 0; r < R; ++r) {
      const bool* row = real + r * d.n;
      const int64_t base = std::count(row, row + d.n, true);
      for (int64_t q = 0; q < Q; ++q) {
        const int64_t t = first + q, depth = t <= d.N ? t : at[r][t - d.N - 1] + 1;
        pos[r * Q + q] = base + depth;
        bool* keys = sees + (r * Q + q) * S;  // [S]: the prefix, then the round's nodes
        std::copy(row, row + d.n, keys);
        for (int64_t u = 0; u < T; ++u) keys[d.n + u] = u == t || (u <= d.N && u < depth);
      }
    }
    return model_->attn_inputs_at(positions, mask);
  }

  // Layers K+1..target over all N+1+M nodes at once, from the draft's layer-K states; then the
  // acceptance rule.
  TreeAcceptance verify(const Draft& d) {
    const Stopwatch clock;
    const int64_t R = d.states.size(0), N = d.N;
    Tensor x = d.states;
    // A chain's inputs follow from the key mask alone (in fast_step's loops for a few positions).
    AttnInputs in = d.M > 0 ? tree_inputs(d, 0)
                            : model_->attn_inputs(batch_.key_mask.narrow(1, 0, d.n + N + 1), R, d.n, N + 1);
    for (int i = K_; i < target_; ++i) x = model_->layer(i, x, in, &cache_);
    Tensor logits = model_->head(x, target_);  // [R,N+1+M,V]: node t predicts the token after it
    TreeAcceptance a;
    if (greedy()) {
      a = accept_greedy_tree(d.tokens, decodable_logits(logits, opt_.sampling).argmax(-1).to(torch::kCPU), d.siblings);
    } else {  // a chain (M = 0)
      Tensor p = sampling_probs(logits.reshape({R * (N + 1), -1}), opt_.sampling).view({R, N + 1, -1}).to(torch::kCPU);  // [R,N+1,V']
      Tensor q = N > 0 ? torch::stack(d.q, 1) : torch::zeros({R, 0, p.size(2)});  // [R,N,V']
      a = {accept_sampled(p, q, d.tokens, torch::rand({R, N}, gen_), gen_), std::vector<int64_t>(R, -1)};
    }
    stats_.verify_ms += clock.ms();
    return a;
  }

  // Keeps each row's accepted path (slots n..n+a_r and its accepted alternative's; every other slot
  // of the round becomes a hole), emits its tokens and the verifier's after them, and drops
  // finished rows.
  void commit(const Draft& d, const TreeAcceptance& a) {
    const int64_t R = (int64_t)a.accepted.size(), N = d.N;
    auto drafts = d.tokens.accessor<int64_t, 2>();
    auto alternative = d.siblings.tokens.accessor<int64_t, 2>();
    Tensor kept = torch::zeros({R, N + 1 + d.M}, torch::kInt64);  // [R,N+1+M] the round's slots
    auto keep_slot = kept.accessor<int64_t, 2>();
    std::vector<int64_t> keep, next_pending;
    int64_t emitted = 0, last = 0;  // the round's last kept slot, over rows
    for (int64_t r = 0; r < R; ++r) {
      std::vector<int64_t> path(drafts[r].data(), drafts[r].data() + a.accepted[r]);
      for (int64_t j = 0; j <= a.accepted[r]; ++j) keep_slot[r][j] = 1;
      last = std::max(last, a.accepted[r]);
      if (a.sibling[r] >= 0) {
        path.push_back(alternative[r][a.sibling[r]]);
        keep_slot[r][N + 1 + a.sibling[r]] = 1;
        last = std::max(last, N + 1 + a.sibling[r]);
      }
      path.push_back(a.next[r]);
      bool alive = true;
      for (size_t i = 0; i < path.size() && alive; ++i, ++emitted) alive = batch_.emit(out_, r, (int)path[i], opt_);
      if (alive) {
        keep.push_back(r);
        next_pending.push_back(path.back());
      }
    }
    cache_.crop(d.n + last + 1);
    batch_.key_mask.narrow(1, d.n, N + 1 + d.M).copy_(kept.to(device()));
    stats_.new_tokens += emitted;
    stats_.add_round(N, a.accepted);
    stats_.tree_nodes += R * d.M;
    stats_.tree_accepted += std::count_if(a.sibling.begin(), a.sibling.end(), [](int64_t s) { return s >= 0; });
    pending_ = next_pending;
    batch_.keep(keep, cache_);
  }

  Llama& model_;
  const DecodeOptions& opt_;
  DecodeStats& stats_;
  const int K_, target_;  // draft and verifier depths
  const int64_t most_drafts_;
  int64_t n_draft_;  // the next round's planned length
  DecodeBatch batch_;
  KVCache cache_;
  at::Generator gen_;
  std::vector<Generation> out_;
  std::vector<int64_t> pending_;  // per running row: the emitted token not yet in the cache
};
}  // namespace

std::vector<Generation> generate_speculative(Llama& model, const std::vector<std::vector<int>>& prompts,
                                             const DecodeOptions& opt, DecodeStats& stats) {
  if (prompts.empty()) return {};
  return SpeculativeRun(model, prompts, opt, stats).run();
}

}  // namespace sl
