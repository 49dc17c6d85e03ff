// Calibrated dynamic early exit: per-exit thresholds chosen by Learn then Test so that the output
// of dynamic decoding (decode/dynamic.cpp, with its state copying) agrees with the full model's
// greedy output at least `agreement` of the time, with probability at least `confidence`.
//
// The prompts are split at random (seeded) three ways:
//   path:    teacher-forced confidences of every exit on the full model's greedy continuations
//            order the candidates. A rate-r candidate lets each exit accept the tokens whose
//            confidence is at least the lowest value above which at most a fraction r of this
//            split's tokens disagreed with the full model there; r = 0 < r_1 < ... After a
//            conservative prefix (rate 0's thresholds moved towards 1), the path follows the
//            rates: most conservative first, no threshold rising along it.
//   test:    fixed-sequence testing (eval/risk_control.h): candidate j runs real dynamic decoding
//            over the split; its p-value for H0 "expected disagreement > 1 - agreement" rejects or
//            stops the walk; the last rejected candidate is chosen.
//   holdout: a held-out check of the chosen thresholds, reported only (it chooses nothing).
//
// What is guaranteed: the loss of one prompt is the fraction of output positions (of the longer
// of the two outputs) where greedy dynamic decoding's token differs from the full model's greedy
// token, or one output has ended. Given i.i.d. prompts, with probability >= confidence over the
// draw of the test split, the chosen thresholds' expected loss on a new prompt from the same
// distribution, with the same new-token budget, is at most 1 - agreement. It covers greedy decoding
// only, this checkpoint's weights, this confidence measure and max_new_tokens; not sampling, other
// prompt distributions or longer outputs, nor the mean over any particular finite set of prompts.
// When no candidate is rejected, the result is "never exit early" (every threshold above 1), which
// meets the target trivially: its output is the full model's.
#pragma once
#include <cstdint>
#include <map>
#include <vector>

#include "sortedllama/decode/generate.h"
#include "sortedllama/eval/risk_control.h"

namespace sl {

struct CalibrateOptions {
  double agreement = 0.99;     // target agreement with the full model (1 - alpha)
  double confidence = 0.95;    // probability of meeting it (1 - delta)
  double holdout = 0.2;        // fraction of the prompts held out for the reported check
  double path_fraction = 0.5;  // of the other prompts, the share that orders the candidates (the rest tests)
  int path_steps = 24;         // rates on the path (plus half as many conservative steps), before duplicates are dropped
  std::vector<int> exits;      // exits that may accept early (below the last layer); empty = "auto"
  Confidence measure = Confidence::kMaxProb;
  PValue p_value = PValue::kHoeffdingBentkus;
  int64_t max_new_tokens = 32, batch_size = 16, eos_id = 2, vocab_limit = 0;
  uint64_t seed = 0;
};

// One prompt's loss: differing positions over the longer output's length (0 when both are empty).
double disagreement(const std::vector<int>& output, const std::vector<int>& reference);

// Dynamic decoding of a set of prompts against the full model's greedy output.
struct AgreementCheck {
  int64_t prompts = 0, positions = 0;  // positions compared: the longer output's, summed
  double agreement = 0;                // 1 - mean loss over prompts: the guaranteed quantity
  double token_agreement = 0;          // agreeing positions / positions
  double identical = 0;                // fraction of outputs identical to the full model's
  double mean_layers_per_token = 0;    // decoder layers run per token (the full model: n_layers)
  double ms_per_token = 0, full_ms_per_token = 0;  // measured, dynamic and the full model's plain decoding
  std::vector<double> losses;          // per prompt
  std::map<int, int64_t> exit_histogram;
};

struct Candidate {
  double rate = 0;                        // the path parameter r (0 in the conservative prefix)
  std::vector<ExitThreshold> thresholds;  // above 1 = never exits there
  bool tested = false;
  double p_value = 1;
  AgreementCheck test;  // when tested
};

struct Calibration {
  std::vector<Candidate> path;
  int chosen = -1;                        // the last rejected candidate; -1 = none: never exit early
  std::vector<ExitThreshold> thresholds;  // the chosen candidate's
  int64_t n_path = 0, n_test = 0, n_holdout = 0;
  int64_t test_tokens = 0;                // the full model's tokens on the test split
  AgreementCheck calibration;             // the chosen thresholds on the test split
  AgreementCheck holdout;                 // the chosen thresholds on the held-out prompts
};

// Runs the procedure above on these prompts (token ids); throws std::invalid_argument naming the
// option when a setting is impossible or a split would be empty.
Calibration calibrate_dynamic(Llama& model, const std::vector<std::vector<int>>& prompts, const CalibrateOptions& opt);

// Thresholds that never accept early at these exits.
std::vector<ExitThreshold> never_exit(const std::vector<int>& exits);

}  // namespace sl
