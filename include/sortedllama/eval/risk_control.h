// Learn then Test (Angelopoulos, Bates, Candès, Jordan, Lei 2021), the procedure CALM (Schuster et
// al. 2022) uses to calibrate early exit: valid p-values for the null hypothesis "the expected loss
// exceeds alpha" from n i.i.d. losses in [0, 1], and fixed-sequence testing along a path of
// candidates ordered from the most conservative to the most aggressive. Pure functions, no model.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace sl {

// P(Bin(n, p) <= k), summed exactly in log space (0 for k < 0, 1 for k >= n).
double binomial_cdf(int64_t k, int64_t n, double p);

// p-values for H0: E[loss] > alpha, from the mean of n i.i.d. losses. Each is valid (super-uniform
// under H0) for losses in [0, 1], except binomial, which needs losses in {0, 1}.
//   hoeffding: exp(-n h(min(mean, alpha), alpha)), h(a, b) = a ln(a/b) + (1-a) ln((1-a)/(1-b));
//   bentkus:   min(1, e * P(Bin(n, alpha) <= ceil(n * mean)));
//   hb:        the smaller of the two (LTT's Hoeffding-Bentkus p-value);
//   binomial:  P(Bin(n, alpha) <= n * mean), the exact test of a Bernoulli rate.
enum class PValue { kHoeffdingBentkus, kHoeffding, kBentkus, kBinomial };
PValue parse_p_value(const std::string& name);  // "hb" | "hoeffding" | "bentkus" | "binomial"; throws naming it
const char* p_value_name(PValue p);
double hoeffding_p_value(double mean, int64_t n, double alpha);
double bentkus_p_value(double mean, int64_t n, double alpha);
double binomial_p_value(int64_t failures, int64_t n, double alpha);
// The chosen p-value of these losses; throws if a loss is outside [0, 1] (or not 0/1 for binomial).
double risk_p_value(PValue kind, const std::vector<double>& losses, double alpha);

// Fixed-sequence testing at level delta: candidates 0, 1, ... are tested in order, candidate j's
// null is rejected when p_value(j) <= delta, and testing stops at the first non-rejection. Every
// rejected candidate then controls the risk with probability >= 1 - delta, jointly (the family-wise
// error rate), because the order was fixed before the p-values were seen. p_value is called
// lazily, once per tested candidate.
struct FixedSequence {
  int last_rejected = -1;       // the most aggressive rejected candidate; -1 = none
  std::vector<double> p_values;  // of the tested candidates, in order
};
FixedSequence fixed_sequence_test(size_t candidates, double delta, const std::function<double(size_t)>& p_value);

}  // namespace sl
