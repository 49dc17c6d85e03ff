// The model against an independent plain-PyTorch reference (tests/reference/make_reference.py).
#include <gtest/gtest.h>

#include <fstream>

#include "sortedllama/io/checkpoint.h"
#include "sortedllama/eval/lm.h"
#include "sortedllama/model/objective.h"
#include "sortedllama/model/softmax_rows.h"
#include "sortedllama/io/safetensors.h"
#include "test_util.h"

using torch::Tensor;

namespace {
const double kLogitTol = 1e-4;  // fp32 vs the float64 reference

struct Reference {
  Tensor tokens, mask;               // [2,10]
  std::vector<Tensor> logits;        // per exit 1..4, [2,10,96]
  std::map<std::string, Tensor> grads;
  nlohmann::json expected;
};

Tensor load_tensor(const sl::SafetensorsFile& f, const std::string& name) {
  const auto& v = f.at(name);
  auto dtype = v.dtype == "I64" ? torch::kInt64 : torch::kFloat32;
  return torch::from_blob(const_cast<uint8_t*>(v.data), v.shape, dtype).clone();
}

const Reference& reference() {
  static Reference r = [] {
    Reference r;
    const std::string dir = sl_test::source_dir() + "/tests/data/ref_gqa/";
    sl::SafetensorsFile f(dir + "expected.safetensors");
    r.tokens = load_tensor(f, "tokens");
    r.mask = load_tensor(f, "attention_mask");
    for (int k = 1; k <= 4; ++k) r.logits.push_back(load_tensor(f, "logits_exit" + std::to_string(k)));
    for (const char* n : {"model.layers.1.self_attn.q_proj.weight", "model.norm.weight", "lm_head.weight"})
      r.grads[n] = load_tensor(f, std::string("grad.") + n);
    std::ifstream j(dir + "expected.json");
    r.expected = nlohmann::json::parse(j);
    return r;
  }();
  return r;
}

// labels[b,t] = token t+1 when both t and t+1 are real, else -100.
Tensor next_token_labels(const Tensor& tokens, const Tensor& mask) {
  Tensor labels = torch::full_like(tokens, -100);
  Tensor both = mask.narrow(1, 0, tokens.size(1) - 1) * mask.narrow(1, 1, tokens.size(1) - 1);
  labels.narrow(1, 0, tokens.size(1) - 1).copy_(torch::where(both.to(torch::kBool), tokens.narrow(1, 1, tokens.size(1) - 1), -100));
  return labels;
}

std::string ref_dir() { return sl_test::source_dir() + "/tests/data/ref_gqa"; }
}  // namespace

// fp32 on the CPU takes the fused ops (model/fused_ops.h); float64 takes the tensor ops that
// CUDA runs: both against the reference.
static void expect_reference_logits(torch::Dtype dtype) {
  const auto& r = reference();
  sl::Llama m = sl::load_model(ref_dir());
  m->to(dtype);
  torch::NoGradGuard g;
  auto hidden = m->forward(r.tokens, {1, 2, 3, 4}, r.mask);
  Tensor real = r.mask.to(torch::kBool);
  for (int k = 1; k <= 4; ++k) {
    Tensor logits = m->head(hidden[k - 1], k).to(torch::kFloat32);
    EXPECT_LT(sl_test::max_abs_diff(logits.index({real}), r.logits[k - 1].index({real})), kLogitTol) << "exit " << k;
  }
}

TEST(ModelReference, PerExitLogitsMatchAtRealPositions) { expect_reference_logits(torch::kFloat32); }
TEST(ModelReference, TensorOpsPathMatchesTooInFloat64) { expect_reference_logits(torch::kFloat64); }

TEST(ModelReference, ShardedCheckpointGivesTheSameLogits) {
  const auto& r = reference();
  sl::Llama m = sl::load_model(sl_test::source_dir() + "/tests/data/ref_gqa_sharded");
  torch::NoGradGuard g;
  Tensor logits = m->head(m->forward(r.tokens, {4}, r.mask)[0], 4);
  Tensor real = r.mask.to(torch::kBool);
  EXPECT_LT(sl_test::max_abs_diff(logits.index({real}), r.logits[3].index({real})), kLogitTol);
}

static void expect_reference_soft_loss_gradient(torch::Dtype dtype) {
  const auto& r = reference();
  sl::Llama m = sl::load_model(ref_dir());
  m->to(dtype);
  Tensor labels = next_token_labels(r.tokens, r.mask);
  const double n = labels.ge(0).sum().item<double>();
  ASSERT_EQ(n, 15);
  auto hidden = m->forward(r.tokens, {1, 2, 3, 4}, r.mask);
  // Each exit back-propagates into a leaf copy of its hidden state, chunk by chunk (2 positions
  // at a time); one backward through the trunk then takes the four leaf gradients together.
  double soft = 0;
  std::vector<Tensor> leaf_grads;
  for (int k = 1; k <= 4; ++k) {
    Tensor leaf = hidden[k - 1].detach().requires_grad_(true);
    const double nll = sl::exit_nll_sum(m, leaf, labels, k, /*chunk=*/2, /*grad_scale=*/1.0 / (4.0 * n)) / n;
    EXPECT_NEAR(nll, r.expected["nll"][std::to_string(k)].get<double>(), 1e-5) << "exit " << k;
    soft += nll / 4.0;
    leaf_grads.push_back(leaf.grad());
  }
  EXPECT_NEAR(soft, r.expected["soft_loss"].get<double>(), 1e-5);
  torch::autograd::backward(hidden, leaf_grads);
  auto params = m->named_parameters();
  for (const auto& [name, want] : r.grads) {
    Tensor got = params[name].grad().to(torch::kFloat32);
    ASSERT_TRUE(got.defined()) << name;
    const double scale = want.abs().max().item<double>();
    EXPECT_LT(sl_test::max_abs_diff(got, want), 1e-4 * std::max(1.0, scale)) << name;
  }
}

TEST(ModelReference, PerExitNllAndSoftLossGradient) { expect_reference_soft_loss_gradient(torch::kFloat32); }
TEST(ModelReference, TensorOpsPathGradientMatchesTooInFloat64) { expect_reference_soft_loss_gradient(torch::kFloat64); }

// The fused chunked loss (gradients of the logits formed in place from their softmax) against the
// naive path: the whole batch's logits, log_softmax + NLL, one autograd backward.
TEST(ModelReference, FusedLossEqualsNaiveLogSoftmaxNll) {
  const auto& r = reference();
  Tensor labels = next_token_labels(r.tokens, r.mask);
  const double scale = 0.37;
  sl::Llama naive = sl::load_model(ref_dir());
  Tensor naive_leaf = naive->forward(r.tokens, {3}, r.mask)[0].detach().requires_grad_(true);
  Tensor logits = naive->head(naive_leaf, 3);
  Tensor loss = torch::nll_loss(logits.reshape({-1, logits.size(-1)}).log_softmax(-1), labels.reshape({-1}), {},
                                at::Reduction::Sum, sl::kIgnoreLabel);
  (loss * scale).backward();
  for (int64_t chunk : {1, 4, 1000}) {
    sl::Llama m = sl::load_model(ref_dir());
    Tensor leaf = m->forward(r.tokens, {3}, r.mask)[0].detach().requires_grad_(true);
    EXPECT_NEAR(sl::exit_nll_sum(m, leaf, labels, 3, chunk, scale), loss.item<double>(), 1e-4) << "chunk " << chunk;
    EXPECT_LT(sl_test::max_abs_diff(leaf.grad(), naive_leaf.grad()), 1e-6) << "chunk " << chunk;
    for (const char* name : {"lm_head.weight", "model.norm.weight"})
      EXPECT_LT(sl_test::max_abs_diff(m->named_parameters()[name].grad(), naive->named_parameters()[name].grad()), 1e-6)
          << name << ", chunk " << chunk;
    torch::NoGradGuard no_grad;  // without gradients (evaluation) the same sum
    EXPECT_NEAR(sl::exit_nll_sum(m, leaf.detach(), labels, 3, chunk), loss.item<double>(), 1e-4) << "chunk " << chunk;
  }
}

// The CPU rows' loss kernel against libtorch's log_softmax and softmax: a vocabulary of several
// summation blocks plus an odd tail, rows from confident to flat, every label position.
TEST(SoftmaxRows, EqualsLogSoftmaxNllAndItsGradient) {
  torch::manual_seed(5);
  const int64_t m = 7, V = 3 * 1024 + 37;
  Tensor logits = torch::randn({m, V}) * torch::tensor({0.1, 1.0, 3.0, 10.0, 30.0, 1.0, 5.0}).unsqueeze(1);
  logits[3][100] = 80;  // one dominant logit: its row's softmax is nearly one-hot
  Tensor labels = torch::tensor({0L, V - 1, 1023L, 100L, 2048L, 17L, V - 37});
  const double scale = 0.25;
  Tensor logp = logits.log_softmax(1);
  const double want = -logp.gather(1, labels.unsqueeze(1)).sum().item<double>();
  Tensor want_grad = (logp.exp() - torch::one_hot(labels, V).to(torch::kFloat32)) * scale;

  Tensor rows = logits.clone();
  const double got = sl::softmax_nll_rows(rows.data_ptr<float>(), labels.data_ptr<int64_t>(), m, V, scale, true);
  EXPECT_NEAR(got, want, 1e-5 * std::abs(want));
  EXPECT_LT(sl_test::max_abs_diff(rows, want_grad), 1e-7);
  Tensor plain = logits.clone();  // without the gradient: the same sum, rows left as exp(l - max)
  EXPECT_EQ(sl::softmax_nll_rows(plain.data_ptr<float>(), labels.data_ptr<int64_t>(), m, V, scale, false), got);
  Tensor want_exp = (logits - std::get<0>(logits.max(1, true))).exp();
  EXPECT_LT(sl_test::max_abs_diff(plain, want_exp), 1e-6);

  Tensor bad = torch::tensor({0L, V, 0L, 0L, 0L, 0L, 0L});
  try {
    sl::softmax_nll_rows(plain.data_ptr<float>(), bad.data_ptr<int64_t>(), m, V, scale, true);
    ADD_FAILURE() << "a label outside the vocabulary was accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("label 3109 outside the vocabulary of 3109 tokens"), std::string::npos) << e.what();
  }
}

TEST(ModelReference, EvalLmMatchesReferenceNllForAnUnpaddedSequence) {
  const auto& r = reference();
  sl::Llama m = sl::load_model(ref_dir());
  std::vector<int> row0;
  for (int64_t t = 0; t < 10; ++t) row0.push_back((int)r.tokens[0][t].item<int64_t>());
  auto scores = sl::eval_lm(m, {row0}, {2, 4}, 4);
  // Row 0 alone: its 9 pairs; check against logits computed from the reference.
  for (int k : {2, 4}) {
    Tensor lp = r.logits[k - 1][0].narrow(0, 0, 9).to(torch::kFloat64).log_softmax(-1);
    Tensor y = r.tokens[0].narrow(0, 1, 9);
    double want = -lp.gather(1, y.unsqueeze(1)).mean().item<double>();
    EXPECT_NEAR(scores.at(k).nll, want, 1e-5);
    EXPECT_EQ(scores.at(k).tokens, 9);
    EXPECT_NEAR(scores.at(k).ppl, std::exp(want), 1e-3);
  }
}

TEST(Model, ParameterShapesListEveryParameterInOrder) {
  sl::ModelConfig c;
  c.dim = 16;
  c.hidden_dim = 24;
  c.n_layers = 3;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.vocab_size = 20;
  c.max_seq_len = 8;
  c.ict_exits = {2, 1, 2};
  for (bool tied : {false, true}) {
    c.tie_embeddings = tied;
    sl::Llama m(c);
    std::vector<std::pair<std::string, std::vector<int64_t>>> listed, built;
    sl::for_each_parameter_shape(c, [&](const std::string& n, const std::vector<int64_t>& s) { listed.emplace_back(n, s); });
    for (auto& p : m->named_parameters()) built.emplace_back(p.key(), p.value().sizes().vec());
    EXPECT_EQ(listed, built) << "tied " << tied;
  }
}

TEST(Model, LastExitEqualsFullModelAndSubModelsRunOnlyTheirLayers) {
  sl::Llama m = sl::load_model(ref_dir());
  torch::NoGradGuard g;
  Tensor tokens = reference().tokens.narrow(0, 0, 1);
  Tensor full, sub;
  std::vector<Tensor> all;
  EXPECT_EQ(sl_test::count_op_calls("sl::decoder_layer", [&] { full = m->forward(tokens, {4})[0]; }), 4);
  EXPECT_EQ(sl_test::count_op_calls("sl::decoder_layer", [&] { all = m->forward(tokens, {1, 2, 3, 4}); }), 4);
  EXPECT_TRUE(torch::equal(all[3], full));
  EXPECT_EQ(sl_test::count_op_calls("sl::decoder_layer", [&] { sub = m->forward(tokens, {2})[0]; }), 2);
  EXPECT_TRUE(torch::equal(sub, all[1]));
}

TEST(Model, KvCacheDecodingEqualsFullRecomputation) {
  sl::Llama m = sl::load_model(ref_dir());
  torch::NoGradGuard g;
  const auto& r = reference();
  // Row 1 left-padded by 3 (as generation batches are), row 0 unpadded.
  Tensor tokens = torch::stack({r.tokens[0], torch::cat({torch::zeros({3}, torch::kInt64), r.tokens[1].narrow(0, 0, 7)})});
  Tensor mask = torch::stack({torch::ones({10}, torch::kInt64), torch::cat({torch::zeros({3}, torch::kInt64), torch::ones({7}, torch::kInt64)})});
  for (int exit : {2, 4}) {
    Tensor full = m->head(m->forward(tokens, {exit}, mask)[0], exit);  // [2,10,V]
    sl::KVCache cache(m->config(), 2, 10, torch::kFloat32);
    Tensor step = m->head(m->forward(tokens.narrow(1, 0, 5), {exit}, mask.narrow(1, 0, 5), &cache)[0], exit);
    std::vector<Tensor> pieces{step};
    for (int64_t t = 5; t < 10; ++t)
      pieces.push_back(m->head(m->forward(tokens.narrow(1, t, 1), {exit}, mask.narrow(1, 0, t + 1), &cache)[0], exit));
    Tensor inc = torch::cat(pieces, 1);
    Tensor real = mask.to(torch::kBool);
    EXPECT_LT(sl_test::max_abs_diff(inc.index({real}), full.index({real})), 1e-5) << "exit " << exit;
  }
  // The left-padded row gets the same logits as the same tokens unpadded.
  Tensor alone = m->head(m->forward(r.tokens[1].narrow(0, 0, 7).unsqueeze(0), {4})[0], 4)[0];
  Tensor padded = m->head(m->forward(tokens, {4}, mask)[0], 4)[1].narrow(0, 3, 7);
  EXPECT_LT(sl_test::max_abs_diff(alone, padded), 1e-5);
}

TEST(Model, KvCacheCropRewindsEveryLayer) {
  sl::Llama m = sl::load_model(ref_dir());
  torch::NoGradGuard g;
  Tensor tokens = reference().tokens.narrow(0, 0, 1);
  sl::KVCache cache(m->config(), 1, 10, torch::kFloat32);
  m->forward(tokens.narrow(1, 0, 6), {4}, {}, &cache);
  cache.crop(4);
  for (auto l : cache.len) EXPECT_EQ(l, 4);
  Tensor again = m->head(m->forward(tokens.narrow(1, 4, 2), {4}, {}, &cache)[0], 4);
  Tensor full = m->head(m->forward(tokens.narrow(1, 0, 6), {4})[0], 4).narrow(1, 4, 2);
  EXPECT_LT(sl_test::max_abs_diff(again, full), 1e-5);
}
