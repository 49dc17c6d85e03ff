// The strategies behind generate(); each takes options already resolved against the model.
#pragma once
#include <vector>

#include "sortedllama/decode/generate.h"

namespace sl {

std::vector<Generation> generate_plain(Llama& model, const std::vector<std::vector<int>>& prompts,
                                       const DecodeOptions& opt, DecodeStats& stats);
std::vector<Generation> generate_speculative(Llama& model, const std::vector<std::vector<int>>& prompts,
                                             const DecodeOptions& opt, DecodeStats& stats);
std::vector<Generation> generate_dynamic(Llama& model, const std::vector<std::vector<int>>& prompts,
                                         const DecodeOptions& opt, DecodeStats& stats);

}  // namespace sl
