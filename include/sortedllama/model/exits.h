// Exit sets: which sub-models (first k layers + shared final norm + shared head) to run.
#pragma once
#include <string>
#include <vector>

namespace sl {

// "12,16,20", "all" (every layer), or "auto": 8 exits evenly spaced from 30% of the depth to the
// last layer, rounded (12,16,...,40 for 40 layers; every layer below 8 layers; exits that round
// to the same layer are merged). Sorted, unique, each in [1, n_layers]; throws naming the bad value.
std::vector<int> parse_exits(const std::string& spec, int n_layers);
// The same layers in the order the spec lists them, repeats kept (to pair them with per-exit values).
std::vector<int> parse_exits_in_order(const std::string& spec, int n_layers);
std::string format_exits(const std::vector<int>& exits);
// Exits below the last layer for early exit or drafting: `given`, or the "auto" set's when empty;
// throws std::invalid_argument naming `what` unless they increase within 1..n_layers-1.
std::vector<int> early_exits(const std::vector<int>& given, int n_layers, const std::string& what);

}  // namespace sl
