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
// Draft length: fixed (draft_tokens > 0), adaptive (next_draft_length, from 4 within
// [1, max_draft_tokens]), or confidence-stopped (draft_confidence > 0: up to draft_tokens or
// max_draft_tokens, ending after the draft at which every row has been unsure once; a row's
// unsure drafts are still verified, so a low-confidence guess costs one verified position at
// most and output stays exact). A round never drafts more than the most tokens any row may still
// emit, minus the bonus token.
#include <algorithm>

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

// One round's drafts.
struct Draft {
  int64_t n = 0;          // the round's first cache slot
  int64_t N = 0;          // tokens drafted (fewer than planned once every row has drafted EOS)
  Tensor tokens;          // [R,N] int64 on the CPU
  Tensor states;          // [R,N+1,D]: the layer-K hidden states of the pending token and the drafts
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
        // A round may use N+1 slots past the last emitted token; compaction keeps the rest within
        // prompt + max_new_tokens.
        batch_(model, prompts, opt.max_new_tokens + most_drafts_ + 1),
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
      const Acceptance a = verify(d);
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

  // Makes room for N+1 slots (compacting the cache when holes fill it) and marks them real;
  // returns the first.
  int64_t reserve(int64_t N) {
    int64_t n = cache_.len[0];
    if (n + N + 1 > batch_.capacity) {
      n = compact(cache_, batch_.key_mask, n, target_);
      ++stats_.compactions;
    }
    batch_.key_mask.narrow(1, n, N + 1).fill_(1);
    return n;
  }

  // The pending token and up to N drafts through layers 1..K, one position at a time.
  Draft draft(int64_t n, int64_t N) {
    const Stopwatch clock;
    const int64_t R = (int64_t)batch_.rows.size();
    Draft d;
    d.n = n;
    Tensor tok = to_tensor(pending_).to(device()).unsqueeze(1);  // [R,1]
    std::vector<Tensor> states, drafts;                          // [R,1,D] each; [R,1] each
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
      if (opt_.speculative.draft_confidence > 0) {
        Tensor top = std::get<0>(decodable_logits(logits, opt_.sampling).to(torch::kFloat32).softmax(-1).max(-1, /*keepdim=*/true));
        unsure = unsure.logical_or(top < opt_.speculative.draft_confidence);
      }
      if (j + 1 < N && ended.logical_or(unsure).all().item<bool>()) N = j + 1;
    }
    if (N < planned) batch_.key_mask.narrow(1, n + N + 1, planned - N).zero_();
    d.N = N;
    d.tokens = N > 0 ? torch::cat(drafts, 1).to(torch::kCPU) : torch::zeros({R, 0}, torch::kInt64);  // [R,N]
    d.states = torch::cat(states, 1);
    stats_.draft_ms += clock.ms();
    return d;
  }

  // Layers K+1..target over all N+1 positions at once, from the draft's layer-K states; then the
  // acceptance rule.
  Acceptance verify(const Draft& d) {
    const Stopwatch clock;
    const int64_t R = d.states.size(0), N = d.N;
    Tensor x = d.states;
    AttnInputs in = model_->attn_inputs(batch_.key_mask.narrow(1, 0, d.n + N + 1), R, d.n, N + 1);
    for (int i = K_; i < target_; ++i) x = model_->layer(i, x, in, &cache_);
    Tensor logits = model_->head(x, target_);  // [R,N+1,V]: position j predicts the token after slot n+j
    Acceptance a;
    if (greedy()) {
      a = accept_greedy(d.tokens, decodable_logits(logits, opt_.sampling).argmax(-1).to(torch::kCPU));
    } else {
      Tensor p = sampling_probs(logits.reshape({R * (N + 1), -1}), opt_.sampling).view({R, N + 1, -1}).to(torch::kCPU);  // [R,N+1,V']
      Tensor q = N > 0 ? torch::stack(d.q, 1) : torch::zeros({R, 0, p.size(2)});  // [R,N,V']
      a = accept_sampled(p, q, d.tokens, torch::rand({R, N}, gen_), gen_);
    }
    stats_.verify_ms += clock.ms();
    return a;
  }

  // Keeps slots n..n+A (each row's rejected slots become holes), emits the accepted drafts and the
  // verifier's token, and drops finished rows.
  void commit(const Draft& d, const Acceptance& a) {
    const int64_t R = (int64_t)a.accepted.size(), N = d.N;
    const int64_t A = *std::max_element(a.accepted.begin(), a.accepted.end());
    cache_.crop(d.n + A + 1);
    Tensor hole = torch::arange(N + 1).unsqueeze(0) > to_tensor(a.accepted).unsqueeze(1);  // [R,N+1]
    batch_.key_mask.narrow(1, d.n, N + 1).masked_fill_(hole.to(device()), 0);

    auto drafts = d.tokens.accessor<int64_t, 2>();
    std::vector<int64_t> keep, next_pending;
    int64_t emitted = 0;
    for (int64_t r = 0; r < R; ++r) {
      bool alive = true;
      for (int64_t j = 0; j < a.accepted[r] && alive; ++j, ++emitted) alive = batch_.emit(out_, r, (int)drafts[r][j], opt_);
      const int v = (int)a.next[r];
      if (alive) {
        ++emitted;
        alive = batch_.emit(out_, r, v, opt_);
      }
      if (alive) {
        keep.push_back(r);
        next_pending.push_back(v);
      }
    }
    stats_.new_tokens += emitted;
    stats_.add_round(N, a.accepted);
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
