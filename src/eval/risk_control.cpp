#include "sortedllama/eval/risk_control.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace sl {

double binomial_cdf(int64_t k, int64_t n, double p) {
  if (k < 0) return 0.0;
  if (k >= n) return 1.0;
  if (p <= 0) return 1.0;
  if (p >= 1) return 0.0;
  // log C(n,i) + i ln p + (n-i) ln(1-p), summed from the largest term so nothing underflows early.
  const double lp = std::log(p), lq = std::log1p(-p), lgn = std::lgamma((double)n + 1);
  std::vector<double> terms((size_t)k + 1);
  for (int64_t i = 0; i <= k; ++i)
    terms[(size_t)i] = lgn - std::lgamma((double)i + 1) - std::lgamma((double)(n - i) + 1) + (double)i * lp + (double)(n - i) * lq;
  const double top = *std::max_element(terms.begin(), terms.end());
  double sum = 0;
  for (double t : terms) sum += std::exp(t - top);
  return std::min(1.0, std::exp(top + std::log(sum)));
}

namespace {
void check_alpha(double alpha, int64_t n) {
  if (!(alpha > 0 && alpha < 1)) throw std::invalid_argument("risk level " + std::to_string(alpha) + " must be in (0, 1)");
  if (n < 1) throw std::invalid_argument("a p-value needs at least one loss");
}
}  // namespace

double hoeffding_p_value(double mean, int64_t n, double alpha) {
  check_alpha(alpha, n);
  const double a = std::min(mean, alpha);
  const double h = (a > 0 ? a * std::log(a / alpha) : 0.0) + (1 - a) * std::log((1 - a) / (1 - alpha));
  return std::exp(-(double)n * h);
}

double bentkus_p_value(double mean, int64_t n, double alpha) {
  check_alpha(alpha, n);
  // n * mean is a sum of losses: a rounding error must not push an integer sum up by one.
  const int64_t k = (int64_t)std::ceil((double)n * mean - 1e-9);
  return std::min(1.0, std::exp(1.0) * binomial_cdf(k, n, alpha));
}

double binomial_p_value(int64_t failures, int64_t n, double alpha) {
  check_alpha(alpha, n);
  return binomial_cdf(failures, n, alpha);
}

PValue parse_p_value(const std::string& name) {
  if (name == "hb") return PValue::kHoeffdingBentkus;
  if (name == "hoeffding") return PValue::kHoeffding;
  if (name == "bentkus") return PValue::kBentkus;
  if (name == "binomial") return PValue::kBinomial;
  throw std::runtime_error("p-value \"" + name + "\" is not hb, hoeffding, bentkus or binomial");
}

const char* p_value_name(PValue p) {
  switch (p) {
    case PValue::kHoeffding: return "hoeffding";
    case PValue::kBentkus: return "bentkus";
    case PValue::kBinomial: return "binomial";
    case PValue::kHoeffdingBentkus: break;
  }
  return "hb";
}

double risk_p_value(PValue kind, const std::vector<double>& losses, double alpha) {
  double sum = 0;
  int64_t failures = 0;
  for (double l : losses) {
    if (!(l >= 0 && l <= 1)) throw std::invalid_argument("a loss " + std::to_string(l) + " is outside [0, 1]");
    if (kind == PValue::kBinomial && l != 0 && l != 1)
      throw std::invalid_argument("the binomial p-value needs 0/1 losses, got " + std::to_string(l));
    sum += l;
    failures += l == 1;
  }
  const int64_t n = (int64_t)losses.size();
  const double mean = n > 0 ? sum / (double)n : 0.0;
  switch (kind) {
    case PValue::kHoeffding: return hoeffding_p_value(mean, n, alpha);
    case PValue::kBentkus: return bentkus_p_value(mean, n, alpha);
    case PValue::kBinomial: return binomial_p_value(failures, n, alpha);
    case PValue::kHoeffdingBentkus: break;
  }
  return std::min(hoeffding_p_value(mean, n, alpha), bentkus_p_value(mean, n, alpha));
}

FixedSequence fixed_sequence_test(size_t candidates, double delta, const std::function<double(size_t)>& p_value) {
  if (!(delta > 0 && delta < 1)) throw std::invalid_argument("error level " + std::to_string(delta) + " must be in (0, 1)");
  FixedSequence r;
  for (size_t j = 0; j < candidates; ++j) {
    r.p_values.push_back(p_value(j));
    if (r.p_values.back() > delta) break;
    r.last_rejected = (int)j;
  }
  return r;
}

}  // namespace sl
