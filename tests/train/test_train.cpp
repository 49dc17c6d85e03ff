// finetune: the multi-exit loss, masking, accumulation, methods, resume, and the paper's effect.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "sortedllama/io/checkpoint.h"
#include "sortedllama/io/safetensors.h"
#include "sortedllama/train/trainer.h"
#include "sortedllama/train/config.h"
#include "sortedllama/train/state.h"
#include "test_util.h"
#include "train/train_util.h"

namespace fs = std::filesystem;
using torch::Tensor;

namespace {
std::map<std::string, Tensor> grads_of(sl::Llama& m) {
  std::map<std::string, Tensor> g;
  for (auto& p : m->named_parameters()) g[p.key()] = p.value().grad().clone();
  return g;
}
}  // namespace

TEST(TrainConfig, ErrorsNameTheKey) {
  std::string dir = sl_test::temp_dir("cfg");
  sl_test::write_file(dir + "/bad.json", R"({"train": {"lrr": 1}})");
  EXPECT_NE(error_of([&] { sl::resolve_train_config(dir + "/bad.json", {}); }).find("bad.json: unknown key \"train.lrr\""),
            std::string::npos);
  sl_test::write_file(dir + "/type.json", R"({"train": {"batch_size": "four"}})");
  EXPECT_NE(error_of([&] { sl::resolve_train_config(dir + "/type.json", {}); }).find("\"train.batch_size\" must be number"),
            std::string::npos);
  sl_test::write_file(dir + "/broken.json", R"({"train": )");
  EXPECT_NE(error_of([&] { sl::resolve_train_config(dir + "/broken.json", {}); }).find("broken.json: malformed JSON"),
            std::string::npos);
  EXPECT_NE(error_of([&] { sl::resolve_train_config("", {"train.nope=1"}); }).find("unknown key \"train.nope\""),
            std::string::npos);
  EXPECT_NE(error_of([&] { sl::resolve_train_config("", {"train.lr=fast"}); }).find("\"fast\" is not a number"),
            std::string::npos);
  EXPECT_NE(error_of([&] { sl::resolve_train_config("", {"train.lr"}); }).find("expected key=value"), std::string::npos);

  auto parse = [&](const std::vector<std::string>& sets) {
    return error_of([&] { sl::parse_train_options(sl::resolve_train_config("", sets)); });
  };
  const std::string model = "model=" + sl_test::stories_model_dir(), data = "data.train=" + alpaca_slice(0, 64);
  EXPECT_NE(parse({model, data, "train.lr=0"}).find("\"train.lr\" must be positive"), std::string::npos);
  EXPECT_NE(parse({model, data, "train.batch_size=0"}).find("\"train.batch_size\" must be positive"), std::string::npos);
  EXPECT_NE(parse({model, data, "train.loss_chunk=-1"}).find("\"train.loss_chunk\" must not be negative"), std::string::npos);
  EXPECT_NE(parse({model, data, "dist.bucket_mb=0"}).find("\"dist.bucket_mb\" must be positive"), std::string::npos);
  EXPECT_NE(parse({model, "data.train=/no/such.json"}).find("\"data.train\": /no/such.json does not exist"), std::string::npos);
  EXPECT_NE(parse({"model=/no/model", data}).find("\"model\": /no/model is not a directory"), std::string::npos);
  EXPECT_NE(parse({data}).find("exactly one of \"model\""), std::string::npos);
  EXPECT_NE(parse({model, data, "method=magic"}).find("\"method\": \"magic\""), std::string::npos);
  EXPECT_NE(parse({model, data, "method=extracted"}).find("\"extract_layers\" must be set"), std::string::npos);

  auto run = [&](nlohmann::json c) { return error_of([&] { sl::finetune(c, "", torch::kCPU); }); };
  auto c = tiny_config("soft", 1);
  c["exits"] = "2,9";
  EXPECT_NE(run(c).find("layer 9 is outside the model's 1..5 layers"), std::string::npos) << run(c);
  c = tiny_config("soft", 1);
  c["exit_weights"] = {1.0, 2.0};
  EXPECT_NE(run(c).find("\"exit_weights\" has 2 values for 5 exits"), std::string::npos) << run(c);
}

TEST(Train, CosineScheduleWithWarmup) {
  EXPECT_DOUBLE_EQ(sl::lr_at(0, 100, 10, 1.0, 0.0), 0.0);
  EXPECT_DOUBLE_EQ(sl::lr_at(5, 100, 10, 1.0, 0.0), 0.5);
  EXPECT_DOUBLE_EQ(sl::lr_at(10, 100, 10, 1.0, 0.0), 1.0);
  EXPECT_NEAR(sl::lr_at(55, 100, 10, 1.0, 0.0), 0.5, 1e-12);
  EXPECT_NEAR(sl::lr_at(100, 100, 10, 1.0, 0.1), 0.1, 1e-12);
}

TEST(Train, LabelsCoverResponseTokensOnly) {
  auto ex = examples(3);
  sl::Batch b = sl::collate({&ex[0], &ex[1], &ex[2]}, torch::kCPU);
  int64_t want = 0;
  for (int64_t r = 0; r < 3; ++r)
    for (size_t t = 0; t + 1 < ex[r].tokens.size(); ++t) {
      const int64_t label = b.labels[r][t].item<int64_t>();
      if (ex[r].target[t + 1]) {
        EXPECT_EQ(label, ex[r].tokens[t + 1]);
        ++want;
      } else {
        EXPECT_EQ(label, -100);
      }
    }
  EXPECT_EQ(b.targets, want);
  EXPECT_EQ(b.labels.ge(0).sum().item<int64_t>(), want);
}

TEST(Train, LossIsTheResponseTokensNllAndRespondsToThem) {
  sl::Llama m = sl::load_model(sl_test::stories_model_dir());
  auto ex = examples(2);
  auto loss = [&](const std::vector<sl::Example>& e) {
    m->zero_grad();
    sl::Batch b = sl::collate({&e[0], &e[1]}, torch::kCPU);
    return sl::multi_exit_backward(m, b, {5}, {1.0}, (double)b.targets, 64, false)[5] / (double)b.targets;
  };
  // By hand: log-softmax of the full model over the target positions only.
  const double got = loss(ex);
  double manual = 0;
  int64_t n = 0;
  {
    torch::NoGradGuard g;
    for (const auto& e : ex) {
      Tensor t = torch::tensor(std::vector<int64_t>(e.tokens.begin(), e.tokens.end())).unsqueeze(0);
      Tensor lp = m->head(m->forward(t, {5})[0], 5)[0].log_softmax(-1);
      for (size_t i = 1; i < e.tokens.size(); ++i)
        if (e.target[i]) {
          manual -= lp[i - 1][e.tokens[i]].item<double>();
          ++n;
        }
    }
  }
  EXPECT_NEAR(got, manual / n, 1e-5);
  // A response token is part of the loss; the prompt positions are not.
  auto changed = ex;
  size_t last = changed[0].tokens.size() - 2;
  ASSERT_TRUE(changed[0].target[last]);
  changed[0].tokens[last] = (changed[0].tokens[last] + 7) % 512;
  EXPECT_GT(std::abs(loss(changed) - got), 1e-4);
  auto prompt_on = ex;
  for (auto& e : prompt_on) std::fill(e.target.begin() + 1, e.target.end(), 1);
  EXPECT_GT(std::abs(loss(prompt_on) - got), 1e-3);
}

TEST(Train, GradientAccumulationEqualsOneBigBatch) {
  auto ex = examples(4);
  sl::Llama a = sl::load_model(sl_test::stories_model_dir()), b = sl::load_model(sl_test::stories_model_dir());
  const std::vector<int> exits = {2, 3, 5};
  const std::vector<double> w = {1.0, 2.0, 1.0};
  sl::Batch big = sl::collate({&ex[0], &ex[1], &ex[2], &ex[3]}, torch::kCPU);
  sl::multi_exit_backward(a, big, exits, w, 4.0 * big.targets, 16, false);
  sl::Batch h1 = sl::collate({&ex[0], &ex[1]}, torch::kCPU), h2 = sl::collate({&ex[2], &ex[3]}, torch::kCPU);
  ASSERT_EQ(h1.targets + h2.targets, big.targets);
  sl::multi_exit_backward(b, h1, exits, w, 4.0 * big.targets, 1000, false);
  sl::multi_exit_backward(b, h2, exits, w, 4.0 * big.targets, 1000, false);
  auto ga = grads_of(a), gb = grads_of(b);
  for (auto& [name, g] : ga) EXPECT_LT(sl_test::max_abs_diff(g, gb[name]), 1e-5) << name;  // summation order differs
}

TEST(Train, ActivationCheckpointingGivesTheSameGradients) {
  auto ex = examples(2);
  sl::Llama a = sl::load_model(sl_test::stories_model_dir()), b = sl::load_model(sl_test::stories_model_dir());
  sl::Batch batch = sl::collate({&ex[0], &ex[1]}, torch::kCPU);
  auto la = sl::multi_exit_backward(a, batch, {1, 3, 5}, {1, 1, 1}, 3.0 * batch.targets, 64, false);
  auto lb = sl::multi_exit_backward(b, batch, {1, 3, 5}, {1, 1, 1}, 3.0 * batch.targets, 64, true);
  EXPECT_NEAR(la[3], lb[3], 1e-6);
  auto ga = grads_of(a), gb = grads_of(b);
  for (auto& [name, g] : ga) EXPECT_LT(sl_test::max_abs_diff(g, gb[name]), 1e-6) << name;
}

TEST(Train, SoftWithTheLastExitAloneIsSft) {
  auto soft = tiny_config("soft", 3);
  soft["exits"] = "5";
  auto sft = tiny_config("sft", 3);
  auto rs = sl::finetune(soft, "", torch::kCPU), rf = sl::finetune(sft, "", torch::kCPU);
  ASSERT_EQ(rs.losses.size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_NEAR(rs.losses[i], rf.losses[i], 1e-6);
  auto a = sl::load_model(rs.final_dir), b = sl::load_model(rf.final_dir);
  for (auto& p : a->named_parameters()) EXPECT_LT(sl_test::max_abs_diff(p.value(), b->named_parameters()[p.key()]), 1e-6);
}

TEST(Train, ResumedRunRepeatsTheUninterruptedOne) {
  auto c = tiny_config("soft", 6);
  c["train"]["grad_accum"] = 2;
  c["train"]["warmup_ratio"] = 0.3;
  c["exit_sample"] = 3;
  c["save"]["every"] = 3;
  c["save"]["keep_last"] = 1;
  auto full = sl::finetune(c, "", torch::kCPU);

  auto d = c;
  d["out_dir"] = sl_test::temp_dir("resume") + "/out";
  sl::FinetuneHooks stop;
  stop.stop_after = 4;  // "killed" after step 4; the last checkpoint is step 3
  auto first = sl::finetune(d, "", torch::kCPU, stop);
  ASSERT_EQ(first.losses.size(), 4u);
  EXPECT_TRUE(fs::exists(d["out_dir"].get<std::string>() + "/step-000003/trainer_state.json"));
  auto rest = sl::finetune(d, "auto", torch::kCPU);
  ASSERT_EQ(rest.losses.size(), 3u);  // steps 4..6 again from the step-3 checkpoint
  for (size_t i = 0; i < 3; ++i) EXPECT_NEAR(rest.losses[i], full.losses[3 + i], 1e-6) << "step " << 4 + i;
  // metrics.jsonl: one train line per step, the redone step 4 included once
  std::ifstream m(d["out_dir"].get<std::string>() + "/metrics.jsonl");
  std::vector<int64_t> steps;
  for (std::string line; std::getline(m, line);)
    if (auto j = nlohmann::json::parse(line); j["type"] == "train") steps.push_back(j["step"].get<int64_t>());
  EXPECT_EQ(steps, (std::vector<int64_t>{1, 2, 3, 4, 5, 6}));
  auto a = sl::load_model(full.final_dir), b = sl::load_model(rest.final_dir);
  for (auto& p : a->named_parameters()) EXPECT_LT(sl_test::max_abs_diff(p.value(), b->named_parameters()[p.key()]), 1e-6);
}

// bf16 weights and compute with fp32 master weights: every step's loss stays within 2% of the fp32
// run's, and the checkpoint is saved in BF16 (the dtype HF LLaMA 2 checkpoints use).
TEST(Train, Bf16StepsTrackFp32) {
  auto c = tiny_config("soft", 5);
  auto fp32 = sl::finetune(c, "", torch::kCPU);
  c["out_dir"] = sl_test::temp_dir("bf16") + "/out";
  c["train"]["precision"] = "bf16";
  auto bf16 = sl::finetune(c, "", torch::kCPU);
  ASSERT_EQ(bf16.losses.size(), 5u);
  for (size_t i = 0; i < 5; ++i) EXPECT_NEAR(bf16.losses[i], fp32.losses[i], 0.02 * fp32.losses[i]) << "step " << i + 1;
  EXPECT_LT(bf16.losses.back(), bf16.losses.front() - 0.1);  // and it learns
  sl::SafetensorsFile f(bf16.final_dir + "/model.safetensors");
  EXPECT_EQ(f.at("model.embed_tokens.weight").dtype, "BF16");
}

TEST(Train, IctTrainsOnlyTheExtraHeads) {
  auto c = tiny_config("ict", 4);
  c["exits"] = "2,4,5";
  auto r = sl::finetune(c, "", torch::kCPU);
  sl::Llama base = sl::load_model(sl_test::stories_model_dir()), ict = sl::load_model(r.final_dir);
  EXPECT_EQ(ict->config().ict_exits, (std::vector<int>{2, 4}));
  auto bp = base->named_parameters();
  for (auto& p : ict->named_parameters()) {
    if (p.key().rfind("ict_heads.", 0) == 0) continue;
    EXPECT_TRUE(torch::equal(p.value(), bp[p.key()])) << p.key() << " changed";
  }
  Tensor shared = base->head_weight(5);
  EXPECT_GT(sl_test::max_abs_diff(ict->head_weight(2), shared), 1e-4);  // trained
  EXPECT_TRUE(torch::equal(ict->head_weight(5), shared));                 // the last exit keeps the shared head
  EXPECT_TRUE(ict->has_ict_head(4));
}

TEST(Train, ExtractedKeepsTheFirstLayers) {
  auto c = tiny_config("extracted", 2);
  c["extract_layers"] = 3;
  auto r = sl::finetune(c, "", torch::kCPU);
  EXPECT_EQ(sl::load_model(r.final_dir)->config().n_layers, 3);
}

// The paper's central effect: with the same budget, SoFT makes intermediate sub-models usable while
// SFT leaves them far behind; SoFT also lowers every exit's validation loss.
TEST(Train, SoftMakesIntermediateExitsGoodWhereSftDoesNot) {
  auto soft_cfg = tiny_config("soft", 40), sft_cfg = tiny_config("sft", 40);
  sl::Llama base = sl::load_model(sl_test::stories_model_dir());
  sl::Tokenizer tok(sl_test::stories_model_dir() + "/tokenizer.model");
  sl::DataOptions o;
  o.format = "text";
  o.max_seq_len = 64;
  auto valid = sl::load_examples(soft_cfg["data"]["valid"].get<std::string>(), tok, o, nullptr);
  auto before = sl::validation_loss(base, valid, {1, 2, 3, 4, 5}, 8);
  auto soft = sl::finetune(soft_cfg, "", torch::kCPU), sft = sl::finetune(sft_cfg, "", torch::kCPU);
  auto s = sl::validation_loss(*std::make_unique<sl::Llama>(sl::load_model(soft.final_dir)), valid, {1, 2, 3, 4, 5}, 8);
  auto f = sl::validation_loss(*std::make_unique<sl::Llama>(sl::load_model(sft.final_dir)), valid, {1, 2, 3, 4, 5}, 8);
  for (int e = 1; e <= 5; ++e) {
    EXPECT_LT(s[e], before[e] - 0.1) << "SoFT did not improve exit " << e;
    if (e < 5) {
      EXPECT_LT(s[e], f[e] - 0.5) << "exit " << e << ": SoFT " << s[e] << " vs SFT " << f[e];
    }
  }
}

// ---- Hardening: precision, pairing, non-finite steps, resume, run directories ----

// bf16: the head (tied to the embeddings in stories260K), the final norm and every layer collect
// their gradients in fp32, so ~400 chunked backward passes over 2 micro-batches sum like one
// unchunked bf16 pass over the whole batch (bf16 accumulation drifted by 3-4% here).
TEST(TrainHardening, Bf16GradientsAccumulateInFp32) {
  auto ex = examples(4);
  sl::Llama chunked = sl::load_model(sl_test::stories_model_dir(), torch::kCPU, torch::kBFloat16);
  sl::Llama whole = sl::load_model(sl_test::stories_model_dir(), torch::kCPU, torch::kBFloat16);
  sl::Dist dist(sl::DistEnv{}, std::chrono::seconds(5));
  std::vector<std::pair<std::string, Tensor>> params;
  for (auto& p : chunked->named_parameters()) params.emplace_back(p.key(), p.value());
  sl::DistAdamW opt(params, sl::AdamWConfig{}, dist, false);
  const std::vector<int> exits = {2, 4, 5};
  const std::vector<double> w = {1.0, 1.0, 1.0};
  sl::Batch h1 = sl::collate({&ex[0], &ex[1]}, torch::kCPU), h2 = sl::collate({&ex[2], &ex[3]}, torch::kCPU);
  const double norm = 3.0 * (double)(h1.targets + h2.targets);
  ASSERT_GT(h1.targets + h2.targets, 60);
  sl::multi_exit_backward(chunked, h1, exits, w, norm, /*chunk=*/1, false);
  sl::multi_exit_backward(chunked, h2, exits, w, norm, /*chunk=*/1, false);
  // The reference: one backward pass over all positions at once (each gradient rounded once).
  sl::Batch all = sl::collate({&ex[0], &ex[1], &ex[2], &ex[3]}, torch::kCPU);
  sl::multi_exit_backward(whole, all, exits, w, norm, 100000, false);
  auto ref = whole->named_parameters();
  for (const char* name : {"model.embed_tokens.weight", "model.norm.weight", "model.layers.0.mlp.down_proj.weight"}) {
    const Tensor g = chunked->named_parameters()[name].grad();
    ASSERT_EQ(g.scalar_type(), torch::kFloat32) << name;
    const Tensor want = ref[name].grad().to(torch::kFloat32);
    const double rel = (g - want).norm().item<double>() / want.norm().item<double>();
    EXPECT_LT(rel, 0.01) << name;
  }
}

TEST(TrainHardening, ExitWeightsPairWithTheExitsAsListed) {
  auto c = tiny_config("soft", 1);
  c["exits"] = "5,2";
  c["exit_weights"] = {3.0, 1.0};  // exit 5 weighs 3
  auto r = sl::finetune(c, "", torch::kCPU);
  std::ifstream m(c["out_dir"].get<std::string>() + "/metrics.jsonl");
  std::string line;
  std::getline(m, line);
  const auto j = nlohmann::json::parse(line);
  const double l2 = j["exit_loss"]["2"], l5 = j["exit_loss"]["5"];
  EXPECT_NEAR(j["loss"].get<double>(), (3.0 * l5 + 1.0 * l2) / 4.0, 1e-9);
  EXPECT_GT(std::abs(l2 - l5), 0.1);  // so the pairing is visible
  c["exits"] = "2,5,2";
  c["exit_weights"] = {1.0, 1.0, 2.0};
  EXPECT_NE(error_of([&] { sl::finetune(c, "", torch::kCPU); }).find("layer 2 is listed twice"), std::string::npos);
}

TEST(TrainHardening, NonFiniteLossStopsOrIsSkipped) {
  const std::string dir = sl_test::temp_dir("nan") + "/model";
  {
    sl::Llama m = sl::load_model(sl_test::stories_model_dir());
    torch::NoGradGuard g;
    m->named_parameters()["model.layers.4.mlp.up_proj.weight"][0][0] = std::nan("");
    sl::save_model(m, dir, sl_test::stories_model_dir() + "/tokenizer.model");
  }
  auto c = tiny_config("soft", 2);
  c["model"] = dir;
  const std::string err = error_of([&] { sl::finetune(c, "", torch::kCPU); });
  EXPECT_NE(err.find("step 1: the training loss is nan"), std::string::npos) << err;
  EXPECT_NE(err.find("train.skip_nonfinite"), std::string::npos) << err;
  EXPECT_FALSE(fs::exists(c["out_dir"].get<std::string>() + "/final"));
  c["train"]["skip_nonfinite"] = true;
  auto r = sl::finetune(c, "", torch::kCPU);
  EXPECT_EQ(r.steps, 2);
  std::ifstream m(c["out_dir"].get<std::string>() + "/metrics.jsonl");
  int skipped = 0;
  for (std::string line; std::getline(m, line);) skipped += nlohmann::json::parse(line)["type"] == "skipped";
  EXPECT_EQ(skipped, 2);
  // Skipped steps leave the weights as they were (no NaN spread by an update).
  auto before = sl::load_model(dir), after = sl::load_model(r.final_dir);
  EXPECT_TRUE(torch::equal(before->named_parameters()["model.layers.0.self_attn.q_proj.weight"],
                           after->named_parameters()["model.layers.0.self_attn.q_proj.weight"]));
}

TEST(TrainHardening, ResumeRefusesAChangedConfigUnlessAsked) {
  auto c = tiny_config("soft", 4);
  c["save"]["every"] = 2;
  sl::FinetuneHooks stop;
  stop.stop_after = 3;
  sl::finetune(c, "", torch::kCPU, stop);
  auto changed = c;
  changed["train"]["max_steps"] = 6;
  changed["save"]["every"] = 3;  // how a run is saved may change freely
  const std::string err = error_of([&] { sl::finetune(changed, "auto", torch::kCPU); });
  EXPECT_NE(err.find("the config differs"), std::string::npos) << err;
  EXPECT_NE(err.find("/train/max_steps: 6"), std::string::npos) << err;
  EXPECT_EQ(err.find("/save/every"), std::string::npos) << err;
  sl::FinetuneHooks allow;
  allow.resume_with_changes = true;
  EXPECT_EQ(sl::finetune(changed, "auto", torch::kCPU, allow).steps, 6);
}

// A saved AdamW step count that is not a count >= 1 is refused, naming the file and the parameter.
TEST(TrainHardening, ResumeRefusesABadAdamStepCount) {
  auto c = tiny_config("soft", 4);
  c["save"]["every"] = 2;
  sl::FinetuneHooks stop;
  stop.stop_after = 3;
  sl::finetune(c, "", torch::kCPU, stop);
  const std::string state = c["out_dir"].get<std::string>() + "/step-000002/trainer_state.json";
  const nlohmann::json good = nlohmann::json::parse(sl_test::read_file(state));
  const std::string param = good["adam_steps"].begin().key();
  for (const nlohmann::json& bad : {nlohmann::json(0), nlohmann::json(-3), nlohmann::json("2"), nlohmann::json(1.5)}) {
    nlohmann::json j = good;
    j["adam_steps"][param] = bad;
    sl_test::write_file(state, j.dump());
    const std::string err = error_of([&] { sl::finetune(c, "auto", torch::kCPU); });
    EXPECT_NE(err.find(state + ": adam_steps \"" + param + "\" is " + bad.dump() + ", not a step count >= 1"),
              std::string::npos)
        << err;
  }
}

// bf16 runs resume exactly too: the extracted model keeps the run's dtype.
TEST(TrainHardening, Bf16ResumeIsExactForSoftAndExtracted) {
  for (const std::string method : {"soft", "extracted"}) {
    auto c = tiny_config(method, 4);
    c["train"]["precision"] = "bf16";
    c["save"]["every"] = 2;
    if (method == "extracted") c["extract_layers"] = 3;
    auto full = sl::finetune(c, "", torch::kCPU);
    auto d = c;
    d["out_dir"] = sl_test::temp_dir("resume-bf16") + "/out";
    sl::FinetuneHooks stop;
    stop.stop_after = 3;
    sl::finetune(d, "", torch::kCPU, stop);
    auto rest = sl::finetune(d, "auto", torch::kCPU);
    ASSERT_EQ(rest.losses.size(), 2u) << method;
    for (size_t i = 0; i < 2; ++i) EXPECT_EQ(rest.losses[i], full.losses[2 + i]) << method << " step " << 3 + i;
    auto a = sl::load_model(full.final_dir, torch::kCPU, torch::kBFloat16);
    auto b = sl::load_model(rest.final_dir, torch::kCPU, torch::kBFloat16);
    for (auto& p : a->named_parameters()) EXPECT_TRUE(torch::equal(p.value(), b->named_parameters()[p.key()])) << method << p.key();
  }
}

TEST(TrainHardening, StepDirectoriesCompareAsNumbersAndPruneAtomically) {
  const std::string out = sl_test::temp_dir("steps");
  for (const char* name : {"step-999999", "step-1000000", "step-000007"}) {
    fs::create_directories(out + "/" + name);
    sl_test::write_file(out + "/" + name + "/trainer_state.json", "{}");
  }
  fs::create_directories(out + "/.step-000008.tmp-4242");  // a killed writer's leftovers
  fs::create_directories(out + "/.step-000007.trash-4242");
  EXPECT_EQ(fs::path(sl::latest_checkpoint(out)).filename(), "step-1000000");
  EXPECT_EQ(sl::step_of_dir_name("step-1000000"), 1000000);
  EXPECT_EQ(sl::step_of_dir_name("step-12x"), -1);
  sl::prune_checkpoints(out, 1);
  EXPECT_TRUE(fs::exists(out + "/step-1000000"));
  EXPECT_FALSE(fs::exists(out + "/step-999999"));
  EXPECT_FALSE(fs::exists(out + "/step-000007"));
  sl::remove_stale_temporaries(out);
  std::vector<std::string> left;
  for (auto& e : fs::directory_iterator(out)) left.push_back(e.path().filename().string());
  EXPECT_EQ(left, std::vector<std::string>{"step-1000000"});
}
