#include "sortedllama/decode/speculative.h"

#include "sortedllama/model/exits.h"
#include "sortedllama/util/stopwatch.h"

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
}  // namespace

std::vector<Generation> generate_speculative(Llama& model, const std::vector<std::vector<int>>& prompts,
                                             const SpeculativeOptions& opt, SpeculativeStats* stats) {
  torch::NoGradGuard no_grad;
  const auto& cfg = model->config();
  const int L = (int)cfg.n_layers;
  const int target = opt.exit_layer > 0 ? opt.exit_layer : L;
  TORCH_CHECK(target <= L, "exit layer ", target, " is deeper than the model's ", L, " layers");
  int K = opt.draft_layer;
  if (K == 0) K = parse_exits("auto", L).front();
  TORCH_CHECK(K >= 1 && K < target, "draft layer ", K, " must be below the verifier's ", target,
              " layers (1..", target - 1, ")");
  TORCH_CHECK(opt.draft_tokens >= 0 && opt.max_draft_tokens >= 1, "draft tokens must be >= 0 (0 = adaptive)");
  const int64_t most_drafts = opt.draft_tokens > 0 ? opt.draft_tokens : opt.max_draft_tokens;
  std::vector<Generation> out(prompts.size());
  if (prompts.empty()) return out;

  // A round may use N+1 slots past the last emitted token; compaction keeps the rest within
  // prompt + max_new_tokens.
  DecodeBatch batch(model, prompts, opt.max_new_tokens + most_drafts + 1);
  const int64_t P = batch.prompt_len;
  auto dev = batch.key_mask.device();
  KVCache cache = batch.make_cache(model);
  at::Generator gen = make_generator(opt.seed);
  const bool greedy = opt.sampling.temperature <= 0;

  Stopwatch clock;
  Tensor h = model->forward(batch.tokens, {target}, batch.key_mask.narrow(1, 0, P), &cache)[0];  // [B,P,D]
  Tensor first = next_tokens(model->head(h.select(1, P - 1), target), opt.sampling, gen).to(torch::kCPU);  // [B]
  if (stats) {
    stats->prefill_ms += clock.ms();
    stats->prompt_tokens += batch.prompt_tokens();
  }
  clock.restart();
  std::vector<int64_t> pending, keep;  // per running row: the emitted token not yet in the cache
  for (size_t r = 0; r < batch.rows.size(); ++r) {
    const int tok = (int)first[r].item<int64_t>();
    if (batch.emit(out, r, tok, opt)) {
      keep.push_back((int64_t)r);
      pending.push_back(tok);
    }
  }
  if (stats) stats->new_tokens += (int64_t)batch.rows.size();
  batch.keep(keep, cache);

  int64_t n_draft = opt.draft_tokens > 0 ? opt.draft_tokens : std::min<int64_t>(4, most_drafts);
  while (!batch.rows.empty()) {
    const int64_t R = (int64_t)batch.rows.size();
    int64_t most_left = 0;  // the most tokens any row may still emit
    for (int64_t s : batch.rows) most_left = std::max<int64_t>(most_left, opt.max_new_tokens - (int64_t)out[s].tokens.size());
    int64_t N = std::min(n_draft, most_left - 1);  // shortened when every row has drafted EOS
    int64_t n = cache.len[0];  // first slot of this round
    if (n + N + 1 > batch.capacity) {
      n = compact(cache, batch.key_mask, n, target);
      if (stats) ++stats->compactions;
    }
    batch.key_mask.narrow(1, n, N + 1).fill_(1);

    // Draft: the pending token and N drafts through layers 1..K, one position at a time.
    Tensor tok = to_tensor(pending).to(dev).unsqueeze(1);  // [R,1]
    std::vector<Tensor> states, drafts, q_probs;            // [R,1,D] each; [R,1] each; [R,V] each (sampling)
    Tensor ended = torch::zeros({R, 1}, torch::dtype(torch::kBool).device(dev));  // [R,1] drafted EOS
    const int64_t planned = N;
    for (int64_t j = 0; j <= N; ++j) {
      AttnInputs in = model->attn_inputs(batch.key_mask.narrow(1, 0, n + j + 1), R, n + j, 1);
      Tensor x = model->embed(tok);  // [R,1,D]
      for (int i = 0; i < K; ++i) x = model->layer(i, x, in, &cache);
      states.push_back(x);
      if (j == N) break;  // the last draft only needs its layer-K state, for the verifier
      Tensor logits = model->head(x.select(1, 0), K);  // [R,V]
      if (greedy) {
        tok = decodable_logits(logits, opt.sampling).argmax(-1, /*keepdim=*/true);
      } else {
        q_probs.push_back(sampling_probs(logits, opt.sampling).to(torch::kCPU));
        tok = torch::multinomial(q_probs.back(), 1, false, gen).to(dev);
      }
      drafts.push_back(tok);
      // Drafting past EOS is wasted work: once every row has drafted it, only its state remains.
      ended = ended.logical_or(tok.eq(opt.eos_id));
      if (j + 1 < N && ended.all().item<bool>()) N = j + 1;
    }
    if (N < planned) batch.key_mask.narrow(1, n + N + 1, planned - N).zero_();
    Tensor d = N > 0 ? torch::cat(drafts, 1).to(torch::kCPU) : torch::zeros({R, 0}, torch::kInt64);  // [R,N]

    // Verify: layers K+1..target over all N+1 positions at once, from the draft's layer-K states.
    Tensor x = torch::cat(states, 1);  // [R,N+1,D]
    AttnInputs in = model->attn_inputs(batch.key_mask.narrow(1, 0, n + N + 1), R, n, N + 1);
    for (int i = K; i < target; ++i) x = model->layer(i, x, in, &cache);
    Tensor logits = model->head(x, target);  // [R,N+1,V]: position j predicts the token after slot n+j

    std::vector<int64_t> acc(R);  // drafts accepted per row
    Tensor fix;                   // [R]: the verifier's token after the accepted prefix
    auto da = d.accessor<int64_t, 2>();
    if (greedy) {
      Tensor t = decodable_logits(logits, opt.sampling).argmax(-1).to(torch::kCPU);  // [R,N+1]
      auto ta = t.accessor<int64_t, 2>();
      for (int64_t r = 0; r < R; ++r)
        while (acc[r] < N && ta[r][acc[r]] == da[r][acc[r]]) ++acc[r];
      fix = t.gather(1, to_tensor(acc).unsqueeze(1)).squeeze(1);
    } else {
      Tensor p = sampling_probs(logits.reshape({R * (N + 1), -1}), opt.sampling).view({R, N + 1, -1}).to(torch::kCPU);  // [R,N+1,V]
      // q padded with a zero row at position N, so that "resample from max(0, p - q)" at N is the bonus draw from p.
      Tensor q = torch::cat({N > 0 ? torch::stack(q_probs, 1) : torch::zeros({R, 0, p.size(2)}), torch::zeros({R, 1, p.size(2)})}, 1);  // [R,N+1,V]
      Tensor u = torch::rand({R, N}, gen);  // [R,N] uniform draws
      auto pa = p.accessor<float, 3>(), qa = q.accessor<float, 3>();
      auto ua = u.accessor<float, 2>();
      for (int64_t r = 0; r < R; ++r)  // accept d with probability min(1, p(d)/q(d)); q(d) > 0 as d ~ q
        while (acc[r] < N && ua[r][acc[r]] * qa[r][acc[r]][da[r][acc[r]]] < pa[r][acc[r]][da[r][acc[r]]]) ++acc[r];
      Tensor at = to_tensor(acc), ar = torch::arange(R);
      Tensor pr = p.index({ar, at}), residual = (pr - q.index({ar, at})).clamp_min(0);  // [R,V]
      // p == q up to rounding leaves no residual mass; p itself is then the right distribution.
      residual = torch::where(residual.sum(-1, true) > 0, residual, pr);
      fix = torch::multinomial(residual, 1, false, gen).squeeze(1);
    }

    // Keep slots n..n+A; each row's rejected slots become holes.
    const int64_t A = *std::max_element(acc.begin(), acc.end());
    cache.crop(n + A + 1);
    Tensor hole = torch::arange(N + 1).unsqueeze(0) > to_tensor(acc).unsqueeze(1);  // [R,N+1]
    batch.key_mask.narrow(1, n, N + 1).masked_fill_(hole.to(dev), 0);

    keep.clear();
    std::vector<int64_t> next_pending;
    int64_t emitted = 0;
    for (int64_t r = 0; r < R; ++r) {
      bool alive = true;
      for (int64_t j = 0; j < acc[r] && alive; ++j, ++emitted) alive = batch.emit(out, r, (int)da[r][j], opt);
      const int v = (int)fix[r].item<int64_t>();
      if (alive) {
        ++emitted;
        alive = batch.emit(out, r, v, opt);
      }
      if (alive) {
        keep.push_back(r);
        next_pending.push_back(v);
      }
    }
    if (stats) {
      stats->new_tokens += emitted;
      stats->drafted += R * N;
      for (int64_t a : acc) stats->accepted += a;
      stats->rounds += R;
    }
    if (opt.draft_tokens == 0) n_draft = A == N ? std::min(n_draft + 2, most_drafts) : std::max<int64_t>(n_draft - 1, 1);
    pending = next_pending;
    batch.keep(keep, cache);
  }
  if (stats) stats->decode_ms += clock.ms();
  return out;
}

}  // namespace sl
