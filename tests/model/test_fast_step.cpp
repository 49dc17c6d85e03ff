// The one-position CPU step against the general layer it replaces during decoding.
#include <gtest/gtest.h>

#include <map>

#include "sortedllama/io/checkpoint.h"
#include "sortedllama/model/fast_step.h"
#include "test_util.h"

using torch::Tensor;

namespace {
sl::KVCache copy_of(const sl::KVCache& c) {
  sl::KVCache out = c;
  for (size_t i = 0; i < c.k.size(); ++i) {
    out.k[i] = c.k[i].clone();
    out.v[i] = c.v[i].clone();
  }
  return out;
}

// R rows whose cache already holds 6 positions (row 1 left-padded by 2, row 2 with a hole at slot 3,
// as speculative rounds leave them), and the mask for one more position at slot 6.
struct Batch {
  sl::KVCache cache;
  Tensor key_mask;  // [R,7]
};

Batch filled_batch(sl::Llama& m, int64_t R) {
  const auto& cfg = m->config();
  Tensor key_mask = torch::ones({R, 7}, torch::kInt64);
  if (R > 1) key_mask[1].narrow(0, 0, 2).fill_(0);
  if (R > 2) key_mask[2][3] = 0;
  sl::KVCache cache(cfg, R, 12, torch::kFloat32);
  torch::manual_seed(3);
  m->forward(torch::randint(cfg.vocab_size, {R, 6}), {(int)cfg.n_layers}, key_mask.narrow(1, 0, 6), &cache);
  return {cache, key_mask};
}

// x [R,cols] times W [rows,cols]^T in one call, and each row of x alone: the same bits.
void expect_rows_same_alone_or_batched(const Tensor& W, const Tensor& x) {
  const int64_t R = x.size(0), rows = W.size(0), cols = W.size(1);
  Tensor together = torch::empty({R, rows}), alone = torch::empty({R, rows});
  sl::matvec(together.data_ptr<float>(), W.data_ptr<float>(), x.data_ptr<float>(), R, rows, cols);
  for (int64_t r = 0; r < R; ++r)
    sl::matvec(alone[r].data_ptr<float>(), W.data_ptr<float>(), x[r].data_ptr<float>(), 1, rows, cols);
  EXPECT_TRUE(torch::equal(together, alone)) << "R " << R << " rows " << rows << " cols " << cols;
}
}  // namespace

TEST(Matvec, EqualsAMatrixProductForEveryBlockAndTailShape) {
  // Rows and columns that leave partial weight-row blocks, input-row blocks and 8-float tails.
  torch::manual_seed(5);
  for (int64_t R : {1, 2, 3, 5, 7, 8})
    for (int64_t rows : {1, 3, 4, 7, 13})
      for (int64_t cols : {1, 7, 8, 17, 70}) {
        Tensor W = torch::randn({rows, cols}), x = torch::randn({R, cols});
        Tensor y = torch::empty({R, rows});
        sl::matvec(y.data_ptr<float>(), W.data_ptr<float>(), x.data_ptr<float>(), R, rows, cols);
        EXPECT_LT(sl_test::max_abs_diff(y, x.matmul(W.t())), 1e-4) << "R " << R << " rows " << rows << " cols " << cols;
      }
}

// A weight of at least 2^16 floats takes the streaming kernel (prefetch, and 16 lanes on AVX-512);
// 261 x 260 leaves a partial block of weight rows and a tail of columns for it.
TEST(Matvec, EqualsAMatrixProductAndKeepsItsBitsForStreamedWeights) {
  torch::manual_seed(7);
  const int64_t rows = 261, cols = 260;
  Tensor W = torch::randn({rows, cols});
  for (int64_t R : {1, 3, 7}) {
    Tensor x = torch::randn({R, cols}), y = torch::empty({R, rows});
    sl::matvec(y.data_ptr<float>(), W.data_ptr<float>(), x.data_ptr<float>(), R, rows, cols);
    EXPECT_LT(sl_test::max_abs_diff(y, x.matmul(W.t())), 1e-3) << "R " << R;
    expect_rows_same_alone_or_batched(W, x);
  }
}

TEST(Matvec, EachRowIsTheSameBitsAloneOrInABatch) {
  // Speculative verification multiplies several positions at once where plain decoding multiplies
  // one: greedy output is only identical if a row's products do not depend on its company.
  // Seven rows go through every input-row block: four, a pair and one alone.
  torch::manual_seed(6);
  for (int64_t R : {2, 3, 7})
    for (int64_t rows : {5, 13, 64})
      for (int64_t cols : {7, 64, 70}) {
        Tensor W = torch::randn({rows, cols}), x = torch::randn({R, cols});
        expect_rows_same_alone_or_batched(W, x);
      }
}

TEST(FastStep, EqualsTheGeneralLayerForOnePosition) {
  sl::Llama m = sl::load_model(sl_test::source_dir() + "/tests/data/ref_gqa");  // 4 heads over 2 KV heads
  torch::NoGradGuard g;
  const auto& cfg = m->config();
  sl::StepBuffers buf;
  // One row with and without a key mask, several rows.
  for (auto [R, use_mask] : {std::pair<int64_t, bool>{1, false}, {1, true}, {3, true}}) {
    Batch b = filled_batch(m, R);
    sl::KVCache general = copy_of(b.cache), fast = copy_of(b.cache);
    sl::AttnInputs in = m->attn_inputs(use_mask ? b.key_mask : Tensor(), R, 6, 1);
    ASSERT_EQ(in.mask.defined(), use_mask);
    Tensor x = torch::randn({R, 1, cfg.dim});
    for (int i = 0; i < (int)cfg.n_layers; ++i) {
      auto& layer = m->body->layers->at<sl::DecoderLayerImpl>(i);
      Tensor want = layer.forward(x, in, &general, i);
      Tensor got = sl::fast_layer_step(layer, x, in, fast, i, buf);
      const std::string where = "R " + std::to_string(R) + " mask " + std::to_string(use_mask) + " layer " + std::to_string(i);
      EXPECT_LT(sl_test::max_abs_diff(got, want), 1e-5) << where;
      EXPECT_EQ(fast.len[i], general.len[i]) << where;
      EXPECT_LT(sl_test::max_abs_diff(fast.k[i], general.k[i]), 1e-6) << where;
      EXPECT_LT(sl_test::max_abs_diff(fast.v[i], general.v[i]), 1e-6) << where;
      x = want;
    }
  }
}

TEST(FastStep, EqualsTheGeneralLayerForSeveralPositions) {
  // A speculative round's verification: T new positions per row attend causally to each other.
  sl::Llama m = sl::load_model(sl_test::source_dir() + "/tests/data/ref_gqa");
  torch::NoGradGuard g;
  const auto& cfg = m->config();
  sl::StepBuffers buf;
  const int64_t T = 3;
  for (int64_t R : {1, 3}) {
    Batch b = filled_batch(m, R);
    Tensor key_mask = torch::cat({b.key_mask.narrow(1, 0, 6), torch::ones({R, T}, torch::kInt64)}, 1);  // [R,9]
    sl::KVCache general = copy_of(b.cache), fast = copy_of(b.cache), general_kv = copy_of(b.cache),
                fast_kv = copy_of(b.cache);
    sl::AttnInputs in = m->attn_inputs(key_mask, R, 6, T);
    Tensor x = torch::randn({R, T, cfg.dim});
    ASSERT_TRUE(sl::fast_step_applies(x, &fast));
    for (int i = 0; i < (int)cfg.n_layers; ++i) {
      auto& layer = m->body->layers->at<sl::DecoderLayerImpl>(i);
      layer.append_kv(x, in, general_kv, i);
      sl::fast_layer_kv_step(layer, x, in, fast_kv, i, buf);
      Tensor want = layer.forward(x, in, &general, i);
      Tensor got = sl::fast_layer_step(layer, x, in, fast, i, buf);
      const std::string where = "R " + std::to_string(R) + " layer " + std::to_string(i);
      EXPECT_LT(sl_test::max_abs_diff(got, want), 1e-5) << where;
      EXPECT_EQ(fast.len[i], 6 + T) << where;
      EXPECT_EQ(fast_kv.len[i], 6 + T) << where;
      EXPECT_LT(sl_test::max_abs_diff(fast.k[i], general.k[i]), 1e-6) << where;
      EXPECT_LT(sl_test::max_abs_diff(fast.v[i], general.v[i]), 1e-6) << where;
      EXPECT_LT(sl_test::max_abs_diff(fast_kv.k[i], general_kv.k[i]), 1e-6) << where;
      x = want;
    }
  }
}

TEST(FastStep, EqualsTheGeneralLayerForWideHeadsAndLongCaches) {
  // Heads of ten vectors (80) or off the vector width (12), over more cached keys than one block of
  // scores (8), one row left-padded.
  torch::NoGradGuard g;
  for (int64_t hd : {80, 12}) {
    sl::ModelConfig c;
    c.dim = 2 * hd, c.hidden_dim = 48, c.n_layers = 1, c.n_heads = 2, c.n_kv_heads = 1, c.vocab_size = 64,
    c.max_seq_len = 64;
    sl::Llama m(c);
    m->init_weights(0.1, 2);
    const int64_t R = 2, P = 21;
    Tensor key_mask = torch::ones({R, P + 3}, torch::kInt64);
    key_mask[1].narrow(0, 0, 5).fill_(0);
    sl::KVCache cache(c, R, P + 3, torch::kFloat32);
    torch::manual_seed(4);
    m->forward(torch::randint(c.vocab_size, {R, P}), {1}, key_mask.narrow(1, 0, P), &cache);
    auto& layer = m->body->layers->at<sl::DecoderLayerImpl>(0);
    for (int64_t T : {1, 3}) {
      sl::KVCache general = copy_of(cache), fast = copy_of(cache);
      sl::StepBuffers buf;
      sl::AttnInputs in = m->attn_inputs(key_mask.narrow(1, 0, P + T), R, P, T);
      Tensor x = torch::randn({R, T, c.dim});
      ASSERT_TRUE(sl::fast_step_applies(x, &fast));
      Tensor want = layer.forward(x, in, &general, 0), got = sl::fast_layer_step(layer, x, in, fast, 0, buf);
      EXPECT_LT(sl_test::max_abs_diff(got, want), 1e-5) << "hd " << hd << " T " << T;
    }
  }
}

// A draft tree's nodes: explicit rotary positions (siblings share one) and a mask that is not
// causal (a node sees some earlier nodes, not all). The fast step reads both as the general layer does.
TEST(FastStep, EqualsTheGeneralLayerForATreeMask) {
  sl::Llama m = sl::load_model(sl_test::source_dir() + "/tests/data/ref_gqa");
  torch::NoGradGuard g;
  const auto& cfg = m->config();
  sl::StepBuffers buf;
  const int64_t R = 3, T = 4, S = 6 + T;
  Batch b = filled_batch(m, R);
  // Nodes: chain 0 -> 1, and two alternatives to node 1 (children of node 0) at node 1's depth.
  Tensor tree = torch::tensor({1, 0, 0, 0, 1, 1, 0, 0, 1, 0, 1, 0, 1, 0, 0, 1}, torch::kBool).view({1, T, T});
  Tensor prefix = b.key_mask.narrow(1, 0, 6).to(torch::kBool).unsqueeze(1).expand({R, T, 6});
  Tensor mask = torch::cat({prefix, tree.expand({R, T, T})}, 2).unsqueeze(1);  // [R,1,T,S]
  Tensor base = b.key_mask.narrow(1, 0, 6).sum(1, true);                       // [R,1]
  Tensor positions = base + torch::tensor({0, 1, 1, 1}).view({1, T});           // [R,T]
  sl::AttnInputs in = m->attn_inputs_at(positions, mask);
  ASSERT_EQ(in.mask.size(3), S);
  sl::KVCache general = copy_of(b.cache), fast = copy_of(b.cache);
  Tensor x = torch::randn({R, T, cfg.dim});
  ASSERT_TRUE(sl::fast_step_applies(x, &fast));
  for (int i = 0; i < (int)cfg.n_layers; ++i) {
    auto& layer = m->body->layers->at<sl::DecoderLayerImpl>(i);
    Tensor want = layer.forward(x, in, &general, i);
    Tensor got = sl::fast_layer_step(layer, x, in, fast, i, buf);
    const std::string where = "layer " + std::to_string(i);
    EXPECT_LT(sl_test::max_abs_diff(got, want), 1e-5) << where;
    EXPECT_LT(sl_test::max_abs_diff(fast.k[i], general.k[i]), 1e-6) << where;
    // Node 2 sees node 0 but not node 1: changing node 1's input leaves node 2's output alone.
    Tensor x2 = x.clone();
    x2.select(1, 1).add_(1.0);
    sl::KVCache again = copy_of(b.cache);
    Tensor moved = layer.forward(x2, in, &again, i);
    EXPECT_LT(sl_test::max_abs_diff(moved.select(1, 2), want.select(1, 2)), 1e-6) << where;
    EXPECT_GT(sl_test::max_abs_diff(moved.select(1, 1), want.select(1, 1)), 1e-3) << where;
    x = want;
  }
}

// Explicit positions and a causal mask give what attn_inputs gives from the key mask, on the
// loops' path (few positions) and on the tensor path (many).
TEST(FastStep, ExplicitPositionsEqualTheKeyMaskOnes) {
  sl::Llama m = sl::load_model(sl_test::source_dir() + "/tests/data/ref_gqa");
  torch::NoGradGuard g;
  for (int64_t T : {3, 30}) {
    const int64_t B = 2, q = 10, S = q + T;
    Tensor key_mask = torch::ones({B, S}, torch::kInt64);
    key_mask[1].narrow(0, 0, 3).fill_(0);
    key_mask[1][5] = 0;
    const sl::AttnInputs want = m->attn_inputs(key_mask, B, q, T);
    Tensor positions = (key_mask.cumsum(1) - 1).narrow(1, q, T);  // [B,T]
    const sl::AttnInputs got = m->attn_inputs_at(positions, want.mask.contiguous());
    const std::string where = "T " + std::to_string(T);
    EXPECT_TRUE(got.cos.equal(want.cos)) << where;
    EXPECT_TRUE(got.sin.equal(want.sin)) << where;
    EXPECT_TRUE(got.mask.equal(want.mask)) << where;
  }
}

TEST(FastStep, AttentionInputsEqualTheTensorOnes) {
  // Two rows of 40 positions take the tensor-op path; a few positions at a time the loops.
  // Row 1 is left-padded by 3 and has a hole at 20, so its positions lag its slots.
  sl::Llama m = sl::load_model(sl_test::source_dir() + "/tests/data/ref_gqa");
  torch::NoGradGuard g;
  const int64_t B = 2, S = 40;
  Tensor key_mask = torch::ones({B, S}, torch::kInt64);
  key_mask[1].narrow(0, 0, 3).fill_(0);
  key_mask[1][20] = 0;
  for (bool use_mask : {false, true}) {
    const Tensor km = use_mask ? key_mask : Tensor();
    const sl::AttnInputs all = m->attn_inputs(km, B, 0, S);
    for (auto [q, T] : {std::pair<int64_t, int64_t>{0, 1}, {5, 1}, {21, 3}, {36, 4}}) {
      const sl::AttnInputs few = m->attn_inputs(use_mask ? key_mask.narrow(1, 0, q + T) : Tensor(), B, q, T);
      const std::string where = "mask " + std::to_string(use_mask) + " q " + std::to_string(q) + " T " + std::to_string(T);
      EXPECT_LT(sl_test::max_abs_diff(few.cos, all.cos.narrow(2, q, T)), 1e-6) << where;
      EXPECT_LT(sl_test::max_abs_diff(few.sin, all.sin.narrow(2, q, T)), 1e-6) << where;
      ASSERT_EQ(few.mask.defined(), use_mask || T > 1) << where;
      if (few.mask.defined()) {
        EXPECT_TRUE(few.mask.equal(all.mask.narrow(2, q, T).narrow(3, 0, q + T))) << where;
      }
    }
  }
}

TEST(FastStep, KvOnlyStepEqualsTheGeneralAppend) {
  sl::Llama m = sl::load_model(sl_test::source_dir() + "/tests/data/ref_gqa");
  torch::NoGradGuard g;
  sl::StepBuffers buf;
  Batch b = filled_batch(m, 3);
  sl::KVCache general = copy_of(b.cache), fast = copy_of(b.cache);
  sl::AttnInputs in = m->attn_inputs(b.key_mask, 3, 6, 1);
  Tensor x = torch::randn({3, 1, m->config().dim});
  auto& layer = m->body->layers->at<sl::DecoderLayerImpl>(2);
  layer.append_kv(x, in, general, 2);
  sl::fast_layer_kv_step(layer, x, in, fast, 2, buf);
  EXPECT_EQ(fast.len[2], 7);
  EXPECT_LT(sl_test::max_abs_diff(fast.k[2], general.k[2]), 1e-6);
  EXPECT_LT(sl_test::max_abs_diff(fast.v[2], general.v[2]), 1e-6);
}

TEST(FastStep, AppliesOnlyToFewFp32PositionsWithoutAutograd) {
  sl::Llama m = sl::load_model(sl_test::source_dir() + "/tests/data/ref_gqa");
  sl::KVCache cache(m->config(), 2, 8, torch::kFloat32);
  Tensor one = torch::zeros({2, 1, 32}), two = torch::zeros({2, 2, 32});
  Tensor prompt = torch::zeros({2, sl::kMatvecRows / 2 + 1, 32}), wide = torch::zeros({2 * sl::kMatvecRows, 1, 32});
  EXPECT_FALSE(sl::fast_step_applies(one, &cache)) << "autograd is on: training takes the general path";
  torch::NoGradGuard g;
  EXPECT_TRUE(sl::fast_step_applies(one, &cache));
  EXPECT_FALSE(sl::fast_step_applies(one, nullptr));
  EXPECT_TRUE(sl::fast_step_applies(two, &cache)) << "a speculative round's few positions";
  EXPECT_TRUE(sl::fast_step_applies(wide, &cache)) << "one position per row, however many rows";
  EXPECT_FALSE(sl::fast_step_applies(prompt, &cache)) << "a prompt of more positions than matvec serves";
  EXPECT_FALSE(sl::fast_step_applies(one.to(torch::kBFloat16), &cache));
  sl::KVCache bf16(m->config(), 2, 8, torch::kBFloat16);
  EXPECT_FALSE(sl::fast_step_applies(one, &bf16));
}

TEST(HugePages, LargeWeightsMoveWithTheirValuesAndStillTrain) {
  sl::ModelConfig c;
  c.dim = 512, c.hidden_dim = 64, c.n_layers = 1, c.n_heads = 8, c.n_kv_heads = 8, c.vocab_size = 1024, c.max_seq_len = 16;
  sl::Llama m(c);
  m->init_weights(0.02, 1);
  std::map<std::string, Tensor> before;
  for (auto& p : m->named_parameters()) before[p.key()] = p.value().clone();
  m->use_huge_pages();
  for (auto& p : m->named_parameters()) {
    EXPECT_TRUE(torch::equal(p.value(), before.at(p.key()))) << p.key();
    if (p.value().numel() * 4 >= (2 << 20)) {  // the [1024,512] embedding and head
      EXPECT_EQ(reinterpret_cast<uintptr_t>(p.value().data_ptr()) % (2 << 20), 0u) << p.key();
    }
  }
  // Still the module's parameters: gradients reach the moved tensors.
  Tensor loss = m->head(m->forward(torch::tensor({{1, 2, 3}}), {1})[0], 1).square().mean();
  loss.backward();
  EXPECT_TRUE(m->body->embed_tokens->weight.grad().defined());
  EXPECT_GT(m->lm_head->weight.grad().abs().sum().item<double>(), 0);
}
