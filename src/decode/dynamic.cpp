#include "sortedllama/decode/dynamic.h"

#include <cmath>
#include <iterator>
#include <sstream>

#include "sortedllama/model/exits.h"
#include "sortedllama/util/stopwatch.h"

namespace sl {

using torch::Tensor;

std::vector<ExitThreshold> default_thresholds(int n_layers) {
  static const double paper[] = {0.95, 0.95, 0.9, 0.9, 0.8, 0.8, 0.7};  // exits 12..36 of 40 layers
  std::vector<ExitThreshold> t;
  for (int k : parse_exits("auto", n_layers))
    if (k < n_layers && t.size() < std::size(paper)) t.push_back({k, paper[t.size()]});
  return t;
}

std::vector<ExitThreshold> parse_thresholds(const std::string& spec, int n_layers) {
  std::vector<ExitThreshold> t;
  std::stringstream ss(spec);
  for (std::string item; std::getline(ss, item, ',');) {
    const size_t colon = item.find(':');
    size_t used_k = 0, used_t = 0;
    ExitThreshold e{0, 0.0};
    try {
      e.layer = std::stoi(item.substr(0, colon), &used_k);
      e.threshold = std::stod(item.substr(colon + 1), &used_t);
    } catch (const std::exception&) {
      used_k = used_t = 0;
    }
    if (colon == std::string::npos || used_k != colon || used_t == 0 || used_t != item.size() - colon - 1)
      throw std::runtime_error("thresholds \"" + spec + "\": \"" + item + "\" is not LAYER:THRESHOLD (e.g. 12:0.95)");
    if (e.layer < 1 || e.layer > n_layers)
      throw std::runtime_error("thresholds \"" + spec + "\": layer " + std::to_string(e.layer) +
                               " is outside the model's 1.." + std::to_string(n_layers) + " layers");
    if (!t.empty() && e.layer <= t.back().layer)
      throw std::runtime_error("thresholds \"" + spec + "\": layers must increase");
    if (!std::isfinite(e.threshold) || e.threshold < 0)
      throw std::runtime_error("thresholds \"" + spec + "\": \"" + item +
                               "\": a threshold is a confidence in [0, 1] (above 1: never exit there)");
    t.push_back(e);
  }
  if (t.empty()) throw std::runtime_error("thresholds are empty");
  return t;
}

Confidence parse_confidence(const std::string& name) {
  if (name == "max_prob") return Confidence::kMaxProb;
  if (name == "margin") return Confidence::kMargin;
  throw std::runtime_error("confidence \"" + name + "\" is not max_prob or margin");
}

const char* confidence_name(Confidence c) { return c == Confidence::kMargin ? "margin" : "max_prob"; }

std::string format_thresholds(const std::vector<ExitThreshold>& t) {
  std::ostringstream s;
  for (size_t i = 0; i < t.size(); ++i) s << (i ? "," : "") << t[i].layer << ":" << t[i].threshold;
  return s.str();
}

namespace {
// One position's exit decisions for every running row.
struct ExitDecider {
  Llama& model;
  const DynamicOptions& opt;
  const std::vector<double>& threshold;  // per layer 1..L; NaN = not an exit
  at::Generator& gen;
  const std::vector<int64_t>& seqs;      // batch row -> sequence index
  std::vector<int> token, exit;          // per row; exit 0 = still running
  int left;

  ExitDecider(Llama& m, const DynamicOptions& o, const std::vector<double>& t, at::Generator& g, const std::vector<int64_t>& s)
      : model(m), opt(o), threshold(t), gen(g), seqs(s), token(s.size(), -1), exit(s.size(), 0), left((int)s.size()) {}

  // Exit k's test on the running rows of x [R,D]. Returns the rows that leave here as a mask [R].
  Tensor at_exit(int k, const Tensor& x) {
    const int64_t R = x.size(0);
    const bool last = k == (int)threshold.size() - 1;
    std::vector<int64_t> running;
    for (int64_t r = 0; r < R; ++r)
      if (!exit[r]) running.push_back(r);
    Tensor idx = torch::tensor(running, torch::kInt64);
    Tensor logits = model->head((int64_t)running.size() == R ? x : x.index_select(0, idx.to(x.device())), k);  // [U,V]
    Tensor top = std::get<0>(decodable_logits(logits, opt.sampling).to(torch::kFloat32).softmax(-1).topk(2, -1)).to(torch::kCPU);  // [U,2]
    Tensor conf = opt.confidence == Confidence::kMargin ? top.select(1, 0) - top.select(1, 1) : top.select(1, 0);  // [U]
    Tensor leave = last ? torch::ones_like(conf, torch::kBool) : conf >= threshold[k];  // [U]
    Tensor sel = leave.nonzero().squeeze(1);                                            // [E] into running
    Tensor mask = torch::zeros({R}, torch::kBool);
    if (sel.numel() == 0) return mask;
    Tensor chosen = (int64_t)sel.numel() == (int64_t)running.size() ? logits : logits.index_select(0, sel.to(logits.device()));
    Tensor toks = next_tokens(chosen, opt.sampling, gen).to(torch::kCPU);  // [E]
    for (int64_t e = 0; e < sel.numel(); ++e) {
      const int64_t u = sel[e].item<int64_t>(), r = running[u];
      token[r] = (int)toks[e].item<int64_t>();
      exit[r] = k;
      mask[r].fill_(true);
      --left;
      if (opt.on_exit) opt.on_exit(seqs[r], k, conf[u].item<double>());
    }
    return mask;
  }
};
}  // namespace

std::vector<Generation> generate_dynamic(Llama& model, const std::vector<std::vector<int>>& prompts,
                                         const DynamicOptions& opt, DynamicStats* stats) {
  torch::NoGradGuard no_grad;
  const auto& cfg = model->config();
  const int L = (int)cfg.n_layers;
  std::vector<double> threshold(L + 1, std::nan(""));  // per layer; the last always accepts
  std::vector<int> exits;                              // increasing, ends with L
  for (const auto& t : opt.thresholds.empty() ? default_thresholds(L) : opt.thresholds) {
    TORCH_CHECK(t.layer >= 1 && t.layer <= L && (exits.empty() || t.layer > exits.back()),
                "threshold layers must increase within 1..", L);
    threshold[t.layer] = t.threshold;
    exits.push_back(t.layer);
  }
  if (exits.empty() || exits.back() != L) exits.push_back(L);
  std::vector<Generation> out(prompts.size());
  if (prompts.empty()) return out;

  DecodeBatch batch(model, prompts, opt.max_new_tokens);
  const int64_t P = batch.prompt_len;
  auto dev = batch.key_mask.device();
  KVCache cache = batch.make_cache(model);
  at::Generator gen = make_generator(opt.seed);

  // Emits each row's decided token; drops finished rows. Returns the running rows' tokens.
  auto finish_step = [&](const ExitDecider& d) {
    std::vector<int64_t> keep, next;
    for (size_t r = 0; r < batch.rows.size(); ++r) {
      if (stats) {
        ++stats->exit_histogram[d.exit[r]];
        stats->layers_run += d.exit[r];
      }
      if (batch.emit(out, r, d.token[r], opt)) {
        keep.push_back((int64_t)r);
        next.push_back(d.token[r]);
      }
    }
    if (stats) stats->new_tokens += (int64_t)batch.rows.size();
    batch.keep(keep, cache);
    return next;
  };

  // Prefill: the prompt through every layer; its last position takes the first exit that is sure.
  Stopwatch clock;
  std::vector<Tensor> hidden = model->forward(batch.tokens, exits, batch.key_mask.narrow(1, 0, P), &cache);  // [B,P,D] each
  ExitDecider first(model, opt, threshold, gen, batch.rows);
  for (size_t e = 0; e < exits.size() && first.left > 0; ++e) first.at_exit(exits[e], hidden[e].select(1, P - 1));
  if (stats) {
    stats->prefill_ms += clock.ms();
    stats->prompt_tokens += batch.prompt_tokens();
  }
  clock.restart();
  std::vector<int64_t> next = finish_step(first);

  for (int64_t slot = P; !batch.rows.empty(); ++slot) {
    const int64_t R = (int64_t)batch.rows.size();
    batch.key_mask.select(1, slot).fill_(1);
    AttnInputs in = model->attn_inputs(batch.key_mask.narrow(1, 0, slot + 1), R, slot, 1);
    Tensor x = model->embed(torch::tensor(next, torch::kInt64).to(dev).unsqueeze(1));  // [R,1,D]
    Tensor state = x;                                             // [R,1,D]: exited rows' exit state
    Tensor gone = torch::zeros({R, 1, 1}, torch::dtype(torch::kBool).device(dev));  // rows that exited
    ExitDecider d(model, opt, threshold, gen, batch.rows);
    for (int i = 0; i < L; ++i) {
      if (d.left == 0) {  // everyone has exited: deeper layers only need the copied state's K/V
        model->layer_kv(i, state, in, cache);
        continue;
      }
      const bool some_gone = d.left < R;
      x = model->layer(i, some_gone ? torch::where(gone, state, x) : x, in, &cache);
      if (!std::isnan(threshold[i + 1]) || i + 1 == L) {
        Tensor leave = d.at_exit(i + 1, x.select(1, 0)).to(dev).view({R, 1, 1});
        state = torch::where(leave, x, state);
        gone = gone.logical_or(leave);
      }
    }
    next = finish_step(d);
  }
  if (stats) stats->decode_ms += clock.ms();
  return out;
}

}  // namespace sl
