#include "sortedllama/decode/options.h"

#include <cmath>
#include <iterator>
#include <sstream>
#include <stdexcept>

#include "sortedllama/model/exits.h"

namespace sl {

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

SkippedKV parse_skipped_kv(const std::string& name) {
  if (name == "recompute") return SkippedKV::kRecompute;
  if (name == "copy") return SkippedKV::kCopy;
  throw std::runtime_error("skipped-layer K/V \"" + name + "\" is not recompute or copy");
}

const char* skipped_kv_name(SkippedKV k) { return k == SkippedKV::kCopy ? "copy" : "recompute"; }

DynamicParams dynamic_params(const DynamicProfile& profile) {
  DynamicParams p;
  for (const auto& [layer, threshold] : profile.thresholds) p.thresholds.push_back({layer, threshold});
  p.confidence = parse_confidence(profile.confidence);
  return p;
}

std::string format_thresholds(const std::vector<ExitThreshold>& t) {
  std::ostringstream s;
  for (size_t i = 0; i < t.size(); ++i) s << (i ? "," : "") << t[i].layer << ":" << t[i].threshold;
  return s.str();
}

namespace {
[[noreturn]] void bad(const std::string& what) { throw std::invalid_argument(what); }
std::string str(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

void check_common(const DecodeOptions& o, int n_layers) {
  if (o.max_new_tokens < 1) bad("max_new_tokens " + std::to_string(o.max_new_tokens) + " must be at least 1");
  if (o.exit_layer < 0 || o.exit_layer > n_layers)
    bad("exit_layer " + std::to_string(o.exit_layer) + " is outside the model's 1.." + std::to_string(n_layers) +
        " layers (0 = all)");
  const SamplingParams& s = o.sampling;
  if (!std::isfinite(s.temperature) || s.temperature < 0) bad("temperature " + str(s.temperature) + " must be >= 0 (0 = greedy)");
  if (!(s.top_p >= 0 && s.top_p <= 1)) bad("top_p " + str(s.top_p) + " must be in [0, 1]");
  if (s.top_k < 0) bad("top_k " + std::to_string(s.top_k) + " must be >= 0 (0 = no limit)");
  if (s.vocab_limit < 0) bad("vocab_limit " + std::to_string(s.vocab_limit) + " must be >= 0 (0 = no limit)");
}

void resolve_speculative(SpeculativeParams& p, const SamplingParams& s, int verifier, int n_layers) {
  if (p.draft_layer == 0) p.draft_layer = parse_exits("auto", n_layers).front();
  if (p.draft_layer < 1 || p.draft_layer >= verifier)
    bad("draft_layer " + std::to_string(p.draft_layer) + " must be in 1.." + std::to_string(verifier - 1) +
        " (below the verifier's " + std::to_string(verifier) + " layers)");
  if (p.draft_tokens < 0) bad("draft_tokens " + std::to_string(p.draft_tokens) + " must be >= 0 (0 = adaptive)");
  if (p.max_draft_tokens < 1) bad("max_draft_tokens " + std::to_string(p.max_draft_tokens) + " must be at least 1");
  if (!(p.draft_confidence >= 0 && p.draft_confidence <= 1))
    bad("draft_confidence " + str(p.draft_confidence) + " must be in [0, 1] (0 = adaptive draft length)");
  if (p.tree_nodes < 0) bad("tree_nodes " + std::to_string(p.tree_nodes) + " must be >= 0 (0 = no draft tree)");
  // Accepting one of several candidates needs a multi-candidate rule to keep sampling exact.
  if (p.tree_nodes > 0 && s.temperature > 0)
    bad("tree_nodes " + std::to_string(p.tree_nodes) + ": draft trees are greedy only: --draft-tree needs --temperature 0");
}

void resolve_dynamic(DynamicParams& p, int exit_layer, int n_layers) {
  if (exit_layer != n_layers)
    bad("exit_layer " + std::to_string(exit_layer) + ": dynamic decoding runs the full model (exit_layer 0 or " +
        std::to_string(n_layers) + ")");
  if (p.thresholds.empty()) p.thresholds = default_thresholds(n_layers);
  for (size_t i = 0; i < p.thresholds.size(); ++i) {
    const ExitThreshold& t = p.thresholds[i];
    if (t.layer < 1 || t.layer > n_layers || (i > 0 && t.layer <= p.thresholds[i - 1].layer))
      bad("thresholds " + format_thresholds(p.thresholds) + ": layers must increase within 1.." + std::to_string(n_layers));
    if (!std::isfinite(t.threshold) || t.threshold < 0)
      bad("thresholds " + format_thresholds(p.thresholds) + ": a threshold is a confidence in [0, 1] (above 1: never exit there)");
  }
}
}  // namespace

DecodeOptions DecodeOptions::resolved(int n_layers) const {
  DecodeOptions o = *this;
  check_common(o, n_layers);
  if (o.exit_layer == 0) o.exit_layer = n_layers;
  if (o.strategy == Strategy::kSpeculative) resolve_speculative(o.speculative, o.sampling, o.exit_layer, n_layers);
  if (o.strategy == Strategy::kDynamic) resolve_dynamic(o.dynamic, o.exit_layer, n_layers);
  return o;
}

DecodeOptions greedy_options(int64_t max_new_tokens, int64_t eos_id, int64_t vocab_limit) {
  DecodeOptions d;
  d.max_new_tokens = max_new_tokens;
  d.eos_id = eos_id;
  d.sampling.vocab_limit = vocab_limit;
  return d;
}

}  // namespace sl
