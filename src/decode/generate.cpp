#include "sortedllama/decode/generate.h"

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

}  // namespace sl
