// LLaMA 2 (as HF LlamaForCausalLM computes it) with nested sub-models.
//
// Sub-model k = decoder layers 1..k, then the SHARED final RMSNorm and the SHARED output head.
// One forward pass returns the residual stream at any set of exits and runs only the layers up to
// the deepest one. Parameter names equal HF's (model.layers.0.self_attn.q_proj.weight, ...), so
// named_parameters() is the checkpoint's tensor list.
//
// Shapes: B batch, T new tokens, S keys (cached + new), D hidden, H heads, KV key/value heads,
// hd = D / H head dim, I intermediate (SwiGLU) width, V vocabulary rows.
#pragma once
#include <functional>

#include <torch/torch.h>

#include "sortedllama/model/config.h"

namespace sl {

// y = x W^T without bias; x [..., in], W [out, in] -> [..., out]. A few rows (decoding steps) are
// matrix-vector products (fast_step's matvec in fp32 without autograd): a GEMM is much slower for them.
torch::Tensor linear_map(const torch::Tensor& x, const torch::Tensor& w);

struct LinearImpl : torch::nn::Module {
  LinearImpl(int64_t in, int64_t out) { weight = register_parameter("weight", torch::empty({out, in})); }
  torch::Tensor forward(const torch::Tensor& x) { return linear_map(x, weight); }
  torch::Tensor weight;
};
TORCH_MODULE(Linear);

struct EmbeddingImpl : torch::nn::Module {
  EmbeddingImpl(int64_t rows, int64_t dim) { weight = register_parameter("weight", torch::empty({rows, dim})); }
  torch::Tensor forward(const torch::Tensor& ids) { return torch::embedding(weight, ids); }  // [B,T] -> [B,T,D]
  torch::Tensor weight;
};
TORCH_MODULE(Embedding);

// x * rsqrt(mean(x^2) + eps) * weight, computed in fp32 whatever the input dtype.
struct RMSNormImpl : torch::nn::Module {
  RMSNormImpl(int64_t dim, double eps) : eps(eps) { weight = register_parameter("weight", torch::ones({dim})); }
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight;
  double eps;
};
TORCH_MODULE(RMSNorm);

// Per-layer key/value cache for incremental decoding; preallocated, cropped by moving `len`.
struct KVCache {
  std::vector<torch::Tensor> k, v;  // per layer [B, KV, capacity, hd]
  std::vector<int64_t> len;         // positions filled, per layer
  int64_t capacity = 0;
  KVCache(const ModelConfig& cfg, int64_t batch, int64_t capacity, torch::TensorOptions opts);
  void crop(int64_t n);                        // every layer keeps at most its first n positions
  void keep_rows(const torch::Tensor& rows);   // keep these batch rows (e.g. drop finished sequences)
};

// What every layer needs for one call: rotary tables and the attention mask.
struct AttnInputs {
  torch::Tensor cos, sin;  // [B, 1, T, hd]
  torch::Tensor mask;      // [B, 1, T, S] bool, true = may attend; undefined = no masking needed (T == 1)
};

struct AttentionImpl : torch::nn::Module {
  AttentionImpl(const ModelConfig& c);
  // x [B,T,D] -> [B,T,D]; with a cache, appends this call's K/V at cache->len[layer].
  torch::Tensor forward(const torch::Tensor& x, const AttnInputs& in, KVCache* cache, int layer);
  // Only the keys/values of x [B,T,D] (rotary applied), appended at cache->len[layer] as forward does.
  void append_kv(const torch::Tensor& x, const AttnInputs& in, KVCache& cache, int layer);
  Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  int64_t n_heads, n_kv_heads, head_dim;
};
TORCH_MODULE(Attention);

struct MLPImpl : torch::nn::Module {
  MLPImpl(int64_t dim, int64_t hidden);
  torch::Tensor forward(const torch::Tensor& x);  // down_proj(silu(gate_proj(x)) * up_proj(x))
  Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(MLP);

struct DecoderLayerImpl : torch::nn::Module {
  DecoderLayerImpl(const ModelConfig& c);
  torch::Tensor forward(const torch::Tensor& x, const AttnInputs& in, KVCache* cache, int layer);
  // The K/V this layer's forward would cache for input x [B,T,D], without attention or MLP.
  void append_kv(const torch::Tensor& x, const AttnInputs& in, KVCache& cache, int layer);
  Attention self_attn{nullptr};
  MLP mlp{nullptr};
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
};
TORCH_MODULE(DecoderLayer);

// HF's inner "model": embeddings, the decoder stack, the final norm.
struct LlamaBodyImpl : torch::nn::Module {
  LlamaBodyImpl(const ModelConfig& c);
  Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers;
  RMSNorm norm{nullptr};
};
TORCH_MODULE(LlamaBody);

struct StepBuffers;  // model/fast_step.h

class LlamaImpl : public torch::nn::Module {
 public:
  explicit LlamaImpl(const ModelConfig& cfg);
  const ModelConfig& config() const { return cfg_; }
  // Decoding profiles hold for the weights they were measured on: training drops them.
  void drop_decoding_profiles() {
    cfg_.dynamic_profile.reset();
    cfg_.speculative_profile.reset();
  }

  // HF's initialisation for training from scratch: N(0, std^2) matrices, unit norms.
  void init_weights(double std, uint64_t seed);

  // The building blocks, for decoders that schedule layers themselves (speculative, early exit).
  torch::Tensor embed(const torch::Tensor& tokens);  // [B,T] int64 -> [B,T,D]
  // Rotary tables and mask for T queries at cache slots [q_start, q_start+T). key_mask [B,S] (1 = real
  // token, S = q_start + T) marks padding; undefined means none. Rotary positions count real tokens,
  // so left-padded prompts get the positions they would have alone.
  AttnInputs attn_inputs(const torch::Tensor& key_mask, int64_t batch, int64_t q_start, int64_t T) const;
  // The same for queries laid out by the caller (a speculative draft tree, whose siblings share a
  // depth and see only their ancestors): positions [B,T] int64, each query's rotary position;
  // mask [B,1,T,S] bool, true = may attend, S = the cache length once this call's keys are in.
  AttnInputs attn_inputs_at(const torch::Tensor& positions, const torch::Tensor& mask) const;
  // 0-based i. One new position per row in fp32 on the CPU takes model/fast_step's path.
  torch::Tensor layer(int i, const torch::Tensor& x, const AttnInputs& in, KVCache* cache);
  // Layer i's K/V for the hidden state x [B,T,D] as its input, appended to the cache; no output.
  // Early exit uses it to give skipped layers the entries later tokens attend to (CALM state copying).
  void layer_kv(int i, const torch::Tensor& x, const AttnInputs& in, KVCache& cache);
  // Sub-model `exit`'s output: shared final norm, then the exit's ICT head if it has one, else the
  // shared head. h [..., D] -> logits [..., V].
  torch::Tensor head(const torch::Tensor& h, int exit);
  torch::Tensor head_weight(int exit);  // [V, D]: the matrix head() applies for this exit

  // Runs layers 1..max(exits) over tokens [B,T]; returns the residual stream [B,T,D] after each
  // exit, in the order given. With a cache, the tokens continue the cached sequence.
  std::vector<torch::Tensor> forward(const torch::Tensor& tokens, const std::vector<int>& exits,
                                     const torch::Tensor& key_mask = {}, KVCache* cache = nullptr);

  // CPU parameters of 2 MiB or more move, values kept, into memory the kernel may back with
  // transparent huge pages. A matrix read across 4 KiB pages restarts the hardware prefetcher at
  // every page, which about halves the bandwidth a decoding step (one pass over the weights) gets.
  void use_huge_pages();

  void add_ict_heads(const std::vector<int>& exits);  // heads initialised from the shared head
  bool has_ict_head(int exit) const;

  // Where and in what precision the weights live (every parameter shares them).
  torch::Device device() const { return body->norm->weight.device(); }
  torch::Dtype dtype() const { return body->norm->weight.scalar_type(); }

  LlamaBody body{nullptr};  // registered as "model"
  Linear lm_head{nullptr};  // absent when tie_word_embeddings
  std::shared_ptr<torch::nn::Module> ict_heads;  // "ict_heads.<exit>.weight"

 private:
  ModelConfig cfg_;
  torch::Tensor inv_freq_;  // [hd/2] rotary frequencies, fp32 on the CPU (moved per call)
  std::shared_ptr<StepBuffers> step_buffers_;  // fast_step's scratch, reused across decoding steps
};
TORCH_MODULE(Llama);

// The name and shape of every parameter Llama(cfg) has, in named_parameters() order, without
// allocating: loaders check untrusted files against it before building a model. fn may throw,
// which ends the walk (a config claiming millions of layers stops at the first one not on disk).
void for_each_parameter_shape(const ModelConfig& cfg,
                              const std::function<void(const std::string& name, const std::vector<int64_t>& shape)>& fn);

}  // namespace sl
