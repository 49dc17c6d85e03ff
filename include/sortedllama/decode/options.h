// How to decode: what every strategy shares (stop rule, sampling, seed, the sub-model that decides
// the output) and each strategy's own settings, checked in one place (DecodeOptions::resolved).
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "sortedllama/decode/batch.h"
#include "sortedllama/decode/sampling.h"
#include "sortedllama/decode/stats.h"
#include "sortedllama/model/config.h"

namespace sl {

struct ExitThreshold {
  int layer;
  double threshold;
};

// The paper's thresholds for a 40-layer model (12:0.95 ... 36:0.7), mapped in order onto the
// model's "auto" exit set below the last layer (which always accepts).
std::vector<ExitThreshold> default_thresholds(int n_layers);
// "12:0.95,16:0.9": layers in 1..n_layers, increasing (a threshold given for the last layer is
// ignored: it always accepts; above 1 = never exit there); throws naming the bad item.
std::vector<ExitThreshold> parse_thresholds(const std::string& spec, int n_layers);
std::string format_thresholds(const std::vector<ExitThreshold>& t);

// How sure an exit is: the top-1 probability, or top-1 minus top-2.
enum class Confidence { kMaxProb, kMargin };
Confidence parse_confidence(const std::string& name);  // "max_prob" | "margin"; throws naming the value
const char* confidence_name(Confidence c);

// How a layer a token skipped gets that token's K/V, which later tokens attend to: recomputed
// exactly when a later token first runs the layer (the cache stays the full model's), or copied
// from the token's exit state (CALM). See decode/dynamic.cpp.
enum class SkippedKV { kRecompute, kCopy };
SkippedKV parse_skipped_kv(const std::string& name);  // "recompute" | "copy"; throws naming the value
const char* skipped_kv_name(SkippedKV k);

struct SpeculativeParams {
  int draft_layer = 0;        // K, the drafting sub-model; 0 = the first "auto" exit
  int draft_tokens = 0;       // N per round; 0 = adaptive
  int max_draft_tokens = 16;  // upper bound of the adaptive length
  // > 0: confidence-stopped drafting instead of the adaptive length. A round drafts up to
  // draft_tokens (0: max_draft_tokens) tokens and stops after the token at which no row's draft is
  // still sure: a row stays sure while each of its drafts had a top probability (softmax of the
  // draft logits) of at least this.
  double draft_confidence = 0;
  // > 0: a draft tree. Each row also verifies this many alternatives to its chain's drafts (leaves:
  // the 2nd, 3rd... most likely draft tokens where the draft was least sure), and at its first
  // rejected draft takes an alternative the verifier agrees with. Greedy only. 0 = the chain alone.
  int tree_nodes = 0;
};

struct DynamicParams {
  std::vector<ExitThreshold> thresholds;  // empty = default_thresholds(model depth); the last layer always exits
  Confidence confidence = Confidence::kMaxProb;
  SkippedKV kv = SkippedKV::kRecompute;
  // Called for every token chosen (EOS included): its sequence, exit layer and confidence there.
  std::function<void(size_t row, int exit, double confidence)> on_exit;
};

// A checkpoint's calibrated profile (config.json "decoding.dynamic") as dynamic-exit settings.
DynamicParams dynamic_params(const DynamicProfile& profile);

struct DecodeOptions : StopRule {
  Strategy strategy = Strategy::kPlain;
  // The sub-model whose output this is: plain decodes with it, speculative verifies with it;
  // dynamic always ends at the full model. 0 = the full model.
  int exit_layer = 0;
  SamplingParams sampling;
  uint64_t seed = 0;
  SpeculativeParams speculative;  // used when strategy is kSpeculative
  DynamicParams dynamic;          // used when strategy is kDynamic

  // These options for a model of n_layers layers, with its defaults filled in (exit_layer,
  // speculative.draft_layer, dynamic.thresholds); throws std::invalid_argument naming the first
  // bad option.
  DecodeOptions resolved(int n_layers) const;
};

// Plain greedy decoding of the full model with this new-token budget and EOS, choosing only ids
// below vocab_limit (> 0; see SamplingParams).
DecodeOptions greedy_options(int64_t max_new_tokens, int64_t eos_id, int64_t vocab_limit);

}  // namespace sl
