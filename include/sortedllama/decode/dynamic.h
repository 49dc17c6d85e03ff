// Instance-aware dynamic inference (early exit): each token leaves at the first exit that is sure.
//
// Per token the layers run in order; after each exit layer k of the threshold set, the sub-model
// k's head (the exit's ICT head when the checkpoint has one, via model->head) gives a confidence,
// top-1 probability or top-1 minus top-2 (softmax at temperature 1, whatever the sampling settings);
// the first exit whose confidence reaches its threshold emits the token (argmax, or sampled from
// that exit's logits with the sampling settings). The last layer always accepts.
//
// Skipped layers still owe later tokens their K/V. Choice: CALM-style state copying. The exited
// hidden state h_k is the input of every deeper layer for that position: each deeper layer caches
// the K/V it would compute from h_k (LlamaImpl::layer_kv: input norm, K/V projections, rotary),
// costing two projections per skipped layer instead of a whole layer, and nothing is ever missing
// or recomputed. So a position's entries in layer i are computed from its layer-i input when it
// ran that far, and from its exit state otherwise; tests check generation against a cache-free
// recomputation with exactly these semantics. Batched: while any row still runs, a layer runs
// for the whole batch with the exited rows' input held at their exit state (their output is
// discarded; the K/V they cache are exactly the copied state's); once every row has exited, the
// remaining layers only append K/V. The prompt runs through every layer.
#pragma once
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "sortedllama/decode/batch.h"
#include "sortedllama/decode/sampling.h"

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

struct DynamicOptions : StopRule {
  SamplingParams sampling;
  uint64_t seed = 0;
  std::vector<ExitThreshold> thresholds;  // empty = default_thresholds(model depth); the last layer always exits
  Confidence confidence = Confidence::kMaxProb;
  // Called for every token chosen (EOS included): its row, exit layer and confidence there.
  std::function<void(size_t row, int exit, double confidence)> on_exit;
};

struct DynamicStats {
  int64_t prompt_tokens = 0, new_tokens = 0;
  double prefill_ms = 0, decode_ms = 0;
  std::map<int, int64_t> exit_histogram;  // exit layer -> tokens that left there
  int64_t layers_run = 0;                 // full decoder layers run, summed over tokens
  double mean_layers_per_token() const { return new_tokens ? (double)layers_run / new_tokens : 0.0; }
  double tokens_per_s() const { return decode_ms > 0 ? 1000.0 * new_tokens / decode_ms : 0.0; }
  double ms_per_token() const { return new_tokens ? (prefill_ms + decode_ms) / new_tokens : 0.0; }
};

// Same conventions as generate(): left-padded batch, per-row finish, finished rows leave.
std::vector<Generation> generate_dynamic(Llama& model, const std::vector<std::vector<int>>& prompts,
                                         const DynamicOptions& opt, DynamicStats* stats = nullptr);

}  // namespace sl
