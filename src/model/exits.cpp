#include "sortedllama/model/exits.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <stdexcept>

namespace sl {

std::vector<int> parse_exits_in_order(const std::string& spec, int n_layers) {
  std::vector<int> exits;
  if (spec == "all" || (spec == "auto" && n_layers < 8)) {
    for (int k = 1; k <= n_layers; ++k) exits.push_back(k);
    return exits;
  }
  if (spec == "auto") {
    const double first = 0.3 * n_layers;
    for (int i = 0; i < 8; ++i) exits.push_back((int)std::lround(first + (n_layers - first) * i / 7.0));
  } else {
    std::stringstream ss(spec);
    std::string item;
    while (std::getline(ss, item, ',')) {
      size_t used = 0;
      int k = 0;
      try {
        k = std::stoi(item, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used == 0 || used != item.size())
        throw std::runtime_error("exit set \"" + spec + "\": \"" + item + "\" is not a layer number (use a list like 4,8,12, \"all\" or \"auto\")");
      if (k < 1 || k > n_layers)
        throw std::runtime_error("exit set \"" + spec + "\": layer " + std::to_string(k) +
                                 " is outside the model's 1.." + std::to_string(n_layers) + " layers");
      exits.push_back(k);
    }
    if (exits.empty()) throw std::runtime_error("exit set is empty");
  }
  return exits;
}

std::vector<int> parse_exits(const std::string& spec, int n_layers) {
  std::vector<int> exits = parse_exits_in_order(spec, n_layers);
  std::sort(exits.begin(), exits.end());
  exits.erase(std::unique(exits.begin(), exits.end()), exits.end());
  return exits;
}

std::string format_exits(const std::vector<int>& exits) {
  std::string s;
  for (size_t i = 0; i < exits.size(); ++i) s += (i ? "," : "") + std::to_string(exits[i]);
  return s;
}

std::vector<int> early_exits(const std::vector<int>& given, int n_layers, const std::string& what) {
  std::vector<int> k = given;
  if (k.empty())
    for (int e : parse_exits("auto", n_layers))
      if (e < n_layers) k.push_back(e);
  for (size_t i = 0; i < k.size(); ++i)
    if (k[i] < 1 || k[i] >= n_layers || (i > 0 && k[i] <= k[i - 1]))
      throw std::invalid_argument(what + " must increase within 1.." + std::to_string(n_layers - 1) + " (below the last layer)");
  if (k.empty()) throw std::invalid_argument("a 1-layer model has no " + what);
  return k;
}

}  // namespace sl
