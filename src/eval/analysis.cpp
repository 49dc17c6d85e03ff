// eval --task analysis (the paper's section 4.4): how far each exit's predictions and hidden states
// are from the last layer's, along the full model's own greedy generations.
#include <spdlog/spdlog.h>

#include "sortedllama/data/examples.h"
#include "sortedllama/eval/tasks.h"
#include "sortedllama/model/objective.h"

namespace sl {

namespace {
namespace F = torch::nn::functional;

// KL(p || q) per row from log-probabilities [M,V] -> [M] (fp32).
torch::Tensor kl_rows(const torch::Tensor& logp, const torch::Tensor& logq) {
  return (logp.exp() * (logp - logq)).sum(-1);
}

struct Sums {
  std::vector<double> kl, kl_ref, cos;
  std::vector<int64_t> n;
  explicit Sums(int64_t positions) : kl(positions), kl_ref(positions), cos(positions), n(positions) {}
};

// Per position: mean over the instructions that reached it. Overall: mean over all pairs.
TaskResult analysis_rows(const std::vector<Sums>& sums, const std::vector<int>& exits, int64_t positions,
                         int64_t n_items, bool reference) {
  TaskResult r("analysis", n_items, n_items);
  r.extra["positions"] = positions;
  r.extra["kl"] = "KL(p_last || p_exit), nats";
  for (size_t e = 0; e < exits.size(); ++e) {
    const Sums& s = sums[e];
    ojson kl = ojson::array(), cos = ojson::array(), klr = ojson::array();
    double tkl = 0, tcos = 0, tklr = 0;
    int64_t tn = 0;
    for (int64_t i = 0; i < positions; ++i) {
      const double n = (double)std::max<int64_t>(1, s.n[i]);
      kl.push_back(s.kl[i] / n);
      cos.push_back(s.cos[i] / n);
      klr.push_back(s.kl_ref[i] / n);
      tkl += s.kl[i];
      tcos += s.cos[i];
      tklr += s.kl_ref[i];
      tn += s.n[i];
    }
    const double n = (double)std::max<int64_t>(1, tn);
    ResultRow row(std::to_string(exits[e]), exits[e], ojson{{"kl", tkl / n}, {"cosine", tcos / n}});
    if (reference) row.metrics["kl_reference"] = tklr / n;
    row.metrics["positions_scored"] = tn;
    row.metrics["kl_by_position"] = kl;
    row.metrics["cosine_by_position"] = cos;
    if (reference) row.metrics["kl_reference_by_position"] = klr;
    r.rows.push_back(std::move(row));
  }
  return r;
}
}  // namespace

TaskResult eval_analysis(Llama& model, const Tokenizer& tok, const std::vector<Instruction>& items,
                         const std::vector<int>& exits, int64_t positions, int64_t batch_size, Llama* reference) {
  torch::NoGradGuard no_grad;
  const auto& cfg = model->config();
  const int L = (int)cfg.n_layers;
  if (reference && (*reference)->config().vocab_size != cfg.vocab_size)
    throw std::runtime_error("--reference has " + std::to_string((*reference)->config().vocab_size) +
                             " vocabulary rows, the model " + std::to_string(cfg.vocab_size) +
                             ": their distributions cannot be compared");
  std::vector<std::vector<int>> prompts;
  for (const auto& it : items) prompts.push_back(tok.encode(alpaca_prompt(it.instruction, it.input), /*bos=*/true));
  EvalGenOptions o;
  o.decode = DecodeMode::kFull;
  o.max_new_tokens = positions;
  o.batch_size = batch_size;
  o.eos_id = cfg.eos_id;
  o.vocab_limit = tok.vocab_size();
  Progress progress("analysis", 2 * (int64_t)items.size());
  o.on_batch = [&](int64_t n) { progress.add(n); };
  const std::vector<Generation> gens = eval_generate(model, prompts, {}, o)[0].gens;

  std::vector<int> run = exits;  // every exit, then the last layer (the target)
  run.push_back(L);
  std::vector<Sums> sums(exits.size(), Sums(positions));
  auto dev = model->device();
  for (size_t start = 0; start < items.size(); start += (size_t)batch_size) {
    const size_t end = std::min(items.size(), start + (size_t)batch_size);
    const int64_t B = (int64_t)(end - start);
    // Right-padded prompt + generation; position p-1+i predicted generated token i (or EOS after them).
    std::vector<std::vector<int>> seqs;
    std::vector<int64_t> row_idx, pos_idx, which;  // gathered (row, slot) pairs and their generated position
    for (int64_t b = 0; b < B; ++b) {
      seqs.push_back(prompts[start + b]);
      seqs.back().insert(seqs.back().end(), gens[start + b].tokens.begin(), gens[start + b].tokens.end());
      const int64_t p = (int64_t)prompts[start + b].size();
      const int64_t count = std::min<int64_t>(positions, (int64_t)gens[start + b].tokens.size() + 1);
      for (int64_t i = 0; i < count; ++i) {
        row_idx.push_back(b);
        pos_idx.push_back(p - 1 + i);
        which.push_back(i);
      }
    }
    std::vector<LabeledSequence> group;
    for (const auto& sq : seqs) group.push_back({&sq});
    const Batch batch = right_padded_batch(group, dev);
    const torch::Tensor& tokens = batch.tokens;
    const torch::Tensor& mask = batch.key_mask;
    torch::Tensor ri = torch::tensor(row_idx).to(dev), pi = torch::tensor(pos_idx).to(dev);
    auto gather = [&](const torch::Tensor& h) { return h.index({ri, pi}); };  // [B,T,D] -> [M,D]
    std::vector<torch::Tensor> hidden = model->forward(tokens, run, mask);
    torch::Tensor h_last = gather(hidden.back());                                  // [M,D]
    torch::Tensor logp_last = torch::log_softmax(model->head(h_last, L).to(torch::kFloat32), -1);  // [M,V]
    torch::Tensor logp_ref;
    if (reference) {
      Llama& ref = *reference;
      const int Lr = (int)ref->config().n_layers;
      torch::Tensor h_ref = ref->forward(tokens, {Lr}, mask)[0].index({ri, pi});  // [M,D]
      logp_ref = torch::log_softmax(ref->head(h_ref, Lr).to(torch::kFloat32), -1);   // [M,V]
    }
    for (size_t e = 0; e < exits.size(); ++e) {
      torch::Tensor h = gather(hidden[e]);                                                       // [M,D]
      torch::Tensor logp = torch::log_softmax(model->head(h, exits[e]).to(torch::kFloat32), -1);     // [M,V]
      torch::Tensor kl = kl_rows(logp_last, logp).to(torch::kCPU).to(torch::kFloat64);           // [M]
      torch::Tensor cos = F::cosine_similarity(h.to(torch::kFloat32), h_last.to(torch::kFloat32),
                                                F::CosineSimilarityFuncOptions().dim(-1))
                              .to(torch::kCPU).to(torch::kFloat64);                              // [M]
      torch::Tensor klr = reference ? kl_rows(logp_ref, logp).to(torch::kCPU).to(torch::kFloat64) : torch::zeros_like(kl);
      auto kla = kl.accessor<double, 1>(), cosa = cos.accessor<double, 1>(), klra = klr.accessor<double, 1>();
      Sums& s = sums[e];
      for (size_t m = 0; m < which.size(); ++m) {
        s.kl[which[m]] += kla[m];
        s.cos[which[m]] += cosa[m];
        s.kl_ref[which[m]] += klra[m];
        s.n[which[m]] += 1;
      }
    }
    progress.add(B);
  }

  return analysis_rows(sums, exits, positions, (int64_t)items.size(), reference != nullptr);
}

}  // namespace sl
