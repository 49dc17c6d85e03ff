#include "sortedllama/io/convert.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

#include <spdlog/spdlog.h>

#include "sortedllama/io/checkpoint.h"
#include "sortedllama/io/tokenizer.h"
#include "sortedllama/io/torch_pickle.h"
#include "sortedllama/util/files.h"

namespace fs = std::filesystem;

namespace sl {

namespace {
// Meta/llama2.c rotary pairs are (2i, 2i+1); HF pairs are (i, i + hd/2). Reorders rows per head.
torch::Tensor permute_rope_rows(const torch::Tensor& w, int64_t heads, int64_t dim_in) {
  const int64_t hd = w.size(0) / heads;
  return w.view({heads, hd / 2, 2, dim_in}).transpose(1, 2).reshape({heads * hd, dim_in});
}

// An HF tensor, and where Meta's checkpoint keeps it (an ICT head has no Meta counterpart).
struct HFTensor {
  std::string hf, meta;
  std::vector<int64_t> shape;  // HF shape
  int split;                   // dimension the shards split, -1 = every shard holds a copy
  int64_t rope_heads;          // > 0: rows to permute from interleaved to rotate-half, per head
};

// HF tensors in the order Llama registers its parameters, so that imports write the same files as
// save_model; with their Meta names and how tensor parallelism split them (Meta's model.py: column-
// parallel wq/wk/wv/w1/w3/output split rows, row-parallel wo/w2 and the embeddings split columns).
std::vector<HFTensor> hf_tensors(const ModelConfig& c) {
  const int64_t D = c.dim, I = c.hidden_dim, V = c.vocab_size, hd = c.head_dim();
  std::vector<HFTensor> t = {{"model.embed_tokens.weight", "tok_embeddings.weight", {V, D}, 1, 0}};
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string hf = "model.layers." + std::to_string(l) + ".", meta = "layers." + std::to_string(l) + ".";
    t.push_back({hf + "self_attn.q_proj.weight", meta + "attention.wq.weight", {c.n_heads * hd, D}, 0, c.n_heads});
    t.push_back({hf + "self_attn.k_proj.weight", meta + "attention.wk.weight", {c.n_kv_heads * hd, D}, 0, c.n_kv_heads});
    t.push_back({hf + "self_attn.v_proj.weight", meta + "attention.wv.weight", {c.n_kv_heads * hd, D}, 0, 0});
    t.push_back({hf + "self_attn.o_proj.weight", meta + "attention.wo.weight", {D, c.n_heads * hd}, 1, 0});
    t.push_back({hf + "mlp.gate_proj.weight", meta + "feed_forward.w1.weight", {I, D}, 0, 0});
    t.push_back({hf + "mlp.up_proj.weight", meta + "feed_forward.w3.weight", {I, D}, 0, 0});
    t.push_back({hf + "mlp.down_proj.weight", meta + "feed_forward.w2.weight", {D, I}, 1, 0});
    t.push_back({hf + "input_layernorm.weight", meta + "attention_norm.weight", {D}, -1, 0});
    t.push_back({hf + "post_attention_layernorm.weight", meta + "ffn_norm.weight", {D}, -1, 0});
  }
  t.push_back({"model.norm.weight", "norm.weight", {D}, -1, 0});
  if (!c.tie_embeddings) t.push_back({"lm_head.weight", "output.weight", {V, D}, 0, 0});
  for (int e : c.ict_exits) t.push_back({"ict_heads." + std::to_string(e) + ".weight", "", {V, D}, -1, 0});
  return t;
}

// More embedding rows than pieces is fine (an added padding token); fewer is not.
void check_tokenizer_fits(const Tokenizer& tok, int64_t rows, const std::string& weights) {
  if (tok.vocab_size() > rows)
    throw std::runtime_error(tok.path() + " has " + std::to_string(tok.vocab_size()) + " pieces but " + weights +
                             " has only " + std::to_string(rows) + " embedding rows");
}

void take_special_ids(const Tokenizer& tok, ModelConfig& cfg) {
  cfg.bos_id = tok.bos_id() >= 0 ? tok.bos_id() : 1;
  cfg.eos_id = tok.eos_id() >= 0 ? tok.eos_id() : 2;
}

torch::Dtype weight_dtype(const std::string& config_name) {
  return config_name == "bfloat16" ? torch::kBFloat16 : config_name == "float16" ? torch::kFloat16 : torch::kFloat32;
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
  check_tokenizer_fits(tok, V, bin_path);
  take_special_ids(tok, cfg);

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

namespace {
// Meta's params.json as a ModelConfig (vocab_size -1, "take it from the tokenizer", is returned in *vocab).
ModelConfig meta_params(const std::string& dir, int64_t* vocab_out) {
  if (!fs::is_directory(dir)) throw std::runtime_error(dir + ": not a directory of params.json and consolidated.NN.pth");
  const std::string params_path = dir + "/params.json";
  if (!fs::exists(params_path)) throw std::runtime_error(dir + ": no params.json");
  const nlohmann::json p = read_json_file(params_path);
  if (!p.is_object()) throw std::runtime_error(params_path + ": expected a JSON object");
  // Defaults are those of Meta's ModelArgs; a NaN default marks a key that must be present.
  const double required = std::nan("");
  auto value = [&](const char* key, double fallback, double cap, bool integer) {
    if (!p.contains(key) || p[key].is_null()) {
      if (std::isnan(fallback)) throw std::runtime_error(params_path + ": missing required key \"" + key + "\"");
      return fallback;
    }
    const nlohmann::json& v = p[key];
    if (integer ? !v.is_number_integer() : !v.is_number())
      throw std::runtime_error(params_path + ": \"" + key + "\" is " + v.dump() + ", not " + (integer ? "an integer" : "a number"));
    const double x = v.get<double>();
    if (x > cap) throw std::runtime_error(params_path + ": \"" + key + "\" = " + v.dump() + " is implausibly large");
    return x;
  };
  ModelConfig cfg;
  cfg.dim = (int64_t)value("dim", required, 1 << 17, true);
  cfg.n_layers = (int64_t)value("n_layers", required, 1 << 10, true);
  cfg.n_heads = (int64_t)value("n_heads", required, 1 << 10, true);
  cfg.n_kv_heads = (int64_t)value("n_kv_heads", (double)cfg.n_heads, 1 << 10, true);
  const int64_t vocab = (int64_t)value("vocab_size", -1, 1 << 22, true);
  const int64_t multiple_of = (int64_t)value("multiple_of", 256, 1 << 17, true);
  const double ffn_multiplier = value("ffn_dim_multiplier", 1.0, 64, false);
  cfg.norm_eps = value("norm_eps", 1e-5, 1, false);
  cfg.rope_theta = value("rope_theta", 10000.0, 1e12, false);
  cfg.max_seq_len = 4096;  // LLaMA 2's context; params.json does not record it
  if (multiple_of <= 0 || !(ffn_multiplier > 0))
    throw std::runtime_error(params_path + ": \"multiple_of\" and \"ffn_dim_multiplier\" must be positive");
  if (cfg.dim <= 0) throw std::runtime_error(params_path + ": \"dim\" must be positive");
  // Meta's FeedForward (and HF's converter): int(2 * 4 * dim / 3), scaled, rounded up to multiple_of.
  const int64_t hidden = (int64_t)(ffn_multiplier * (double)(8 * cfg.dim / 3));
  cfg.hidden_dim = multiple_of * ((hidden + multiple_of - 1) / multiple_of);
  *vocab_out = vocab;
  return cfg;
}

// consolidated.00.pth .. consolidated.NN.pth, numbered without gaps: the tensor-parallel shards.
std::vector<std::unique_ptr<TorchFile>> meta_shards(const std::string& dir) {
  std::map<int, std::string> numbered;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.size() < 18 || name.rfind("consolidated.", 0) != 0 || name.compare(name.size() - 4, 4, ".pth") != 0) continue;
    const std::string digits = name.substr(13, name.size() - 17);
    if (digits.size() > 4 || digits.find_first_not_of("0123456789") != std::string::npos) continue;
    auto [it, fresh] = numbered.emplace(std::stoi(digits), e.path().string());
    if (!fresh) throw std::runtime_error(dir + ": both " + it->second + " and " + name + " claim shard " + digits);
  }
  if (numbered.empty()) throw std::runtime_error(dir + ": no consolidated.00.pth");
  std::vector<std::unique_ptr<TorchFile>> shards;
  for (int i = 0; i < (int)numbered.size(); ++i) {
    if (!numbered.count(i))
      throw std::runtime_error(dir + ": " + std::to_string(numbered.size()) + " consolidated.NN.pth files, but shard " +
                               std::to_string(i) + " of them is missing");
    shards.push_back(std::make_unique<TorchFile>(numbered[i]));
  }
  return shards;
}
}  // namespace

void convert_meta(const std::string& dir, const std::string& tokenizer, const std::string& out_dir) {
  int64_t vocab = -1;
  ModelConfig cfg = meta_params(dir, &vocab);
  const std::string params_path = dir + "/params.json";
  const std::vector<std::unique_ptr<TorchFile>> shards = meta_shards(dir);
  const int64_t n = (int64_t)shards.size();
  Tokenizer tok(tokenizer);
  cfg.vocab_size = vocab == -1 ? tok.vocab_size() : vocab;
  check_tokenizer_fits(tok, cfg.vocab_size, params_path);
  take_special_ids(tok, cfg);
  cfg.validate(params_path);
  // Written in the checkpoint's own precision (Meta's are bf16); float64 as float32.
  torch::Dtype dtype = shards[0]->tensor("tok_embeddings.weight").scalar_type();
  if (dtype == torch::kFloat64) dtype = torch::kFloat32;

  std::set<std::string> used = {"rope.freqs"};  // LLaMA 1's rotary table: recomputed
  std::vector<TensorSource> sources;
  for (const HFTensor& t : hf_tensors(cfg)) {
    used.insert(t.meta);
    std::vector<int64_t> part = t.shape;  // what each shard holds
    if (t.split >= 0) {
      if (part[t.split] % n != 0 || (t.rope_heads > 0 && t.rope_heads % n != 0))
        throw std::runtime_error(params_path + ": " + t.meta + " of shape " + c10::str(c10::IntArrayRef(t.shape)) +
                                 " cannot be split over " + std::to_string(n) + " shards");
      part[t.split] /= n;
    }
    sources.push_back({t.hf, t.shape, [&, t, part] {
      torch::Tensor out = torch::empty(t.shape, torch::dtype(dtype));
      for (int64_t s = 0; s < (t.split < 0 ? 1 : n); ++s) {  // a replicated tensor is read from shard 0
        torch::Tensor src = shards[s]->tensor(t.meta);
        if (src.sizes() != c10::IntArrayRef(part))
          throw std::runtime_error(shards[s]->path() + ": tensor " + t.meta + " has shape " + c10::str(src.sizes()) +
                                   " but " + params_path + " implies " + c10::str(c10::IntArrayRef(part)) +
                                   (n > 1 ? " in each of " + std::to_string(n) + " shards" : ""));
        if (t.split < 0) {
          out.copy_(src);
        } else if (t.rope_heads == 0) {
          out.narrow(t.split, s * part[t.split], part[t.split]).copy_(src);
        } else {
          // This shard's heads of `out` seen in Meta's interleaved row order: the permutation that
          // permute_rope_rows makes, as a view, so the rows are copied once.
          const int64_t h = t.rope_heads / n, hd = cfg.head_dim(), D = t.shape[1];
          out.view({t.rope_heads, 2, hd / 2, D}).transpose(1, 2).narrow(0, s * h, h).copy_(src.reshape({h, hd / 2, 2, D}));
        }
      }
      return out;
    }});
  }
  for (const auto& shard : shards)
    for (const std::string& name : shard->names())
      if (!used.count(name)) spdlog::warn("{}: ignoring unexpected tensor {}", shard->path(), name);
  require_replaceable_model_dir(out_dir);
  write_dir_atomically(out_dir, [&](const std::string& tmp) { write_hf_files(cfg, sources, tmp, tokenizer, dtype); });
  spdlog::info("converted {} ({} shard{}, {} layers, dim {}, {} heads / {} KV heads, FFN {}, vocab {}) to {}", dir, n,
               n > 1 ? "s" : "", cfg.n_layers, cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.hidden_dim, cfg.vocab_size,
               out_dir);
}

void convert_hf_bin(const std::string& dir, const std::string& tokenizer, const std::string& out_dir) {
  if (!fs::is_directory(dir)) throw std::runtime_error(dir + ": not a model directory");
  if (fs::exists(dir + "/model.safetensors") || fs::exists(dir + "/model.safetensors.index.json"))
    throw std::runtime_error(dir + ": already holds safetensors weights, which load as they are");
  if (!fs::exists(dir + "/pytorch_model.bin") && !fs::exists(dir + "/pytorch_model.bin.index.json"))
    throw std::runtime_error(dir + ": no pytorch_model.bin or pytorch_model.bin.index.json");
  const std::string config_path = dir + "/config.json";
  if (!fs::exists(config_path)) throw std::runtime_error(dir + ": no config.json");
  const ModelConfig cfg = ModelConfig::from_file(config_path);
  check_tokenizer_fits(Tokenizer(tokenizer), cfg.vocab_size, config_path);

  HFWeights weights(dir);
  std::set<std::string> used;
  std::vector<TensorSource> sources;
  for (const HFTensor& t : hf_tensors(cfg)) {
    used.insert(t.hf);
    sources.push_back({t.hf, t.shape, [&weights, &config_path, t] { return weights.get(t.hf, t.shape, config_path); }});
  }
  // Older HF files carry the rotary inv_freq buffers, which are recomputed.
  weights.warn_unused([&](const std::string& name) {
    return used.count(name) || name.find("rotary_emb.inv_freq") != std::string::npos ||
           (cfg.tie_embeddings && name == "lm_head.weight");
  });
  require_replaceable_model_dir(out_dir);
  write_dir_atomically(out_dir,
                       [&](const std::string& tmp) { write_hf_files(cfg, sources, tmp, tokenizer, weight_dtype(cfg.torch_dtype)); });
  spdlog::info("converted {} ({} layers, dim {}, vocab {}, {}) to {}", dir, cfg.n_layers, cfg.dim, cfg.vocab_size,
               cfg.torch_dtype, out_dir);
}

}  // namespace sl
