#include "sortedllama/io/convert.h"

#include <filesystem>
#include <fstream>

#include <spdlog/spdlog.h>

#include "sortedllama/io/checkpoint.h"
#include "sortedllama/io/tokenizer.h"

namespace sl {

namespace {
// Meta/llama2.c rotary pairs are (2i, 2i+1); HF pairs are (i, i + hd/2). Reorders rows per head.
torch::Tensor permute_rope_rows(const torch::Tensor& w, int64_t heads, int64_t dim_in) {
  const int64_t hd = w.size(0) / heads;
  return w.view({heads, hd / 2, 2, dim_in}).transpose(1, 2).reshape({heads * hd, dim_in});
}
}  // namespace

void convert_llama2c(const std::string& bin_path, const std::string& tokenizer, const std::string& out_dir) {
  std::ifstream f(bin_path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + bin_path);
  int32_t h[7];
  f.read(reinterpret_cast<char*>(h), sizeof(h));
  if (!f) throw std::runtime_error(bin_path + ": truncated: shorter than the 28-byte llama2.c header");
  const char* names[7] = {"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "max_seq_len"};
  // Caps far above any real model keep the size arithmetic below from overflowing.
  const int64_t caps[7] = {1 << 17, 1 << 17, 1 << 10, 1 << 10, 1 << 10, 1 << 22, 1 << 22};
  for (int i = 0; i < 7; ++i)
    if (h[i] == 0 || (h[i] < 0 && i != 5) || std::abs((int64_t)h[i]) > caps[i])
      throw std::runtime_error(bin_path + ": header field " + names[i] + " = " + std::to_string(h[i]) +
                               " is impossible (not a llama2.c version-0 checkpoint?)");
  ModelConfig cfg;
  cfg.dim = h[0];
  cfg.hidden_dim = h[1];
  cfg.n_layers = h[2];
  cfg.n_heads = h[3];
  cfg.n_kv_heads = h[4];
  cfg.vocab_size = std::abs(h[5]);
  cfg.tie_embeddings = h[5] > 0;  // negative vocab = separate classifier at the end
  cfg.max_seq_len = h[6];
  cfg.norm_eps = 1e-5;
  cfg.rope_theta = 10000.0;
  cfg.validate(bin_path);

  const int64_t D = cfg.dim, I = cfg.hidden_dim, L = cfg.n_layers, V = cfg.vocab_size;
  const int64_t kv = cfg.n_kv_heads * cfg.head_dim(), hd = cfg.head_dim();
  const int64_t floats = V * D + L * D + L * D * D + 2 * L * kv * D + L * D * D + L * D + 3 * L * I * D + D +
                         cfg.max_seq_len * hd + (cfg.tie_embeddings ? 0 : V * D);
  const int64_t want = 28 + 4 * floats, have = (int64_t)std::filesystem::file_size(bin_path);
  if (have != want)
    throw std::runtime_error(bin_path + ": " + std::to_string(have) + " bytes, but its header implies " +
                             std::to_string(want) + (have < want ? " (truncated)" : " (trailing data)"));
  auto read = [&](std::vector<int64_t> shape) {
    torch::Tensor t = torch::empty(shape, torch::kFloat32);
    f.read(reinterpret_cast<char*>(t.data_ptr<float>()), t.numel() * 4);
    if (!f) throw std::runtime_error(bin_path + ": read failed");
    return t;
  };
  torch::Tensor emb = read({V, D}), rms_att = read({L, D}), wq = read({L, D, D}), wk = read({L, kv, D}),
                wv = read({L, kv, D}), wo = read({L, D, D}), rms_ffn = read({L, D}), w1 = read({L, I, D}),
                w2 = read({L, D, I}), w3 = read({L, I, D}), rms_final = read({D});
  read({cfg.max_seq_len, hd});  // freq_cis_real and freq_cis_imag: recomputed, not stored
  torch::Tensor wcls = cfg.tie_embeddings ? emb : read({V, D});

  Tokenizer tok(tokenizer);
  if (tok.vocab_size() > V)
    throw std::runtime_error(tokenizer + " has " + std::to_string(tok.vocab_size()) + " pieces but " + bin_path +
                             " has only " + std::to_string(V) + " embedding rows");
  cfg.bos_id = tok.bos_id() >= 0 ? tok.bos_id() : 1;
  cfg.eos_id = tok.eos_id() >= 0 ? tok.eos_id() : 2;

  Llama model(cfg);
  torch::NoGradGuard no_grad;
  auto& b = *model->body;
  b.embed_tokens->weight.copy_(emb);
  for (int64_t l = 0; l < L; ++l) {
    auto& layer = b.layers->at<DecoderLayerImpl>(l);
    layer.input_layernorm->weight.copy_(rms_att[l]);
    layer.self_attn->q_proj->weight.copy_(permute_rope_rows(wq[l], cfg.n_heads, D));
    layer.self_attn->k_proj->weight.copy_(permute_rope_rows(wk[l], cfg.n_kv_heads, D));
    layer.self_attn->v_proj->weight.copy_(wv[l]);
    layer.self_attn->o_proj->weight.copy_(wo[l]);
    layer.post_attention_layernorm->weight.copy_(rms_ffn[l]);
    layer.mlp->gate_proj->weight.copy_(w1[l]);
    layer.mlp->down_proj->weight.copy_(w2[l]);
    layer.mlp->up_proj->weight.copy_(w3[l]);
  }
  b.norm->weight.copy_(rms_final);
  if (!cfg.tie_embeddings) model->lm_head->weight.copy_(wcls);
  save_model(model, out_dir, tokenizer);
  spdlog::info("converted {} ({} layers, dim {}, {} heads / {} KV heads, vocab {}) to {}", bin_path, L, D,
               cfg.n_heads, cfg.n_kv_heads, V, out_dir);
}

}  // namespace sl
