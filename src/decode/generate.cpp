#include "sortedllama/decode/generate.h"

#include <stdexcept>

#include "strategies.h"

namespace sl {

std::vector<Generation> generate(Llama& model, const std::vector<std::vector<int>>& prompts, const DecodeOptions& opt,
                                 DecodeStats* stats) {
  torch::NoGradGuard no_grad;
  const DecodeOptions o = opt.resolved((int)model->config().n_layers);
  DecodeStats st;
  st.strategy = o.strategy;
  std::vector<Generation> out;
  switch (o.strategy) {
    case Strategy::kPlain: out = generate_plain(model, prompts, o, st); break;
    case Strategy::kSpeculative: out = generate_speculative(model, prompts, o, st); break;
    case Strategy::kDynamic: out = generate_dynamic(model, prompts, o, st); break;
  }
  if (stats) stats->merge(st);
  return out;
}

std::vector<Generation> generate_in_batches(Llama& model, const std::vector<std::vector<int>>& prompts,
                                            const DecodeOptions& opt, int64_t batch_size, DecodeStats* stats) {
  if (batch_size < 1) throw std::invalid_argument("batch size must be at least 1");
  std::vector<Generation> out;
  for (size_t s = 0; s < prompts.size(); s += (size_t)batch_size) {
    const auto first = prompts.begin() + (std::ptrdiff_t)s;
    const std::vector<std::vector<int>> batch(first, first + (std::ptrdiff_t)std::min(prompts.size() - s, (size_t)batch_size));
    for (auto& g : generate(model, batch, opt, stats)) out.push_back(std::move(g));
  }
  return out;
}

}  // namespace sl
