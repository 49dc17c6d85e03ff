#include "sortedllama/train/config.h"

#include <cmath>
#include <filesystem>
#include <functional>
#include <sstream>
#include <stdexcept>

#include "sortedllama/util/files.h"

namespace sl {

namespace {
namespace fs = std::filesystem;
using json = nlohmann::json;

[[noreturn]] void key_error(const std::string& key, const std::string& what) {
  throw std::runtime_error("config key \"" + key + "\"" + what);
}

// ---- Value readers: each checks the value's type and range and names the key when it is wrong ----

enum class Range { kAny, kNonNegative, kPositive, kUnit /* [0, 1) */ };

int64_t read_int(const json& v, const std::string& key, Range r) {
  if (!v.is_number_integer() && !v.is_number_unsigned()) key_error(key, " must be an integer, got " + v.dump());
  const int64_t x = v.get<int64_t>();
  if (r == Range::kPositive && x <= 0) key_error(key, " must be positive, got " + v.dump());
  if (r == Range::kNonNegative && x < 0) key_error(key, " must not be negative, got " + v.dump());
  return x;
}

double read_number(const json& v, const std::string& key, Range r) {
  if (!v.is_number()) key_error(key, " must be a number, got " + v.dump());
  const double x = v.get<double>();
  if (!std::isfinite(x)) key_error(key, " must be finite, got " + v.dump());
  if (r == Range::kPositive && !(x > 0)) key_error(key, " must be positive, got " + v.dump());
  if ((r == Range::kNonNegative || r == Range::kUnit) && x < 0) key_error(key, " must not be negative, got " + v.dump());
  if (r == Range::kUnit && x >= 1) key_error(key, " must be below 1, got " + v.dump());
  return x;
}

std::string read_choice(const json& v, const std::string& key, const std::vector<std::string>& choices) {
  const std::string s = v.get<std::string>();
  std::string list;
  for (const auto& c : choices) {
    if (s == c) return s;
    list += (list.empty() ? "" : ", ") + c;
  }
  key_error(key, ": \"" + s + "\" is not one of " + list);
}

std::string read_existing_path(const json& v, const std::string& key) {
  const std::string s = v.get<std::string>();
  if (!s.empty() && !fs::exists(s)) key_error(key, ": " + s + " does not exist");
  return s;
}

// ---- Recipes: presets of the scale, curriculum and layer-dropout keys ----

struct Recipe {
  const char* name;
  json preset;  // train.* keys
};

json preset(const char* scale, double last_share, const char* curriculum, int64_t period, double dropout,
            const char* schedule) {
  return {{"exit_scale", scale}, {"exit_scale_last", last_share},  {"curriculum", curriculum},
          {"curriculum_period", period}, {"layer_dropout", dropout}, {"layer_dropout_schedule", schedule}};
}

const std::vector<Recipe>& recipes() {
  static const std::vector<Recipe> table = {
      {"soft", preset("uniform", 0.5, "none", 2, 0.0, "exp")},         // the paper: uniform mean over exits
      {"layerskip", preset("linear", 0.5, "rotational", 2, 0.1, "exp")},  // Elhoushi et al. 2024
      {"lite", preset("linear", 0.5, "none", 2, 0.0, "exp")},          // Varshney et al. 2023: depth-weighted
      // ours: the full model keeps most of the loss, so it trains almost as SFT does, while every
      // shallower exit still gets enough of the gradient to stay usable (README, Training recipes).
      {"anchored", preset("last", 0.9, "none", 2, 0.0, "exp")},
  };
  return table;
}

std::vector<std::string> recipe_names() {
  std::vector<std::string> names;
  for (const Recipe& r : recipes()) names.push_back(r.name);
  return names;
}

// ---- The table: every key once, with its default, meaning and how it is read ----

struct Key {
  const char* name;  // "train.batch_size"
  json value;        // the default; its type is the key's type
  const char* type;  // for the reference table
  const char* doc;
  std::function<void(TrainOptions&, const json&, const std::string&)> read;
};

#define SL_INT(member, range) [](TrainOptions& o, const json& v, const std::string& k) { o.member = read_int(v, k, range); }
#define SL_NUM(member, range) [](TrainOptions& o, const json& v, const std::string& k) { o.member = read_number(v, k, range); }
#define SL_STR(member) [](TrainOptions& o, const json& v, const std::string&) { o.member = v.get<std::string>(); }
#define SL_BOOL(member) [](TrainOptions& o, const json& v, const std::string&) { o.member = v.get<bool>(); }

const std::vector<Key>& keys() {
  using R = Range;
  static const std::vector<Key> table = {
      {"model", "", "string", "HF model directory to start from (exactly one of `model`, `init`)",
       [](TrainOptions& o, const json& v, const std::string& k) {
         o.model = v.get<std::string>();
         if (!o.model.empty() && !fs::is_directory(o.model)) key_error(k, ": " + o.model + " is not a directory");
       }},
      {"init", nullptr, "object",
       "HF config object (`hidden_size`, `num_hidden_layers`, ...) for a randomly initialised model (N(0, 0.02²), seeded)",
       [](TrainOptions& o, const json& v, const std::string& k) {
         if (!v.is_null() && !v.is_object()) key_error(k, " must be an object");
         o.init = v;
       }},
      {"tokenizer", "", "string", "sentencepiece model; default `MODEL/tokenizer.model` (required with `init`)",
       [](TrainOptions& o, const json& v, const std::string& k) { o.tokenizer = read_existing_path(v, k); }},
      {"method", "soft", "string", "`soft`, `sft`, `ict`, `extracted`",
       [](TrainOptions& o, const json& v, const std::string& k) {
         const std::string m = read_choice(v, k, {"soft", "sft", "ict", "extracted"});
         o.method = m == "sft" ? Method::kSft : m == "ict" ? Method::kIct : m == "extracted" ? Method::kExtracted : Method::kSoft;
       }},
      {"exits", "auto", "string or int list",
       "exit set: `auto` (8 exits from 30% of the depth to the last layer; 12,16,…,40 for 40 layers; every layer below "
       "8 layers), `all`, `\"12,16,40\"` or `[12, 16, 40]`",
       [](TrainOptions& o, const json& v, const std::string& k) {
         if (!v.is_array()) {
           o.exits = v.get<std::string>();
           return;
         }
         o.exits.clear();
         for (const auto& e : v) o.exits += (o.exits.empty() ? "" : ",") + std::to_string(read_int(e, k, R::kPositive));
       }},
      {"exit_weights", json::array(), "number list", "one positive weight per exit, in the order of `exits`; empty = uniform",
       [](TrainOptions& o, const json& v, const std::string& k) {
         o.exit_weights.clear();
         for (const auto& w : v) o.exit_weights.push_back(read_number(w, k, R::kPositive));
       }},
      {"exit_sample", 0, "int", "soft: train a seeded random subset of this many exits per step (the last always in); 0 = all",
       SL_INT(exit_sample, R::kNonNegative)},
      {"extract_layers", 0, "int", "extracted: keep the first k layers", SL_INT(extract_layers, R::kNonNegative)},
      {"out_dir", "runs/finetune", "string", "output directory",
       [](TrainOptions& o, const json& v, const std::string& k) {
         o.out_dir = v.get<std::string>();
         if (o.out_dir.empty()) key_error(k, " is empty");
       }},
      {"data.train", "", "string", "training file (JSON array or JSONL)",
       [](TrainOptions& o, const json& v, const std::string& k) {
         o.train_file = read_existing_path(v, k);
         if (o.train_file.empty()) key_error(k, " is required");
       }},
      {"data.valid", "", "string", "validation file",
       [](TrainOptions& o, const json& v, const std::string& k) { o.valid_file = read_existing_path(v, k); }},
      {"data.valid_fraction", 0.0, "number", "hold out this fraction of `data.train` instead (seeded)",
       SL_NUM(valid_fraction, R::kUnit)},
      {"data.format", "alpaca", "string",
       "`alpaca` `{instruction, input, output}`, `triviaqa` `{question, answers[]}`, `text` `{text}`",
       [](TrainOptions& o, const json& v, const std::string& k) { o.data.format = read_choice(v, k, {"alpaca", "triviaqa", "text"}); }},
      {"data.max_seq_len", 512, "int",
       "sequences are cut to this many tokens (counted and logged); records whose prompt alone fills it are dropped and counted",
       SL_INT(data.max_seq_len, R::kPositive)},
      {"data.train_on_prompt", false, "bool", "also put loss on prompt tokens", SL_BOOL(data.train_on_prompt)},
      {"data.on_bad_record", "fail", "string", "`fail` (error naming file:line) or `skip` (warn and count)",
       [](TrainOptions& o, const json& v, const std::string& k) { o.data.on_bad_record = read_choice(v, k, {"fail", "skip"}); }},
      {"data.answer_alias", 0, "int", "triviaqa: which non-empty alias is the target (a record with fewer aliases is bad)",
       [](TrainOptions& o, const json& v, const std::string& k) { o.data.answer_alias = (int)read_int(v, k, R::kNonNegative); }},
      {"data.group_by_length", false, "bool", "length-grouped batches (less padding)", SL_BOOL(group_by_length)},
      {"train.batch_size", 4, "int", "sequences per micro-batch", SL_INT(batch_size, R::kPositive)},
      {"train.grad_accum", 1, "int", "micro-batches per optimizer step", SL_INT(grad_accum, R::kPositive)},
      {"train.lr", 2e-5, "number", "peak learning rate (the paper)", SL_NUM(lr, R::kPositive)},
      {"train.min_lr_ratio", 0.0, "number", "cosine decays to `lr * min_lr_ratio`",
       [](TrainOptions& o, const json& v, const std::string& k) {
         o.min_lr_ratio = read_number(v, k, R::kNonNegative);
         if (o.min_lr_ratio > 1) key_error(k, " must be in [0, 1]");
       }},
      {"train.warmup_ratio", 0.03, "number", "linear warmup over this fraction of the steps", SL_NUM(warmup_ratio, R::kUnit)},
      {"train.weight_decay", 0.0, "number", "AdamW decay, matrices only", SL_NUM(weight_decay, R::kNonNegative)},
      {"train.beta1", 0.9, "number", "AdamW β1", SL_NUM(beta1, R::kUnit)},
      {"train.beta2", 0.999, "number", "AdamW β2", SL_NUM(beta2, R::kUnit)},
      {"train.eps", 1e-8, "number", "AdamW ε", SL_NUM(adam_eps, R::kPositive)},
      {"train.clip", 1.0, "number", "global gradient-norm clip (0 = none; the norm is still logged)", SL_NUM(clip, R::kNonNegative)},
      {"train.epochs", 0, "int", "0 = the method's default: 2 (the paper), 1 for `ict`", SL_INT(epochs, R::kNonNegative)},
      {"train.max_steps", 0, "int", "> 0: train exactly this many steps (overrides epochs)", SL_INT(max_steps, R::kNonNegative)},
      {"train.seed", 42, "int", "data order, split, exit sampling, `init` weights",
       [](TrainOptions& o, const json& v, const std::string& k) { o.seed = (uint64_t)read_int(v, k, R::kNonNegative); }},
      {"train.recipe", "soft", "string",
       "preset of the six keys below: `soft` (the paper), `layerskip`, `lite`, `anchored` (README, Training recipes); "
       "keys set in the config or by `--set` override it",
       [](TrainOptions& o, const json& v, const std::string& k) { o.recipe = read_choice(v, k, recipe_names()); }},
      {"train.exit_scale", "uniform", "string",
       "exit loss weights, normalised to sum to 1: `uniform`, `linear` (∝ exit layer), `sqrt`, `inverse` (∝ 1/layer), "
       "`last` (`train.exit_scale_last` on the last exit); a non-empty `exit_weights` replaces it",
       [](TrainOptions& o, const json& v, const std::string& k) {
         const std::string s = read_choice(v, k, {"uniform", "linear", "sqrt", "inverse", "last"});
         o.exit_scale = s == "linear"    ? ExitScale::kLinear
                        : s == "sqrt"    ? ExitScale::kSqrt
                        : s == "inverse" ? ExitScale::kInverse
                        : s == "last"    ? ExitScale::kLast
                                         : ExitScale::kUniform;
       }},
      {"train.exit_scale_last", 0.5, "number", "`last`: the last exit's share of the loss, in (0, 1]; the other exits split the rest",
       [](TrainOptions& o, const json& v, const std::string& k) {
         o.exit_scale_last = read_number(v, k, R::kPositive);
         if (o.exit_scale_last > 1) key_error(k, " must be in (0, 1], got " + v.dump());
       }},
      {"train.curriculum", "none", "string",
       "exits trained per step: `none` (all), `rotational` (every `train.curriculum_period`-th exit, shifting by one "
       "per step, LayerSkip), `gradual` (from the last exit down, one more every steps/exits steps); the last exit always",
       [](TrainOptions& o, const json& v, const std::string& k) {
         const std::string s = read_choice(v, k, {"none", "rotational", "gradual"});
         o.curriculum = s == "rotational" ? Curriculum::kRotational : s == "gradual" ? Curriculum::kGradual : Curriculum::kNone;
       }},
      {"train.curriculum_period", 2, "int", "`rotational`: one exit in this many trains per step", SL_INT(curriculum_period, R::kPositive)},
      {"train.layer_dropout", 0.0, "number",
       "training only: probability in [0, 1) that a sequence skips the last layer (its residual passes through), "
       "per sequence, layer and step, seeded; never in validation, `eval` or decoding",
       SL_NUM(layer_dropout, R::kUnit)},
      {"train.layer_dropout_schedule", "exp", "string",
       "rate of 0-based layer l of L: `linear` rate·l/(L−1), `exp` rate·(2^(l/(L−1))−1) (LayerSkip); 0 at the first layer",
       [](TrainOptions& o, const json& v, const std::string& k) {
         o.layer_dropout_schedule = read_choice(v, k, {"linear", "exp"}) == "linear" ? DropSchedule::kLinear : DropSchedule::kExp;
       }},
      {"train.loss_chunk", 0, "int",
       "positions whose logits exist at once per exit; 0 = auto (about 64 MiB of fp32 logits: 524 positions for a "
       "32000-token vocabulary)",
       SL_INT(loss_chunk, R::kNonNegative)},
      {"train.skip_nonfinite", false, "bool",
       "a step whose loss or gradient norm is NaN/Inf is skipped (no update, logged); false: the run stops there with "
       "an error, and the newest checkpoint stays the last good one",
       SL_BOOL(skip_nonfinite)},
      {"train.checkpoint_activations", false, "bool", "recompute each layer in the backward pass (memory for big models)",
       SL_BOOL(checkpoint_activations)},
      {"train.precision", "fp32", "string",
       "`fp32`, or `bf16`: bf16 weights and compute, fp32 master weights and AdamW moments; checkpoints saved in BF16",
       [](TrainOptions& o, const json& v, const std::string& k) {
         o.precision = read_choice(v, k, {"fp32", "bf16"}) == "bf16" ? Precision::kBf16 : Precision::kFp32;
       }},
      {"dist.zero_stage", 0, "int",
       "`0`: every rank holds the whole optimizer; `2`: optimizer state and gradients sharded over ranks (ZeRO-2)",
       [](TrainOptions& o, const json& v, const std::string& k) {
         o.zero_stage = read_int(v, k, R::kNonNegative);
         if (o.zero_stage != 0 && o.zero_stage != 2)
           key_error(k, ": " + std::to_string(o.zero_stage) +
                            " is not supported (0: replicated optimizer, 2: sharded optimizer state and gradients)");
       }},
      {"dist.timeout_s", 600, "int",
       "a collective (or the rendezvous) waiting longer than this fails: a hung rank cannot hang the others forever",
       SL_INT(dist_timeout_s, R::kPositive)},
      {"dist.bucket_mb", 25.0, "number", "gradients per collective (MiB of fp32; at least one tensor)", SL_NUM(bucket_mb, R::kPositive)},
      {"log.every", 10, "int", "steps per log line (a live line on a TTY)", SL_INT(log_every, R::kPositive)},
      {"log.eval_every", 0, "int", "steps between validation runs (0 = only at the end)", SL_INT(eval_every, R::kNonNegative)},
      {"save.every", 0, "int", "steps between checkpoints (0 = only `final/`)", SL_INT(save_every, R::kNonNegative)},
      {"save.keep_last", 2, "int", "step checkpoints kept", SL_INT(keep_last, R::kPositive)},
  };
  return table;
}

#undef SL_INT
#undef SL_NUM
#undef SL_STR
#undef SL_BOOL

json::json_pointer pointer(const std::string& dotted) {
  std::string p = "/" + dotted;
  std::replace(p.begin(), p.end(), '.', '/');
  return json::json_pointer(p);
}

// Rules that tie keys together.
void check_combinations(TrainOptions& o) {
  if (o.model.empty() == o.init.is_null())
    throw std::runtime_error("config needs exactly one of \"model\" (an HF directory) and \"init\" (an HF config object)");
  if (o.tokenizer.empty() && !o.init.is_null())
    throw std::runtime_error("config key \"tokenizer\" is required with \"init\" (a new model has no tokenizer)");
  if (o.method == Method::kExtracted && o.extract_layers == 0)
    throw std::runtime_error("config key \"extract_layers\" must be set (> 0) for method \"extracted\"");
  if (o.exit_sample > 0 && o.curriculum != Curriculum::kNone)
    throw std::runtime_error("config keys \"exit_sample\" and \"train.curriculum\" exclude each other (both choose the step's exits)");
  if (!o.valid_file.empty() && o.valid_fraction > 0)
    throw std::runtime_error("config keys \"data.valid\" and \"data.valid_fraction\" exclude each other");
  if (o.epochs == 0) o.epochs = o.method == Method::kIct ? 1 : 2;  // the paper: 2 epochs; ICT heads: 1
}
}  // namespace

const char* method_name(Method m) {
  switch (m) {
    case Method::kSoft: return "soft";
    case Method::kSft: return "sft";
    case Method::kIct: return "ict";
    case Method::kExtracted: return "extracted";
  }
  return "?";
}

json default_train_config() {
  json cfg = json::object();
  for (const Key& k : keys()) cfg[pointer(k.name)] = k.value;
  return cfg;
}

std::string train_config_reference() {
  std::string s = "| key | type | default | meaning |\n|---|---|---|---|\n";
  for (const Key& k : keys()) s += std::string("| `") + k.name + "` | " + k.type + " | `" + k.value.dump() + "` | " + k.doc + " |\n";
  return s;
}

TrainOptions parse_train_options(const json& c) {
  TrainOptions o;
  for (const Key& k : keys()) k.read(o, c.at(pointer(k.name)), k.name);
  check_combinations(o);
  return o;
}

namespace {
// Merges `src` into `dst`, rejecting keys the defaults do not know. `init` is free-form (an HF
// config, validated by ModelConfig).
void merge(nlohmann::json& dst, const nlohmann::json& src, const std::string& prefix, const std::string& source) {
  if (!src.is_object()) throw std::runtime_error(source + ": \"" + prefix + "\" must be an object");
  for (auto& [k, v] : src.items()) {
    const std::string key = prefix.empty() ? k : prefix + "." + k;
    if (!dst.contains(k)) throw std::runtime_error(source + ": unknown key \"" + key + "\"");
    if (key == "init") {
      dst[k] = v;
    } else if (dst[k].is_object()) {
      merge(dst[k], v, key, source);
    } else {
      const auto& d = dst[k];
      const bool same = d.type() == v.type() || (d.is_number() && v.is_number()) ||
                        (key == "exits" && (v.is_string() || v.is_array()));
      if (!same)
        throw std::runtime_error(source + ": key \"" + key + "\" must be " + d.type_name() + ", got " + v.type_name());
      dst[k] = v;
    }
  }
}
}  // namespace

void apply_override(nlohmann::json& cfg, const std::string& assignment) {
  const size_t eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    throw std::runtime_error("--set " + assignment + ": expected key=value (e.g. train.lr=1e-4)");
  const std::string key = assignment.substr(0, eq), value = assignment.substr(eq + 1);
  nlohmann::json* node = &cfg;
  std::stringstream path(key);
  std::string part;
  std::vector<std::string> parts;
  while (std::getline(path, part, '.')) parts.push_back(part);
  for (size_t i = 0; i < parts.size(); ++i) {
    const bool in_init = !parts.empty() && parts[0] == "init" && i > 0;
    if (!node->is_object() || (!node->contains(parts[i]) && !in_init))
      throw std::runtime_error("--set " + key + ": unknown key \"" + key + "\"");
    node = &(*node)[parts[i]];
  }
  const std::string bad = "--set " + key + ": \"" + value + "\" is not ";
  // The new value takes the type of the old one; strings stay strings.
  try {
    if (node->is_boolean()) {
      if (value != "true" && value != "false") throw std::runtime_error(bad + "true or false");
      *node = value == "true";
    } else if (node->is_number_integer() || node->is_number_unsigned()) {
      size_t used = 0;
      long long v = std::stoll(value, &used);
      if (used != value.size()) throw std::invalid_argument("trailing");
      *node = v;
    } else if (node->is_number_float()) {
      size_t used = 0;
      double v = std::stod(value, &used);
      if (used != value.size()) throw std::invalid_argument("trailing");
      *node = v;
    } else if (node->is_array()) {  // comma-separated numbers, e.g. exit_weights=1,1,2
      nlohmann::json arr = nlohmann::json::array();
      std::stringstream ss(value);
      for (std::string item; std::getline(ss, item, ',');) {
        size_t used = 0;
        double v = std::stod(item, &used);
        if (used != item.size()) throw std::invalid_argument("trailing");
        arr.push_back(v);
      }
      *node = arr;
    } else if (node->is_string() || node->is_null()) {
      *node = value;
    } else {
      throw std::runtime_error("--set " + key + ": cannot override an object; set its keys");
    }
  } catch (const std::invalid_argument&) {
    throw std::runtime_error(bad + (node->is_number_integer() || node->is_number_unsigned() ? std::string("an integer")
                                                                                           : std::string("a ") + node->type_name()));
  } catch (const std::out_of_range&) {
    throw std::runtime_error(bad + "in range");
  }
}

void apply_recipe(nlohmann::json& cfg, const std::string& name) {
  const std::string key = "train.recipe";
  const std::string known = read_choice(name, key, recipe_names());
  for (const Recipe& r : recipes())
    if (r.name == known) {
      cfg["train"]["recipe"] = known;
      for (const auto& [k, v] : r.preset.items()) cfg["train"][k] = v;
    }
}

namespace {
// The recipe a config asks for: the last --set train.recipe=..., else the file's, else the default.
std::string requested_recipe(const nlohmann::json& file, const std::vector<std::string>& overrides) {
  std::string name = default_train_config()["train"]["recipe"].get<std::string>();
  if (file.is_object() && file.contains("train") && file["train"].is_object() && file["train"].contains("recipe") &&
      file["train"]["recipe"].is_string())
    name = file["train"]["recipe"].get<std::string>();
  const std::string prefix = "train.recipe=";
  for (const auto& o : overrides)
    if (o.rfind(prefix, 0) == 0) name = o.substr(prefix.size());
  return name;
}
}  // namespace

// Layers, lowest first: defaults, the recipe's presets, the file, the overrides.
nlohmann::json resolve_train_config(const std::string& path, const std::vector<std::string>& overrides) {
  nlohmann::json cfg = default_train_config();
  const nlohmann::json file = path.empty() ? nlohmann::json::object() : read_json_file(path);
  apply_recipe(cfg, requested_recipe(file, overrides));
  if (!path.empty()) merge(cfg, file, "", path);
  for (const auto& o : overrides) apply_override(cfg, o);
  return cfg;
}

}  // namespace sl
