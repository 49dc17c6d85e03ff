// Model hyper-parameters, read from and written to an HF `config.json` (LlamaForCausalLM).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace sl {

// A decoding profile stored with the weights it was measured on (config.json
// "decoding": {"dynamic": {...}}): the thresholds of dynamic early exit that `sortedllama calibrate`
// chose, which generate --dynamic and eval --decode dynamic use when no thresholds are given.
struct DynamicProfile {
  std::vector<std::pair<int, double>> thresholds;  // "thresholds": [{"layer", "threshold"}], layers increasing
  std::string confidence = "max_prob";             // "confidence": max_prob | margin
  nlohmann::json calibrated;                       // "calibrated": what the guarantee is and how it was measured; null = none
};

// config.json "decoding": {"speculative": {...}}: the self-speculative settings `sortedllama tune`
// measured fastest with the full model verifying, which generate --speculative and eval --decode
// speculative use when no draft layer is given.
struct SpeculativeProfile {
  int draft_layer = 0;          // "draft_layer": the drafting sub-model, below the last layer
  int draft_tokens = 0;         // "draft_tokens": per round; 0 = adaptive (or the cap of confidence-stopped drafting)
  double draft_confidence = 0;  // "draft_confidence": > 0 = confidence-stopped drafting
  int64_t batch_size = 1;       // "batch_size": the batch it was tuned for
  nlohmann::json tuned;         // "tuned": predicted and measured speed-ups and how they were measured; null = none
};

struct ModelConfig {
  int64_t dim = 0;          // hidden_size
  int64_t hidden_dim = 0;   // intermediate_size (SwiGLU width)
  int64_t n_layers = 0;     // num_hidden_layers
  int64_t n_heads = 0;      // num_attention_heads
  int64_t n_kv_heads = 0;   // num_key_value_heads (GQA when < n_heads)
  int64_t vocab_size = 0;   // rows of embed_tokens / lm_head (may exceed the tokenizer's pieces)
  int64_t max_seq_len = 0;  // max_position_embeddings
  double norm_eps = 1e-5;   // rms_norm_eps
  double rope_theta = 10000.0;
  bool tie_embeddings = false;  // tie_word_embeddings: lm_head shares embed_tokens
  int64_t bos_id = 1, eos_id = 2;
  std::string torch_dtype = "float32";
  std::vector<int> ict_exits;  // SFT+ICT: exits with their own trained head (sortedllama.ict_exits)
  std::optional<DynamicProfile> dynamic_profile;          // decoding.dynamic
  std::optional<SpeculativeProfile> speculative_profile;  // decoding.speculative

  int64_t head_dim() const { return dim / n_heads; }

  // Parses an HF config object; `source` (a path) names where errors come from.
  static ModelConfig from_json(const nlohmann::json& j, const std::string& source);
  static ModelConfig from_file(const std::string& path);
  nlohmann::json to_json() const;
  // Throws naming `source` and the key when a value is missing or impossible.
  void validate(const std::string& source) const;
};

}  // namespace sl
