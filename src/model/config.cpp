#include "sortedllama/model/config.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <type_traits>

#include "sortedllama/util/files.h"

namespace sl {

namespace {
std::runtime_error config_error(const std::string& source, const std::string& msg) {
  return std::runtime_error(source + ": " + msg);
}

// A config value for a message: scalars as written, containers by type, since dumping a hostile,
// deeply nested value recurses once per level and can overflow the stack.
std::string describe(const nlohmann::json& v) {
  return v.is_structured() ? std::string("an ") + v.type_name() : v.dump();
}

// nlohmann converts any number to an integer type silently (64.5 -> 64, 2^64 - 1 -> -1), so an
// integer key takes only an integer that T holds exactly.
template <typename T>
T exact_integer(const nlohmann::json& v, const std::string& what, const std::string& source) {
  if (!v.is_number()) throw config_error(source, what + " has the wrong type (" + v.type_name() + ")");
  if (!v.is_number_integer()) throw config_error(source, what + " must be an integer, got " + v.dump());
  const bool fits = v.is_number_unsigned()
                        ? v.get<uint64_t>() <= (uint64_t)std::numeric_limits<T>::max()
                        : v.get<int64_t>() >= std::numeric_limits<T>::min() && v.get<int64_t>() <= std::numeric_limits<T>::max();
  if (!fits) throw config_error(source, what + " is out of range, got " + v.dump());
  return (T)v.get<int64_t>();
}

template <typename T>
T get_required(const nlohmann::json& j, const char* key, const std::string& source) {
  if (!j.contains(key)) throw config_error(source, std::string("missing required key \"") + key + "\"");
  const std::string what = std::string("key \"") + key + "\"";
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    return exact_integer<T>(j.at(key), what, source);
  } else {
    try {
      return j.at(key).get<T>();
    } catch (const nlohmann::json::exception&) {
      throw config_error(source, what + " has the wrong type (" + j.at(key).type_name() + ")");
    }
  }
}

template <typename T>
T get_optional(const nlohmann::json& j, const char* key, T fallback, const std::string& source) {
  if (!j.contains(key) || j.at(key).is_null()) return fallback;
  return get_required<T>(j, key, source);
}

// Keys of an object; anything else is refused naming the key and listing the known ones.
void only_keys(const nlohmann::json& j, const std::string& where, const std::vector<std::string>& known, const std::string& source) {
  if (!j.is_object()) throw config_error(source, "key \"" + where + "\" has the wrong type (" + j.type_name() + ")");
  for (const auto& [key, v] : j.items())
    if (std::find(known.begin(), known.end(), key) == known.end()) {
      std::string list;
      for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
      throw config_error(source, "unknown key \"" + where + "." + key + "\" (known: " + list + ")");
    }
}

// An optional object-valued record of how a profile was made ("calibrated", "tuned").
nlohmann::json evidence(const nlohmann::json& d, const std::string& where, const char* key, const std::string& source) {
  if (!d.contains(key) || d[key].is_null()) return nullptr;
  if (!d[key].is_object())
    throw config_error(source, "key \"" + where + "." + key + "\" has the wrong type (" + d[key].type_name() + ")");
  return d[key];
}

// "dynamic": {"thresholds": [{"layer": 2, "threshold": 0.9}, ...], "confidence": "max_prob", "calibrated": {...}};
// the values are checked against the depth in validate().
DynamicProfile dynamic_profile_from_json(const nlohmann::json& d, const std::string& source) {
  only_keys(d, "decoding.dynamic", {"thresholds", "confidence", "calibrated"}, source);
  DynamicProfile p;
  if (!d.contains("thresholds") || !d["thresholds"].is_array())
    throw config_error(source, "key \"decoding.dynamic.thresholds\" must be a list of {\"layer\", \"threshold\"}");
  for (const auto& t : d["thresholds"]) {
    if (!t.is_object() || t.size() != 2 || !t.contains("layer") || !t.contains("threshold") || !t["threshold"].is_number())
      throw config_error(source, "an entry of decoding.dynamic.thresholds is " + describe(t) +
                                     ", not {\"layer\": INT, \"threshold\": NUMBER}");
    p.thresholds.emplace_back(exact_integer<int>(t["layer"], "a layer of decoding.dynamic.thresholds", source),
                              t["threshold"].get<double>());
  }
  p.confidence = get_optional<std::string>(d, "confidence", p.confidence, source);
  p.calibrated = evidence(d, "decoding.dynamic", "calibrated", source);
  return p;
}

// "speculative": {"draft_layer": 2, "draft_tokens": 4, "draft_confidence": 0, "batch_size": 1, "tuned": {...}};
// the values are checked against the depth in validate().
SpeculativeProfile speculative_profile_from_json(const nlohmann::json& d, const std::string& source) {
  only_keys(d, "decoding.speculative", {"draft_layer", "draft_tokens", "draft_confidence", "batch_size", "tuned"}, source);
  const std::string src = source + ": decoding.speculative";
  SpeculativeProfile p;
  p.draft_layer = get_required<int>(d, "draft_layer", src);
  p.draft_tokens = get_optional<int>(d, "draft_tokens", p.draft_tokens, src);
  p.draft_confidence = get_optional<double>(d, "draft_confidence", p.draft_confidence, src);
  p.batch_size = get_optional<int64_t>(d, "batch_size", p.batch_size, src);
  p.tuned = evidence(d, "decoding.speculative", "tuned", source);
  return p;
}

// "decoding": a profile per strategy, each optional.
void decoding_from_json(const nlohmann::json& decoding, const std::string& source, ModelConfig& c) {
  only_keys(decoding, "decoding", {"dynamic", "speculative"}, source);
  if (decoding.empty()) throw config_error(source, "key \"decoding\" holds no profile (known: dynamic, speculative)");
  if (decoding.contains("dynamic")) c.dynamic_profile = dynamic_profile_from_json(decoding["dynamic"], source);
  if (decoding.contains("speculative")) c.speculative_profile = speculative_profile_from_json(decoding["speculative"], source);
}
}  // namespace

ModelConfig ModelConfig::from_json(const nlohmann::json& j, const std::string& source) {
  if (!j.is_object()) throw config_error(source, "expected a JSON object");
  if (j.contains("model_type") && j["model_type"] != "llama")
    throw config_error(source, "model_type is " + describe(j["model_type"]) + ", only \"llama\" is supported");
  ModelConfig c;
  c.dim = get_required<int64_t>(j, "hidden_size", source);
  c.hidden_dim = get_required<int64_t>(j, "intermediate_size", source);
  c.n_layers = get_required<int64_t>(j, "num_hidden_layers", source);
  c.n_heads = get_required<int64_t>(j, "num_attention_heads", source);
  c.n_kv_heads = get_optional<int64_t>(j, "num_key_value_heads", c.n_heads, source);
  c.vocab_size = get_required<int64_t>(j, "vocab_size", source);
  c.max_seq_len = get_optional<int64_t>(j, "max_position_embeddings", 4096, source);
  c.norm_eps = get_optional<double>(j, "rms_norm_eps", 1e-6, source);
  c.rope_theta = get_optional<double>(j, "rope_theta", 10000.0, source);
  c.tie_embeddings = get_optional<bool>(j, "tie_word_embeddings", false, source);
  c.bos_id = get_optional<int64_t>(j, "bos_token_id", 1, source);
  c.eos_id = get_optional<int64_t>(j, "eos_token_id", 2, source);
  c.torch_dtype = get_optional<std::string>(j, "torch_dtype", "float32", source);
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null())
    throw config_error(source, "rope_scaling is not supported (LLaMA 2 uses none)");
  if (j.contains("sortedllama") && j["sortedllama"].contains("ict_exits")) {
    const nlohmann::json& exits = j["sortedllama"]["ict_exits"];
    if (!exits.is_array())
      throw config_error(source, std::string("key \"sortedllama.ict_exits\" has the wrong type (") + exits.type_name() + ")");
    for (const auto& e : exits) c.ict_exits.push_back(exact_integer<int>(e, "an entry of sortedllama.ict_exits", source));
  }
  if (j.contains("decoding") && !j["decoding"].is_null()) decoding_from_json(j["decoding"], source, c);
  c.validate(source);
  return c;
}

ModelConfig ModelConfig::from_file(const std::string& path) { return from_json(read_json_file(path), path); }

void ModelConfig::validate(const std::string& source) const {
  auto positive = [&](int64_t v, const char* key) {
    if (v <= 0) throw config_error(source, std::string("\"") + key + "\" must be positive, got " + std::to_string(v));
  };
  positive(dim, "hidden_size");
  positive(hidden_dim, "intermediate_size");
  positive(n_layers, "num_hidden_layers");
  positive(n_heads, "num_attention_heads");
  positive(n_kv_heads, "num_key_value_heads");
  positive(vocab_size, "vocab_size");
  positive(max_seq_len, "max_position_embeddings");
  if (dim % n_heads != 0)
    throw config_error(source, "hidden_size " + std::to_string(dim) + " is not divisible by num_attention_heads " +
                                   std::to_string(n_heads));
  if (n_heads % n_kv_heads != 0)
    throw config_error(source, "num_attention_heads " + std::to_string(n_heads) +
                                   " is not a multiple of num_key_value_heads " + std::to_string(n_kv_heads));
  if (head_dim() % 2 != 0)
    throw config_error(source, "head dimension " + std::to_string(head_dim()) + " must be even for rotary embeddings");
  if (!(norm_eps > 0)) throw config_error(source, "\"rms_norm_eps\" must be positive");
  if (!(rope_theta > 0)) throw config_error(source, "\"rope_theta\" must be positive");
  if (eos_id < 0 || eos_id >= vocab_size)
    throw config_error(source, "\"eos_token_id\" " + std::to_string(eos_id) + " is outside the vocabulary");
  if (bos_id < 0 || bos_id >= vocab_size)
    throw config_error(source, "\"bos_token_id\" " + std::to_string(bos_id) + " is outside the vocabulary");
  static const char* dtypes[] = {"float32", "float16", "bfloat16"};
  if (std::find(std::begin(dtypes), std::end(dtypes), torch_dtype) == std::end(dtypes))
    throw config_error(source, "\"torch_dtype\" " + torch_dtype + " is not one of float32, float16, bfloat16");
  for (int e : ict_exits)
    if (e < 1 || e >= n_layers)
      throw config_error(source, "sortedllama.ict_exits holds " + std::to_string(e) +
                                     ", not an intermediate layer of a " + std::to_string(n_layers) + "-layer model");
  if (dynamic_profile) {
    const auto& t = dynamic_profile->thresholds;
    if (t.empty()) throw config_error(source, "decoding.dynamic.thresholds is empty");
    for (size_t i = 0; i < t.size(); ++i) {
      if (t[i].first < 1 || t[i].first > n_layers || (i > 0 && t[i].first <= t[i - 1].first))
        throw config_error(source, "decoding.dynamic.thresholds: layers must increase within 1.." + std::to_string(n_layers) +
                                       ", got " + std::to_string(t[i].first));
      if (!std::isfinite(t[i].second) || t[i].second < 0)
        throw config_error(source, "decoding.dynamic.thresholds: layer " + std::to_string(t[i].first) +
                                       "'s threshold must be a confidence >= 0 (above 1: never exit there)");
    }
    if (dynamic_profile->confidence != "max_prob" && dynamic_profile->confidence != "margin")
      throw config_error(source, "decoding.dynamic.confidence \"" + dynamic_profile->confidence + "\" is not max_prob or margin");
  }
  if (speculative_profile) {
    const SpeculativeProfile& p = *speculative_profile;
    if (p.draft_layer < 1 || p.draft_layer >= n_layers)
      throw config_error(source, "decoding.speculative.draft_layer " + std::to_string(p.draft_layer) + " is not in 1.." +
                                     std::to_string(n_layers - 1) + " (a sub-model below the full one)");
    if (p.draft_tokens < 0) throw config_error(source, "decoding.speculative.draft_tokens must be >= 0 (0 = adaptive)");
    if (!(p.draft_confidence >= 0 && p.draft_confidence < 1))
      throw config_error(source, "decoding.speculative.draft_confidence must be in [0, 1) (0 = no confidence stop)");
    if (p.batch_size < 1) throw config_error(source, "decoding.speculative.batch_size must be at least 1");
  }
}

nlohmann::json ModelConfig::to_json() const {
  nlohmann::json j = {
      {"architectures", {"LlamaForCausalLM"}},
      {"model_type", "llama"},
      {"hidden_size", dim},
      {"intermediate_size", hidden_dim},
      {"num_hidden_layers", n_layers},
      {"num_attention_heads", n_heads},
      {"num_key_value_heads", n_kv_heads},
      {"vocab_size", vocab_size},
      {"max_position_embeddings", max_seq_len},
      {"rms_norm_eps", norm_eps},
      {"rope_theta", rope_theta},
      {"rope_scaling", nullptr},
      {"hidden_act", "silu"},
      {"attention_bias", false},
      {"tie_word_embeddings", tie_embeddings},
      {"bos_token_id", bos_id},
      {"eos_token_id", eos_id},
      {"torch_dtype", torch_dtype},
      {"initializer_range", 0.02},
  };
  if (!ict_exits.empty())
    j["sortedllama"] = {{"ict_exits", ict_exits},
                        {"note", "SFT+ICT: tensors ict_heads.<exit>.weight are extra output heads for these exits"}};
  if (dynamic_profile) {
    nlohmann::json t = nlohmann::json::array();
    for (const auto& [layer, threshold] : dynamic_profile->thresholds) t.push_back({{"layer", layer}, {"threshold", threshold}});
    nlohmann::json& d = j["decoding"]["dynamic"];
    d = {{"thresholds", t}, {"confidence", dynamic_profile->confidence}};
    if (!dynamic_profile->calibrated.is_null()) d["calibrated"] = dynamic_profile->calibrated;
  }
  if (speculative_profile) {
    const SpeculativeProfile& p = *speculative_profile;
    nlohmann::json& d = j["decoding"]["speculative"];
    d = {{"draft_layer", p.draft_layer}, {"draft_tokens", p.draft_tokens}, {"draft_confidence", p.draft_confidence},
         {"batch_size", p.batch_size}};
    if (!p.tuned.is_null()) d["tuned"] = p.tuned;
  }
  return j;
}

}  // namespace sl
