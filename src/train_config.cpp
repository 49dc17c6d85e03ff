#include "sortedllama/train_config.h"

#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace sl {

nlohmann::json default_train_config() {
  return nlohmann::json::parse(R"({
    "model": "",
    "init": null,
    "tokenizer": "",
    "method": "soft",
    "exits": "auto",
    "exit_weights": [],
    "exit_sample": 0,
    "extract_layers": 0,
    "out_dir": "runs/finetune",
    "data": {
      "train": "",
      "valid": "",
      "valid_fraction": 0.0,
      "format": "alpaca",
      "max_seq_len": 512,
      "train_on_prompt": false,
      "on_bad_record": "fail",
      "answer_alias": 0,
      "group_by_length": false
    },
    "train": {
      "batch_size": 4,
      "grad_accum": 1,
      "lr": 2e-5,
      "min_lr_ratio": 0.0,
      "warmup_ratio": 0.03,
      "weight_decay": 0.0,
      "beta1": 0.9,
      "beta2": 0.999,
      "eps": 1e-8,
      "clip": 1.0,
      "epochs": 0,
      "max_steps": 0,
      "seed": 42,
      "loss_chunk": 0,
      "checkpoint_activations": false,
      "precision": "fp32"
    },
    "dist": {"zero_stage": 0, "timeout_s": 600, "bucket_mb": 25.0},
    "log": {"every": 10, "eval_every": 0},
    "save": {"every": 0, "keep_last": 2}
  })");
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
    throw std::runtime_error(bad + std::string("a ") + node->type_name());
  } catch (const std::out_of_range&) {
    throw std::runtime_error(bad + "in range");
  }
}

nlohmann::json resolve_train_config(const std::string& path, const std::vector<std::string>& overrides) {
  nlohmann::json cfg = default_train_config();
  if (!path.empty()) {
    std::ifstream f(path);
    if (!f) throw std::runtime_error("cannot open config " + path);
    nlohmann::json user;
    try {
      user = nlohmann::json::parse(f);
    } catch (const nlohmann::json::parse_error& e) {
      throw std::runtime_error(path + ": malformed JSON: " + e.what());
    }
    merge(cfg, user, "", path);
  }
  for (const auto& o : overrides) apply_override(cfg, o);
  return cfg;
}

namespace {
template <typename T>
T positive(const nlohmann::json& cfg, const nlohmann::json::json_pointer& ptr, const std::string& key) {
  T v = cfg.at(ptr).get<T>();
  if (!(v > 0)) throw std::runtime_error("config key \"" + key + "\" must be positive, got " + cfg.at(ptr).dump());
  return v;
}
template <typename T>
T non_negative(const nlohmann::json& cfg, const nlohmann::json::json_pointer& ptr, const std::string& key) {
  T v = cfg.at(ptr).get<T>();
  if (v < 0) throw std::runtime_error("config key \"" + key + "\" must not be negative, got " + cfg.at(ptr).dump());
  return v;
}
using ptr = nlohmann::json::json_pointer;
}  // namespace

TrainOptions parse_train_options(const nlohmann::json& c) {
  namespace fs = std::filesystem;
  TrainOptions o;
  o.model = c["model"].get<std::string>();
  o.init = c["init"];
  if (o.model.empty() == o.init.is_null())
    throw std::runtime_error("config needs exactly one of \"model\" (an HF directory) and \"init\" (an HF config object)");
  if (!o.model.empty() && !fs::is_directory(o.model))
    throw std::runtime_error("config key \"model\": " + o.model + " is not a directory");
  if (!o.init.is_null() && !o.init.is_object()) throw std::runtime_error("config key \"init\" must be an object");
  o.tokenizer = c["tokenizer"].get<std::string>();
  if (!o.tokenizer.empty() && !fs::exists(o.tokenizer))
    throw std::runtime_error("config key \"tokenizer\": " + o.tokenizer + " does not exist");
  if (o.tokenizer.empty() && !o.init.is_null())
    throw std::runtime_error("config key \"tokenizer\" is required with \"init\" (a new model has no tokenizer)");
  o.method = c["method"].get<std::string>();
  if (o.method != "soft" && o.method != "sft" && o.method != "ict" && o.method != "extracted")
    throw std::runtime_error("config key \"method\": \"" + o.method + "\" is not one of soft, sft, ict, extracted");
  if (c["exits"].is_array()) {
    for (auto& e : c["exits"]) {
      if (!e.is_number_integer()) throw std::runtime_error("config key \"exits\" must hold layer numbers");
      o.exits += (o.exits.empty() ? "" : ",") + std::to_string(e.get<int>());
    }
  } else {
    o.exits = c["exits"].get<std::string>();
  }
  for (auto& w : c["exit_weights"]) {
    if (!w.is_number() || !(w.get<double>() > 0))
      throw std::runtime_error("config key \"exit_weights\" must hold positive numbers, got " + w.dump());
    o.exit_weights.push_back(w.get<double>());
  }
  o.exit_sample = non_negative<int64_t>(c, ptr("/exit_sample"), "exit_sample");
  o.extract_layers = non_negative<int64_t>(c, ptr("/extract_layers"), "extract_layers");
  if (o.method == "extracted" && o.extract_layers == 0)
    throw std::runtime_error("config key \"extract_layers\" must be set (> 0) for method \"extracted\"");
  o.out_dir = c["out_dir"].get<std::string>();
  if (o.out_dir.empty()) throw std::runtime_error("config key \"out_dir\" is empty");

  const auto& d = c["data"];
  o.train_file = d["train"].get<std::string>();
  if (o.train_file.empty()) throw std::runtime_error("config key \"data.train\" is required");
  if (!fs::exists(o.train_file)) throw std::runtime_error("config key \"data.train\": " + o.train_file + " does not exist");
  o.valid_file = d["valid"].get<std::string>();
  if (!o.valid_file.empty() && !fs::exists(o.valid_file))
    throw std::runtime_error("config key \"data.valid\": " + o.valid_file + " does not exist");
  o.valid_fraction = d["valid_fraction"].get<double>();
  if (o.valid_fraction < 0 || o.valid_fraction >= 1)
    throw std::runtime_error("config key \"data.valid_fraction\" must be in [0, 1)");
  if (!o.valid_file.empty() && o.valid_fraction > 0)
    throw std::runtime_error("config keys \"data.valid\" and \"data.valid_fraction\" exclude each other");
  o.data.format = d["format"].get<std::string>();
  o.data.max_seq_len = positive<int64_t>(c, ptr("/data/max_seq_len"), "data.max_seq_len");
  o.data.train_on_prompt = d["train_on_prompt"].get<bool>();
  o.data.on_bad_record = d["on_bad_record"].get<std::string>();
  o.data.answer_alias = (int)non_negative<int64_t>(c, ptr("/data/answer_alias"), "data.answer_alias");
  o.group_by_length = d["group_by_length"].get<bool>();

  o.batch_size = positive<int64_t>(c, ptr("/train/batch_size"), "train.batch_size");
  o.grad_accum = positive<int64_t>(c, ptr("/train/grad_accum"), "train.grad_accum");
  o.lr = positive<double>(c, ptr("/train/lr"), "train.lr");
  o.min_lr_ratio = non_negative<double>(c, ptr("/train/min_lr_ratio"), "train.min_lr_ratio");
  if (o.min_lr_ratio > 1) throw std::runtime_error("config key \"train.min_lr_ratio\" must be in [0, 1]");
  o.warmup_ratio = non_negative<double>(c, ptr("/train/warmup_ratio"), "train.warmup_ratio");
  if (o.warmup_ratio >= 1) throw std::runtime_error("config key \"train.warmup_ratio\" must be below 1");
  o.weight_decay = non_negative<double>(c, ptr("/train/weight_decay"), "train.weight_decay");
  o.beta1 = non_negative<double>(c, ptr("/train/beta1"), "train.beta1");
  o.beta2 = non_negative<double>(c, ptr("/train/beta2"), "train.beta2");
  if (o.beta1 >= 1 || o.beta2 >= 1) throw std::runtime_error("config keys \"train.beta1\" and \"train.beta2\" must be below 1");
  o.adam_eps = positive<double>(c, ptr("/train/eps"), "train.eps");
  o.clip = non_negative<double>(c, ptr("/train/clip"), "train.clip");
  o.epochs = non_negative<int64_t>(c, ptr("/train/epochs"), "train.epochs");
  if (o.epochs == 0) o.epochs = o.method == "ict" ? 1 : 2;  // the paper: 2 epochs; ICT heads: 1
  o.max_steps = non_negative<int64_t>(c, ptr("/train/max_steps"), "train.max_steps");
  o.seed = c["train"]["seed"].get<uint64_t>();
  o.loss_chunk = non_negative<int64_t>(c, ptr("/train/loss_chunk"), "train.loss_chunk");  // 0 = auto (train.cpp)
  o.checkpoint_activations = c["train"]["checkpoint_activations"].get<bool>();
  o.precision = c["train"]["precision"].get<std::string>();
  if (o.precision != "fp32" && o.precision != "bf16")
    throw std::runtime_error("config key \"train.precision\": \"" + o.precision + "\" is not one of fp32, bf16");

  o.zero_stage = non_negative<int64_t>(c, ptr("/dist/zero_stage"), "dist.zero_stage");
  if (o.zero_stage != 0 && o.zero_stage != 2)
    throw std::runtime_error("config key \"dist.zero_stage\": " + std::to_string(o.zero_stage) +
                             " is not supported (0: replicated optimizer, 2: sharded optimizer state and gradients)");
  o.dist_timeout_s = positive<int64_t>(c, ptr("/dist/timeout_s"), "dist.timeout_s");
  o.bucket_mb = positive<double>(c, ptr("/dist/bucket_mb"), "dist.bucket_mb");

  o.log_every = positive<int64_t>(c, ptr("/log/every"), "log.every");
  o.eval_every = non_negative<int64_t>(c, ptr("/log/eval_every"), "log.eval_every");
  o.save_every = non_negative<int64_t>(c, ptr("/save/every"), "save.every");
  o.keep_last = positive<int64_t>(c, ptr("/save/keep_last"), "save.keep_last");
  return o;
}

}  // namespace sl
