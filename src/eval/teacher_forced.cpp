#include "sortedllama/eval/teacher_forced.h"

#include "sortedllama/decode/sampling.h"

namespace sl {

using torch::Tensor;

std::vector<ExitPredictions> teacher_forced(Llama& model, const std::vector<int>& prompt, const Generation& continuation,
                                            const std::vector<int>& exits, int64_t vocab_limit) {
  torch::NoGradGuard no_grad;
  std::vector<ExitPredictions> out(exits.size());
  const int64_t P = (int64_t)prompt.size();
  const int64_t n = (int64_t)continuation.tokens.size() + (continuation.finish_reason == "eos");
  if (n == 0) return out;
  std::vector<int64_t> ids(prompt.begin(), prompt.end());
  ids.insert(ids.end(), continuation.tokens.begin(), continuation.tokens.end());
  const Tensor tokens = torch::tensor(ids, torch::kInt64).unsqueeze(0).to(model->device());  // [1,P+tokens]
  const std::vector<Tensor> hidden = model->forward(tokens, exits);                          // [1,P+tokens,D] each
  SamplingParams sp;
  sp.vocab_limit = vocab_limit;
  for (size_t e = 0; e < exits.size(); ++e) {
    const Tensor logits = decodable_logits(model->head(hidden[e][0].narrow(0, P - 1, n), exits[e]), sp)
                              .to(torch::kFloat32)
                              .to(torch::kCPU);                                             // [n,V']
    const Tensor top = std::get<0>(logits.softmax(-1).topk(std::min<int64_t>(2, logits.size(1)), -1)).contiguous();  // [n,<=2]
    const Tensor token = logits.argmax(-1).contiguous();                                    // [n]
    const auto p = top.accessor<float, 2>();
    const auto t = token.accessor<int64_t, 1>();
    for (int64_t i = 0; i < n; ++i) {
      out[e].token.push_back((int)t[i]);
      out[e].top1.push_back(p[i][0]);
      out[e].top2.push_back(top.size(1) > 1 ? p[i][1] : 0.0f);
    }
  }
  return out;
}

}  // namespace sl
