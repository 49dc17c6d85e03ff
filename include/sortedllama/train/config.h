// finetune configuration: a nested JSON file over built-in defaults, plus --set overrides.
// Every key a config may hold appears in default_train_config(); anything else is an error.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "sortedllama/data/examples.h"
#include "sortedllama/train/recipe.h"

namespace sl {

// What a run fine-tunes: every exit with the sorted loss, the last layer only, frozen-body heads
// per exit, or the first extract_layers layers as a model of their own.
enum class Method { kSoft, kSft, kIct, kExtracted };
const char* method_name(Method m);
enum class Precision { kFp32, kBf16 };  // bf16: bf16 weights and compute, fp32 master weights and moments

// Every key a config may hold, with its default, written once (src/train/config.cpp's table).
nlohmann::json default_train_config();
// The same table as Markdown (key, default, meaning): the README's config reference.
std::string train_config_reference();

// Reads `path` (may be empty: defaults only), merges it over the defaults, then applies each
// "a.b=value" override (typed by the existing value). Throws naming the file, line or key.
nlohmann::json resolve_train_config(const std::string& path, const std::vector<std::string>& overrides);

// One "a.b=value" override applied in place.
void apply_override(nlohmann::json& cfg, const std::string& assignment);

// Sets train.recipe and the keys the named recipe presets (scales, curriculum, layer dropout).
// resolve_train_config applies it over the defaults and before the file and the overrides, so
// keys given explicitly win. Throws naming train.recipe for an unknown name.
void apply_recipe(nlohmann::json& cfg, const std::string& name);

struct TrainOptions {
  std::string model;     // HF directory to start from ("" when init is given)
  nlohmann::json init;   // HF config object for a randomly initialised model (null when model is given)
  std::string tokenizer;  // "" = MODEL/tokenizer.model
  Method method = Method::kSoft;
  std::string exits;      // exit set spec (see exits.h)
  std::vector<double> exit_weights;  // one per exit, or empty = uniform
  int64_t exit_sample = 0;           // soft: exits per step (random subset, last always in); 0 = all
  std::string recipe;                // the preset the values below started from (informational)
  ExitScale exit_scale = ExitScale::kUniform;  // used when exit_weights is empty
  double exit_scale_last = 0;                  // last: the deepest exit's share
  Curriculum curriculum = Curriculum::kNone;
  int64_t curriculum_period = 0;               // rotational: every period-th exit per step
  double layer_dropout = 0;                    // the deepest layer's skip probability in training
  DropSchedule layer_dropout_schedule = DropSchedule::kExp;
  int64_t extract_layers = 0;        // extracted: keep the first k layers
  std::string out_dir;

  DataOptions data;
  std::string train_file, valid_file;
  double valid_fraction = 0;
  bool group_by_length = false;

  int64_t batch_size = 0, grad_accum = 1, loss_chunk = 0;
  int64_t epochs = 0;     // config 0 = the method's default: 2 (the paper), 1 for ict
  int64_t max_steps = 0;  // > 0 overrides epochs
  double lr = 0, min_lr_ratio = 0, warmup_ratio = 0, weight_decay = 0, beta1 = 0, beta2 = 0, adam_eps = 0, clip = 0;
  uint64_t seed = 0;
  bool checkpoint_activations = false;
  bool skip_nonfinite = false;  // skip steps with a NaN/Inf loss or gradient norm instead of stopping
  Precision precision = Precision::kFp32;

  int64_t zero_stage = 0;      // 0: every rank holds the whole optimizer; 2: state and gradients sharded
  int64_t dist_timeout_s = 0;  // a collective waiting longer than this fails (dead or hung rank)
  double bucket_mb = 0;        // gradients per collective, MiB of fp32

  int64_t log_every = 0, eval_every = 0, save_every = 0, keep_last = 0;
};

// Typed view of a resolved config; throws naming the key when a value is impossible. Files are
// checked to exist.
TrainOptions parse_train_options(const nlohmann::json& cfg);

}  // namespace sl
