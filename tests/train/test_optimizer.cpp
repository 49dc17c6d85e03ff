// DistAdamW on one rank: the same updates as libtorch's AdamW with clip_grad_norm_, fp32 master
// weights behind bf16 parameters, and a state that survives gather -> load. (Several ranks and
// ZeRO-2 are checked end to end in tests/cli/distributed.sh.)
#include <gtest/gtest.h>

#include <cstdlib>

#include "sortedllama/train/optimizer.h"

using torch::Tensor;

namespace {
std::vector<std::pair<std::string, Tensor>> toy_params(torch::Dtype dtype) {
  torch::manual_seed(7);
  return {{"w", torch::randn({6, 5}).to(dtype).requires_grad_()}, {"b", torch::randn({5}).to(dtype).requires_grad_()}};
}
void set_grads(std::vector<std::pair<std::string, Tensor>>& ps, int step) {
  torch::manual_seed(100 + step);
  for (auto& [n, p] : ps) p.mutable_grad() = (torch::randn(p.sizes()) * 3).to(p.scalar_type());
}
}  // namespace

TEST(Optimizer, OneRankMatchesLibtorchAdamWWithClipping) {
  sl::Dist dist(sl::DistEnv{}, std::chrono::seconds(5));
  auto mine = toy_params(torch::kFloat32), ref = toy_params(torch::kFloat32);
  sl::DistAdamW opt(mine, sl::AdamWConfig{0.9, 0.95, 1e-8, 0.1}, dist, /*shard=*/true);
  auto o = torch::optim::AdamWOptions(1e-2).betas({0.9, 0.95}).eps(1e-8).weight_decay(0.1);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<Tensor>{ref[0].second}, std::make_unique<torch::optim::AdamWOptions>(o));
  groups.emplace_back(std::vector<Tensor>{ref[1].second},
                      std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(o).weight_decay(0.0)));
  torch::optim::AdamW torch_opt(std::move(groups), o);
  for (int step = 0; step < 4; ++step) {
    set_grads(mine, step);
    set_grads(ref, step);
    const double expect_norm = torch::nn::utils::clip_grad_norm_(std::vector<Tensor>{ref[0].second, ref[1].second}, 2.0);
    for (auto& g : torch_opt.param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(1e-2 * (step + 1));
    torch_opt.step();
    const double norm = opt.step(1e-2 * (step + 1), 2.0);
    EXPECT_NEAR(norm, expect_norm, 1e-4 * expect_norm);
    EXPECT_GT(norm, 2.0);  // clipping was active
    opt.zero_grad();
    for (size_t i = 0; i < mine.size(); ++i)
      EXPECT_TRUE(torch::allclose(mine[i].second, ref[i].second, 1e-6, 1e-6)) << mine[i].first << " step " << step;
  }
  EXPECT_EQ(opt.owned_numel(), 35);
}

TEST(Optimizer, Bf16ParametersMoveThroughFp32MasterWeights) {
  sl::Dist dist(sl::DistEnv{}, std::chrono::seconds(5));
  auto ps = toy_params(torch::kBFloat16);
  const Tensor start = ps[0].second.detach().to(torch::kFloat32).clone();
  sl::DistAdamW opt(ps, sl::AdamWConfig{}, dist, false);
  // Steps of ~1e-4 are far below bf16's resolution near 1: only an fp32 master accumulates them.
  for (int step = 0; step < 20; ++step) {
    set_grads(ps, 0);
    opt.step(1e-4, 0);
    opt.zero_grad();
  }
  sl::OptimizerState st = opt.gather_state();
  Tensor master;
  for (auto& [name, t] : st.tensors)
    if (name == "w.master") master = t;
  ASSERT_TRUE(master.defined());
  EXPECT_EQ(st.steps["w"], 20);
  EXPECT_GT((master - start).abs().max().item<double>(), 1e-3);  // moved by ~20 * 1e-4
  EXPECT_TRUE(torch::equal(ps[0].second, master.to(torch::kBFloat16)));  // the model holds the rounded master
}

TEST(Optimizer, GatheredStateResumesExactly) {
  sl::Dist dist(sl::DistEnv{}, std::chrono::seconds(5));
  auto a = toy_params(torch::kFloat32), b = toy_params(torch::kFloat32);
  sl::DistAdamW opt_a(a, sl::AdamWConfig{}, dist, false);
  for (int step = 0; step < 3; ++step) {
    set_grads(a, step);
    opt_a.step(1e-2, 1.0);
    opt_a.zero_grad();
  }
  sl::OptimizerState st = opt_a.gather_state();
  {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < a.size(); ++i) b[i].second.copy_(a[i].second);
  }
  sl::DistAdamW opt_b(b, sl::AdamWConfig{}, dist, false);
  opt_b.load_state(
      [&](const std::string& key) {
        for (auto& [n, t] : st.tensors)
          if (n == key) return t;
        return Tensor();
      },
      st.steps, "test");
  set_grads(a, 3);
  set_grads(b, 3);
  opt_a.step(1e-2, 1.0);
  opt_b.step(1e-2, 1.0);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i].second, b[i].second)) << a[i].first;
  EXPECT_THROW(opt_b.load_state([](const std::string&) { return torch::zeros({2}); }, st.steps, "state.safetensors"),
               std::runtime_error);
}

TEST(Optimizer, MalformedRankEnvironmentIsNamed) {
  setenv("WORLD_SIZE", "two", 1);
  try {
    sl::DistEnv::from_environment();
    ADD_FAILURE() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("WORLD_SIZE=\"two\""), std::string::npos) << e.what();
  }
  setenv("WORLD_SIZE", "2", 1);
  setenv("RANK", "2", 1);
  EXPECT_THROW(sl::DistEnv::from_environment(), std::runtime_error);
  unsetenv("WORLD_SIZE");
  unsetenv("RANK");
  EXPECT_EQ(sl::DistEnv::from_environment().world, 1);
}

TEST(Optimizer, FusedUpdateEqualsTheTensorOpsAndSumsSquaresInDouble) {
  torch::manual_seed(9);
  const sl::AdamWConfig cfg{0.9, 0.95, 1e-8, 0.1};
  // More elements than one task's chunk; the transposed copies take the tensor ops.
  Tensor p = torch::randn({300, 70}), g = torch::randn({300, 70}) * 3, m = torch::randn({300, 70}) * 0.1;
  Tensor v = torch::rand({300, 70}) * 0.01;
  Tensor pt = p.t().contiguous().t(), mt = m.t().contiguous().t(), vt = v.t().contiguous().t();
  ASSERT_FALSE(pt.is_contiguous());
  const sl::AdamWStep a = sl::AdamWStep::of(cfg, 1e-2, cfg.weight_decay, 3, 0.5);
  sl::adamw_update(p, g, m, v, a);
  sl::adamw_update(pt, g, mt, vt, a);
  EXPECT_TRUE(torch::allclose(p, pt, 1e-6, 1e-6));
  EXPECT_TRUE(torch::allclose(m, mt, 1e-6, 1e-6));
  EXPECT_TRUE(torch::allclose(v, vt, 1e-6, 1e-6));
  EXPECT_NEAR(sl::sum_of_squares(g).item<double>(), g.to(torch::kFloat64).pow(2).sum().item<double>(), 1e-9 * 3e5);
  EXPECT_NEAR(sl::sum_of_squares(g.t()).item<double>(), g.to(torch::kFloat64).pow(2).sum().item<double>(), 1e-9 * 3e5);
}
