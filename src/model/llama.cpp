#include "sortedllama/model/llama.h"

#include <sys/mman.h>

#include <cstdlib>

#include "sortedllama/model/fast_step.h"
#include "sortedllama/model/fused_ops.h"

namespace sl {

using torch::Tensor;
namespace F = torch::nn::functional;

Tensor linear_map(const Tensor& x, const Tensor& w) {
  const int64_t rows = x.numel() / std::max<int64_t>(1, w.size(1));  // positions
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = w.size(0);
  const bool plain_fp32 = x.device().is_cpu() && x.scalar_type() == torch::kFloat32 && w.scalar_type() == torch::kFloat32 &&
                          w.is_contiguous() && !torch::GradMode::is_enabled();
  // A few positions (decoding steps) read W once in matvec; many are a compute-bound GEMM.
  if (plain_fp32 && rows <= kMatvecRows) {
    Tensor xc = x.contiguous(), y = torch::empty(shape, torch::kFloat32);
    matvec(y.data_ptr<float>(), w.data_ptr<float>(), xc.data_ptr<float>(), rows, w.size(0), w.size(1));
    return y;
  }
  if (rows == 1) return torch::mv(w, x.reshape({-1})).view(shape);
  return F::linear(x, w);
}

Tensor RMSNormImpl::forward(const Tensor& x) {
  if (fused_ops_apply(x) && fused_ops_apply(weight)) return fused_rms_norm(x, weight, eps);
  Tensor h = x.to(torch::kFloat32);
  h = h * torch::rsqrt(h.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * h.to(x.scalar_type());
}

KVCache::KVCache(const ModelConfig& cfg, int64_t batch, int64_t cap, torch::TensorOptions opts)
    : len(cfg.n_layers, 0), capacity(cap) {
  for (int64_t i = 0; i < cfg.n_layers; ++i) {
    k.push_back(torch::zeros({batch, cfg.n_kv_heads, cap, cfg.head_dim()}, opts));
    v.push_back(torch::zeros({batch, cfg.n_kv_heads, cap, cfg.head_dim()}, opts));
  }
}

void KVCache::crop(int64_t n) {
  for (auto& l : len) l = std::min(l, n);
}

void KVCache::keep_rows(const Tensor& rows) {
  for (size_t i = 0; i < k.size(); ++i) {
    k[i] = k[i].index_select(0, rows);
    v[i] = v[i].index_select(0, rows);
  }
}

namespace {
// HF's rotate-half convention: pairs are (x[i], x[i + hd/2]).
Tensor rotate_half(const Tensor& x) {
  auto halves = x.chunk(2, -1);
  return torch::cat({-halves[1], halves[0]}, -1);
}
Tensor apply_rope(const Tensor& x, const AttnInputs& in) {  // x [B,T,heads,hd]
  if (fused_ops_apply(x)) return fused_rotary(x, in.cos, in.sin);
  const Tensor cos = in.cos.transpose(1, 2), sin = in.sin.transpose(1, 2);  // [B,T,1,hd]
  return x * cos + rotate_half(x) * sin;
}
}  // namespace

AttentionImpl::AttentionImpl(const ModelConfig& c)
    : n_heads(c.n_heads), n_kv_heads(c.n_kv_heads), head_dim(c.head_dim()) {
  q_proj = register_module("q_proj", Linear(c.dim, c.n_heads * head_dim));
  k_proj = register_module("k_proj", Linear(c.dim, c.n_kv_heads * head_dim));
  v_proj = register_module("v_proj", Linear(c.dim, c.n_kv_heads * head_dim));
  o_proj = register_module("o_proj", Linear(c.n_heads * head_dim, c.dim));
}

namespace {
#if TORCH_VERSION_MAJOR < 2  // libtorch 2 has scaled_dot_product_attention
// Attention weights [B,H,T,S] fp32 from raw scores q k^T: softmax(scores / sqrt(hd)) over the
// visible keys.
Tensor attention_weights(const Tensor& scores, const Tensor& mask, int64_t head_dim) {
  Tensor scaled = scores / std::sqrt((double)head_dim);
  if (mask.defined()) scaled = scaled.masked_fill(mask.logical_not(), -std::numeric_limits<float>::infinity());
  return scaled.softmax(-1);
}
#endif

// Writes k, v [B,KV,T,hd] at cache.len[layer] and advances it.
void store_kv(const Tensor& k, const Tensor& v, KVCache& cache, int layer) {
  const int64_t start = cache.len[layer], T = k.size(2);
  TORCH_CHECK(start + T <= cache.capacity, "KV cache full: ", start + T, " > ", cache.capacity, " positions");
  cache.k[layer].narrow(2, start, T).copy_(k);
  cache.v[layer].narrow(2, start, T).copy_(v);
  cache.len[layer] = start + T;
}

// The attention core in tensor ops, where fused_attention does not apply (CUDA):
// q [B,H,T,hd], k, v [B,KV,S,hd], mask [B,1,T,S] -> [B,T,H*hd].
Tensor attention_ops(const Tensor& q, Tensor k, Tensor v, const Tensor& mask) {
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), hd = q.size(3), KV = k.size(1), S = k.size(2);
  if (H > KV) {  // GQA: KV head j serves query heads j*rep .. j*rep+rep-1
    k = k.unsqueeze(2).expand({B, KV, H / KV, S, hd}).reshape({B, H, S, hd});
    v = v.unsqueeze(2).expand({B, KV, H / KV, S, hd}).reshape({B, H, S, hd});
  }
  Tensor out;  // [B,H,T,hd]
#if TORCH_VERSION_MAJOR >= 2
  out = at::scaled_dot_product_attention(q, k, v, mask.defined() ? c10::optional<Tensor>(mask) : c10::nullopt);
#else
  Tensor scores = torch::matmul(q, k.transpose(-2, -1)).to(torch::kFloat32);  // [B,H,T,S]
  out = torch::matmul(attention_weights(scores, mask, hd).to(v.scalar_type()), v);
#endif
  return out.transpose(1, 2).reshape({B, T, H * hd});
}
}  // namespace

void AttentionImpl::append_kv(const Tensor& x, const AttnInputs& in, KVCache& cache, int layer) {
  const int64_t B = x.size(0), T = x.size(1);
  Tensor k = apply_rope(k_proj(x).view({B, T, n_kv_heads, head_dim}), in).transpose(1, 2);  // [B,KV,T,hd]
  Tensor v = v_proj(x).view({B, T, n_kv_heads, head_dim}).transpose(1, 2);                   // [B,KV,T,hd]
  store_kv(k, v, cache, layer);
}

Tensor AttentionImpl::forward(const Tensor& x, const AttnInputs& in, KVCache* cache, int layer) {
  const int64_t B = x.size(0), T = x.size(1);
  Tensor q = apply_rope(q_proj(x).view({B, T, n_heads, head_dim}), in).transpose(1, 2);     // [B,H,T,hd]
  Tensor k = apply_rope(k_proj(x).view({B, T, n_kv_heads, head_dim}), in).transpose(1, 2);  // [B,KV,T,hd]
  Tensor v = v_proj(x).view({B, T, n_kv_heads, head_dim}).transpose(1, 2);                   // [B,KV,T,hd]
  if (cache) {
    store_kv(k, v, *cache, layer);
    k = cache->k[layer].narrow(2, 0, cache->len[layer]);  // [B,KV,S,hd]
    v = cache->v[layer].narrow(2, 0, cache->len[layer]);
  }
  return o_proj(fused_ops_apply(q) ? fused_attention(q, k, v, in.mask) : attention_ops(q, k, v, in.mask));
}

Tensor MLPImpl::forward(const Tensor& x) {
  const Tensor g = gate_proj(x), u = up_proj(x);  // [...,I]
  return down_proj(fused_ops_apply(g) ? fused_swiglu(g, u) : torch::silu(g) * u);
}

MLPImpl::MLPImpl(int64_t dim, int64_t hidden) {
  gate_proj = register_module("gate_proj", Linear(dim, hidden));
  up_proj = register_module("up_proj", Linear(dim, hidden));
  down_proj = register_module("down_proj", Linear(hidden, dim));
}

DecoderLayerImpl::DecoderLayerImpl(const ModelConfig& c) {
  self_attn = register_module("self_attn", Attention(c));
  mlp = register_module("mlp", MLP(c.dim, c.hidden_dim));
  input_layernorm = register_module("input_layernorm", RMSNorm(c.dim, c.norm_eps));
  post_attention_layernorm = register_module("post_attention_layernorm", RMSNorm(c.dim, c.norm_eps));
}

Tensor DecoderLayerImpl::forward(const Tensor& x, const AttnInputs& in, KVCache* cache, int layer) {
  RECORD_USER_SCOPE("sl::decoder_layer");  // profilers and tests count the layers run
  Tensor h = x + self_attn(input_layernorm(x), in, cache, layer);
  return h + mlp(post_attention_layernorm(h));
}

void DecoderLayerImpl::append_kv(const Tensor& x, const AttnInputs& in, KVCache& cache, int layer) {
  self_attn->append_kv(input_layernorm(x), in, cache, layer);
}

LlamaBodyImpl::LlamaBodyImpl(const ModelConfig& c) {
  embed_tokens = register_module("embed_tokens", Embedding(c.vocab_size, c.dim));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.n_layers; ++i) layers->push_back(DecoderLayer(c));
  norm = register_module("norm", RMSNorm(c.dim, c.norm_eps));
}

LlamaImpl::LlamaImpl(const ModelConfig& cfg) : cfg_(cfg) {
  cfg_.validate("model config");
  body = register_module("model", LlamaBody(cfg_));
  if (!cfg_.tie_embeddings) lm_head = register_module("lm_head", Linear(cfg_.dim, cfg_.vocab_size));
  ict_heads = register_module("ict_heads", std::make_shared<torch::nn::Module>());
  const int64_t hd = cfg_.head_dim();
  step_buffers_ = std::make_shared<StepBuffers>();
  // Not a buffer: module->to(bf16) must not round the frequencies (positions * inv_freq stay fp32).
  inv_freq_ = (1.0 / torch::pow(cfg_.rope_theta, torch::arange(0, hd, 2, torch::kFloat64) / (double)hd)).to(torch::kFloat32);
  if (!cfg_.ict_exits.empty()) add_ict_heads(cfg_.ict_exits);
}

void LlamaImpl::init_weights(double std, uint64_t seed) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(seed);
  for (auto& p : named_parameters()) {
    if (p.key().find("norm") != std::string::npos) p.value().fill_(1.0);
    else p.value().normal_(0.0, std);
  }
}

Tensor LlamaImpl::embed(const Tensor& tokens) { return body->embed_tokens(tokens); }

namespace {
// Few fp32 positions on the CPU take fast_step's loops for their attention inputs too.
bool few_cpu_positions(const LlamaImpl& m, int64_t B, int64_t T) {
  return m.device().is_cpu() && m.dtype() == torch::kFloat32 && (T == 1 || B * T <= kMatvecRows);
}

// cos, sin [B,1,T,hd] in `dtype` for rotary positions pos [B,T] int64; inv_freq [hd/2] fp32.
AttnInputs rotary_tables(const Tensor& pos, const Tensor& inv_freq, torch::Dtype dtype) {
  Tensor freqs = pos.unsqueeze(-1).to(torch::kFloat32) * inv_freq.to(pos.device());  // [B,T,hd/2]
  Tensor emb = torch::cat({freqs, freqs}, -1).unsqueeze(1);                           // [B,1,T,hd]
  return {emb.cos().to(dtype), emb.sin().to(dtype), {}};
}
}  // namespace

AttnInputs LlamaImpl::attn_inputs(const Tensor& key_mask, int64_t B, int64_t q_start, int64_t T) const {
  auto dev = device();
  const int64_t S = q_start + T;
  if (key_mask.defined())
    TORCH_CHECK(key_mask.size(0) == B && key_mask.size(1) == S, "key_mask must be [", B, ",", S, "]");
  if (few_cpu_positions(*this, B, T)) return fast_attn_inputs(key_mask, B, q_start, T, inv_freq_);
  Tensor slots = torch::arange(q_start, S, torch::dtype(torch::kInt64).device(dev));  // [T]
  Tensor pos;                                                                           // [B,T]
  if (key_mask.defined()) {
    pos = (key_mask.to(torch::kInt64).cumsum(1) - 1).clamp_min(0).narrow(1, q_start, T);
  } else {
    pos = slots.unsqueeze(0).expand({B, T});
  }
  AttnInputs in = rotary_tables(pos, inv_freq_, dtype());
  if (T > 1 || key_mask.defined()) {
    Tensor keys = torch::arange(S, torch::dtype(torch::kInt64).device(dev));
    Tensor allowed = keys.view({1, 1, S}) <= slots.view({1, T, 1});  // causal [1,T,S]
    if (key_mask.defined()) {
      // Padding keys are hidden; a query always sees itself so that padded rows stay finite.
      Tensor self = keys.view({1, 1, S}) == slots.view({1, T, 1});
      allowed = allowed.logical_and(key_mask.to(torch::kBool).view({B, 1, S})).logical_or(self);
    }
    in.mask = allowed.expand({B, T, S}).unsqueeze(1);  // [B,1,T,S]
  }
  return in;
}

AttnInputs LlamaImpl::attn_inputs_at(const Tensor& positions, const Tensor& mask) const {
  const int64_t B = positions.size(0), T = positions.size(1);
  TORCH_CHECK(mask.dim() == 4 && mask.size(0) == B && mask.size(1) == 1 && mask.size(2) == T &&
                  mask.scalar_type() == torch::kBool,
              "mask must be [", B, ",1,", T, ",S] bool");
  AttnInputs in = few_cpu_positions(*this, B, T) ? fast_rotary(positions.cpu(), inv_freq_)
                                                 : rotary_tables(positions.to(device()), inv_freq_, dtype());
  in.mask = mask.to(device());
  return in;
}

Tensor LlamaImpl::layer(int i, const Tensor& x, const AttnInputs& in, KVCache* cache) {
  auto& l = body->layers->at<DecoderLayerImpl>(i);
  if (!fast_step_applies(x, cache)) return l.forward(x, in, cache, i);
  RECORD_USER_SCOPE("sl::decoder_layer");
  return fast_layer_step(l, x, in, *cache, i, *step_buffers_);
}

void LlamaImpl::layer_kv(int i, const Tensor& x, const AttnInputs& in, KVCache& cache) {
  auto& l = body->layers->at<DecoderLayerImpl>(i);
  if (fast_step_applies(x, &cache)) fast_layer_kv_step(l, x, in, cache, i, *step_buffers_);
  else l.append_kv(x, in, cache, i);
}

Tensor LlamaImpl::head_weight(int exit) {
  if (has_ict_head(exit))
    return ict_heads->named_children()[std::to_string(exit)]->named_parameters()["weight"];
  return cfg_.tie_embeddings ? body->embed_tokens->weight : lm_head->weight;
}

Tensor LlamaImpl::head(const Tensor& h, int exit) { return linear_map(body->norm(h), head_weight(exit)); }

std::vector<Tensor> LlamaImpl::forward(const Tensor& tokens, const std::vector<int>& exits, const Tensor& key_mask,
                                       KVCache* cache) {
  TORCH_CHECK(!exits.empty(), "forward needs at least one exit");
  const int deepest = *std::max_element(exits.begin(), exits.end());
  TORCH_CHECK(deepest >= 1 && deepest <= cfg_.n_layers, "exit ", deepest, " outside 1..", cfg_.n_layers);
  const int64_t B = tokens.size(0), T = tokens.size(1);
  const int64_t start = cache ? cache->len[0] : 0;
  AttnInputs in = attn_inputs(key_mask, B, start, T);
  Tensor x = embed(tokens);
  std::vector<Tensor> hidden(exits.size());
  for (int i = 0; i < deepest; ++i) {
    x = layer(i, x, in, cache);
    for (size_t e = 0; e < exits.size(); ++e)
      if (exits[e] == i + 1) hidden[e] = x;
  }
  return hidden;
}

void LlamaImpl::use_huge_pages() {
  constexpr size_t kHuge = size_t(2) << 20;
  torch::NoGradGuard no_grad;
  for (auto& p : parameters()) {
    const size_t bytes = p.numel() * p.element_size();
    if (!p.device().is_cpu() || bytes < kHuge) continue;
    const size_t rounded = (bytes + kHuge - 1) / kHuge * kHuge;
    void* mem = std::aligned_alloc(kHuge, rounded);
    TORCH_CHECK(mem, "out of memory moving ", bytes, " bytes of weights");
    madvise(mem, rounded, MADV_HUGEPAGE);  // a hint: without THP the pages stay small, nothing else changes
    Tensor t = torch::from_blob(mem, p.sizes(), [](void* q) { std::free(q); }, p.options());
    t.copy_(p);
    p.set_data(t);
  }
}

void LlamaImpl::add_ict_heads(const std::vector<int>& exits) {
  torch::NoGradGuard no_grad;
  Tensor shared = cfg_.tie_embeddings ? body->embed_tokens->weight : lm_head->weight;
  for (int e : exits) {
    if (has_ict_head(e)) continue;
    auto h = ict_heads->register_module(std::to_string(e), Linear(cfg_.dim, cfg_.vocab_size));
    h->to(shared.device(), shared.scalar_type());
    h->weight.copy_(shared);
    if (std::find(cfg_.ict_exits.begin(), cfg_.ict_exits.end(), e) == cfg_.ict_exits.end()) cfg_.ict_exits.push_back(e);
  }
  std::sort(cfg_.ict_exits.begin(), cfg_.ict_exits.end());
}

void for_each_parameter_shape(const ModelConfig& c,
                              const std::function<void(const std::string&, const std::vector<int64_t>&)>& fn) {
  const int64_t q = c.n_heads * c.head_dim(), kv = c.n_kv_heads * c.head_dim();
  fn("model.embed_tokens.weight", {c.vocab_size, c.dim});
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string l = "model.layers." + std::to_string(i) + ".";
    fn(l + "self_attn.q_proj.weight", {q, c.dim});
    fn(l + "self_attn.k_proj.weight", {kv, c.dim});
    fn(l + "self_attn.v_proj.weight", {kv, c.dim});
    fn(l + "self_attn.o_proj.weight", {c.dim, q});
    fn(l + "mlp.gate_proj.weight", {c.hidden_dim, c.dim});
    fn(l + "mlp.up_proj.weight", {c.hidden_dim, c.dim});
    fn(l + "mlp.down_proj.weight", {c.dim, c.hidden_dim});
    fn(l + "input_layernorm.weight", {c.dim});
    fn(l + "post_attention_layernorm.weight", {c.dim});
  }
  fn("model.norm.weight", {c.dim});
  if (!c.tie_embeddings) fn("lm_head.weight", {c.vocab_size, c.dim});
  std::vector<int> seen;  // add_ict_heads registers each exit once, in the order given
  for (int e : c.ict_exits) {
    if (std::find(seen.begin(), seen.end(), e) != seen.end()) continue;
    seen.push_back(e);
    fn("ict_heads." + std::to_string(e) + ".weight", {c.vocab_size, c.dim});
  }
}

bool LlamaImpl::has_ict_head(int exit) const {
  for (const auto& c : ict_heads->named_children())
    if (c.key() == std::to_string(exit)) return true;
  return false;
}

}  // namespace sl
