// Pieces the generation tasks (triviaqa, instruct) share: one results row per decoder.
#pragma once
#include <vector>

#include "sortedllama/eval/generate.h"
#include "sortedllama/eval/results.h"

namespace sl {

double mean_of(const std::vector<double>& v);
// A row for one decoder's generations: plain exit k writes samples_exit<k>.jsonl, the others
// samples_<name>.jsonl.
ResultRow generation_row(const ExitGenerations& eg);
// The decoder's headline figures as table columns (new tokens, decode ms/token, acceptance,
// layers per token, speed-up and agreement with the full model) and all its statistics under
// "decoding" (DecodeStats::to_json).
void add_decode_metrics(ojson& m, const ExitGenerations& eg);
// The layers behind a sample: the sub-model for plain rows; speculative and dynamic rows emit the
// full model's tokens (verified by it, or leaving early by confidence).
ojson sample_exit_fields(const ExitGenerations& eg, int n_layers);

}  // namespace sl
