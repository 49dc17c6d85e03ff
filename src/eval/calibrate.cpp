#include "sortedllama/eval/calibrate.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include <spdlog/spdlog.h>

#include "sortedllama/eval/teacher_forced.h"
#include "sortedllama/model/exits.h"
#include "sortedllama/util/rng.h"

namespace sl {

using torch::Tensor;

namespace {
// Positions of the longer output where the other differs or has ended.
size_t differing(const std::vector<int>& a, const std::vector<int>& b) {
  const size_t common = std::min(a.size(), b.size());
  size_t d = std::max(a.size(), b.size()) - common;
  for (size_t i = 0; i < common; ++i) d += a[i] != b[i];
  return d;
}

// Above any confidence: the exit never accepts.
constexpr double kNever = 2.0;

void check(const CalibrateOptions& o) {
  auto open01 = [](double v) { return v > 0 && v < 1; };
  if (!open01(o.agreement)) throw std::invalid_argument("agreement " + std::to_string(o.agreement) + " must be in (0, 1)");
  if (!open01(o.confidence)) throw std::invalid_argument("confidence " + std::to_string(o.confidence) + " must be in (0, 1)");
  if (!(o.holdout >= 0 && o.holdout < 1)) throw std::invalid_argument("holdout " + std::to_string(o.holdout) + " must be in [0, 1)");
  if (!open01(o.path_fraction))
    throw std::invalid_argument("path_fraction " + std::to_string(o.path_fraction) + " must be in (0, 1)");
  if (o.path_steps < 1) throw std::invalid_argument("path_steps must be at least 1");
  if (o.batch_size < 1) throw std::invalid_argument("batch_size must be at least 1");
}

struct Split {
  std::vector<std::vector<int>> prompts;
  std::vector<Generation> reference;  // the full model's greedy output
  DecodeStats full;                   // and how long it took
};

DecodeOptions greedy(const CalibrateOptions& o) { return greedy_options(o.max_new_tokens, o.eos_id, o.vocab_limit); }

// Dynamic decoding with these thresholds over the split, against its reference.
AgreementCheck check_agreement(Llama& model, const Split& split, const std::vector<ExitThreshold>& thresholds,
                               const CalibrateOptions& o) {
  DecodeOptions d = greedy(o);
  d.strategy = Strategy::kDynamic;
  d.dynamic.thresholds = thresholds;
  d.dynamic.confidence = o.measure;
  DecodeStats st;
  const std::vector<Generation> out = generate_in_batches(model, split.prompts, d, o.batch_size, &st);
  AgreementCheck c;
  c.prompts = (int64_t)out.size();
  int64_t agreeing = 0, same = 0;
  double loss = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    const std::vector<int>& a = out[i].tokens;
    const std::vector<int>& b = split.reference[i].tokens;
    c.losses.push_back(disagreement(a, b));
    loss += c.losses.back();
    const size_t n = std::max(a.size(), b.size());
    c.positions += (int64_t)n;
    agreeing += (int64_t)(n - differing(a, b));
    same += a == b;
  }
  c.agreement = c.prompts ? 1 - loss / (double)c.prompts : 1;
  c.token_agreement = c.positions ? (double)agreeing / (double)c.positions : 1;
  c.identical = c.prompts ? (double)same / (double)c.prompts : 1;
  c.mean_layers_per_token = st.mean_layers_per_token();
  c.ms_per_token = st.ms_per_token();
  c.full_ms_per_token = split.full.ms_per_token();
  c.exit_histogram = st.exit_histogram;
  return c;
}

// Teacher-forced on the path split's references: per exit, each position's confidence and
// whether that exit's argmax is the full model's.
struct ExitSamples {
  std::vector<double> confidence;
  std::vector<bool> agrees;
};

std::vector<ExitSamples> exit_samples(Llama& model, const Split& split, const std::vector<int>& exits, const CalibrateOptions& o) {
  std::vector<int> all = exits;
  all.push_back((int)model->config().n_layers);
  std::vector<ExitSamples> out(exits.size());
  for (size_t i = 0; i < split.prompts.size(); ++i) {
    const std::vector<ExitPredictions> pred = teacher_forced(model, split.prompts[i], split.reference[i], all, o.vocab_limit);
    const std::vector<int>& full = pred.back().token;
    for (size_t e = 0; e < exits.size(); ++e)
      for (size_t t = 0; t < full.size(); ++t) {
        const ExitPredictions& p = pred[e];
        out[e].confidence.push_back(o.measure == Confidence::kMargin ? p.top1[t] - p.top2[t] : p.top1[t]);
        out[e].agrees.push_back(p.token[t] == full[t]);
      }
  }
  return out;
}

// The lowest threshold at which at most `rate` of the tokens it lets through disagree (kNever
// when none does). Only tie-group boundaries are candidates: a threshold lets a whole tie through.
double threshold_for(const ExitSamples& s, const std::vector<size_t>& order, double rate) {
  double best = kNever;
  int64_t wrong = 0;
  for (size_t m = 0; m < order.size(); ++m) {
    wrong += !s.agrees[order[m]];
    const double c = s.confidence[order[m]];
    const bool boundary = m + 1 == order.size() || s.confidence[order[m + 1]] < c;
    if (boundary && (double)wrong <= rate * (double)(m + 1)) best = c;
  }
  return best;
}

std::vector<Candidate> candidate_path(const std::vector<ExitSamples>& samples, const std::vector<int>& exits,
                                      const CalibrateOptions& o) {
  std::vector<std::vector<size_t>> order(samples.size());
  for (size_t e = 0; e < samples.size(); ++e) {
    order[e].resize(samples[e].confidence.size());
    for (size_t i = 0; i < order[e].size(); ++i) order[e][i] = i;
    std::stable_sort(order[e].begin(), order[e].end(),
                     [&](size_t a, size_t b) { return samples[e].confidence[a] > samples[e].confidence[b]; });
  }
  // Rates: 0, then geometric from (1 - agreement) / 1000 to 1 - agreement: real decoding compounds
  // a token's disagreement over the positions after it, so useful rates sit below the target.
  const double alpha = 1 - o.agreement;
  std::vector<Candidate> by_rate;
  for (int j = 0; j < o.path_steps; ++j) {
    Candidate c;
    c.rate = j == 0 ? 0.0 : alpha * std::pow(1e-3, 1.0 - (double)j / std::max(1, o.path_steps - 1));
    for (size_t e = 0; e < exits.size(); ++e) c.thresholds.push_back({exits[e], threshold_for(samples[e], order[e], c.rate)});
    by_rate.push_back(std::move(c));
  }
  // Even rate 0 on teacher-forced states can disagree in real decoding (recomputed K/V are computed
  // in other chunks, so a confidence at the threshold may round either way; copied ones are not
  // the full model's at all), so the path starts more conservatively: rate 0's thresholds moved
  // towards 1, their distance to 1 scaled by 1e-3 .. 1 (geometric, path_steps / 2 steps; "never"
  // stays never).
  std::vector<Candidate> path;
  const int prefix = o.path_steps / 2;
  for (int i = 0; i < prefix; ++i) {
    Candidate c = by_rate.front();
    const double scale = std::pow(1e-3, 1.0 - (double)i / prefix);
    for (ExitThreshold& t : c.thresholds)
      if (t.threshold <= 1) t.threshold = 1 - (1 - t.threshold) * scale;
    path.push_back(std::move(c));
  }
  auto same = [](const Candidate& a, const Candidate& b) {
    return std::equal(a.thresholds.begin(), a.thresholds.end(), b.thresholds.begin(),
                      [](const ExitThreshold& x, const ExitThreshold& y) { return x.threshold == y.threshold; });
  };
  for (Candidate& c : by_rate)
    if (path.empty() || !same(c, path.back())) path.push_back(std::move(c));
  return path;
}
}  // namespace

double disagreement(const std::vector<int>& output, const std::vector<int>& reference) {
  const size_t n = std::max(output.size(), reference.size());
  return n ? (double)differing(output, reference) / (double)n : 0.0;
}

std::vector<ExitThreshold> never_exit(const std::vector<int>& exits) {
  std::vector<ExitThreshold> t;
  for (int k : exits) t.push_back({k, kNever});
  return t;
}

Calibration calibrate_dynamic(Llama& model, const std::vector<std::vector<int>>& prompts, const CalibrateOptions& opt) {
  check(opt);
  const int L = (int)model->config().n_layers;
  const std::vector<int> exits = early_exits(opt.exits, L, "early exits");

  Calibration r;
  const size_t n = prompts.size();
  r.n_holdout = (int64_t)std::floor(opt.holdout * (double)n);
  const size_t rest = n - (size_t)r.n_holdout;
  r.n_path = (int64_t)std::floor(opt.path_fraction * (double)rest);
  r.n_test = (int64_t)rest - r.n_path;
  if (r.n_path < 1 || r.n_test < 1)
    throw std::invalid_argument(std::to_string(n) + " prompts leave " + std::to_string(r.n_path) + " to order the candidates and " +
                                std::to_string(r.n_test) + " to test them: both need at least one");
  Split split[3];  // path, test, holdout
  const std::vector<size_t> perm = shuffled_indices(n, opt.seed);
  for (size_t i = 0; i < n; ++i) {
    const int s = (int64_t)i < r.n_path ? 0 : (int64_t)i < r.n_path + r.n_test ? 1 : 2;
    split[s].prompts.push_back(prompts[perm[i]]);
  }
  for (Split& s : split) s.reference = generate_in_batches(model, s.prompts, greedy(opt), opt.batch_size, &s.full);
  for (const Generation& g : split[1].reference) r.test_tokens += (int64_t)g.tokens.size();

  r.path = candidate_path(exit_samples(model, split[0], exits, opt), exits, opt);
  spdlog::info("calibrate: {} candidates from {} prompts; testing on {} prompts ({} reference tokens)", r.path.size(), r.n_path,
               r.n_test, r.test_tokens);
  const double alpha = 1 - opt.agreement, delta = 1 - opt.confidence;
  const FixedSequence fs = fixed_sequence_test(r.path.size(), delta, [&](size_t j) {
    Candidate& c = r.path[j];
    c.test = check_agreement(model, split[1], c.thresholds, opt);
    c.p_value = risk_p_value(opt.p_value, c.test.losses, alpha);
    c.tested = true;
    spdlog::info("calibrate: candidate {} ({}): agreement {:.4f}, p-value {:.3g}", j, format_thresholds(c.thresholds),
                 c.test.agreement, c.p_value);
    return c.p_value;
  });
  r.chosen = fs.last_rejected;
  r.thresholds = r.chosen >= 0 ? r.path[(size_t)r.chosen].thresholds : never_exit(exits);
  r.calibration = r.chosen >= 0 ? r.path[(size_t)r.chosen].test : check_agreement(model, split[1], r.thresholds, opt);
  if (r.n_holdout > 0) r.holdout = check_agreement(model, split[2], r.thresholds, opt);
  return r;
}

}  // namespace sl
