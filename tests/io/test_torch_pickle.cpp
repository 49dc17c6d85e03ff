// torch.save files through the restricted unpickler: a real pytorch_model.bin against torch.load's
// reading of it, every kind of tensor a state dict holds, zip variants, and hostile files
// (fixtures: tests/reference/make_torch_fixtures.py).
#include <gtest/gtest.h>

#include <filesystem>

#include "sortedllama/io/checkpoint.h"
#include "sortedllama/io/safetensors.h"
#include "sortedllama/io/torch_pickle.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace {
std::string fixture(const std::string& name) { return sl_test::source_dir() + "/tests/data/torch_bin/" + name; }

torch::Tensor expected_tensor(const sl::SafetensorsFile& f, const std::string& name) {
  const auto& v = f.at(name);
  return torch::from_blob(const_cast<uint8_t*>(v.data), v.shape, v.dtype == "I64" ? torch::kInt64 : torch::kFloat64)
      .clone();
}

std::string open_error(const std::string& path) {
  try {
    sl::TorchFile f(path);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(TorchPickle, TinyRandomPytorchModelBinGivesTorchLoadsLogits) {
  const std::string dir = sl_test::shared_dir() + "/models/tiny-random-llama-hf";
  ASSERT_TRUE(fs::exists(dir + "/pytorch_model.bin"));
  ASSERT_FALSE(fs::exists(dir + "/model.safetensors"));
  sl::Llama m = sl::load_model(dir);
  sl::SafetensorsFile ref(fixture("tiny_random_expected.safetensors"));
  torch::Tensor tokens = expected_tensor(ref, "tokens").unsqueeze(0);
  torch::NoGradGuard g;
  const int L = (int)m->config().n_layers;
  torch::Tensor logits = m->head(m->forward(tokens, {L})[0], L)[0];  // [T, V]
  ASSERT_EQ(logits.size(1), 32000);
  torch::Tensor head = expected_tensor(ref, "logits_head");
  const double head_diff = sl_test::max_abs_diff(logits.narrow(1, 0, head.size(1)), head);
  const double lse_diff = sl_test::max_abs_diff(torch::logsumexp(logits.to(torch::kFloat64), -1), expected_tensor(ref, "logsumexp"));
  char measured[96];
  std::snprintf(measured, sizeof measured, "max |logit diff| %.3g, max |logsumexp diff| %.3g", head_diff, lse_diff);
  RecordProperty("measured", measured);
  EXPECT_LT(head_diff, 1e-5);
  EXPECT_LT(lse_diff, 1e-5);
}

TEST(TorchPickle, EveryKindOfStoredTensorReadsAsTorchSavedIt) {
  sl::SafetensorsFile ref(fixture("features_expected.safetensors"));
  // torch's own writer (aligned), Python's zipfile (unaligned storages), zip64 fields everywhere.
  for (const char* file : {"features.bin", "features_zipfile.bin", "features_zip64.bin"}) {
    sl::TorchFile f(fixture(file));
    ASSERT_EQ(f.names().size(), ref.tensors().size()) << file;
    EXPECT_EQ(f.names().front(), "param") << file;  // the file's order, not sorted
    EXPECT_EQ(f.names().back(), "late_view") << file;
    for (const std::string& name : f.names()) {
      torch::Tensor t = f.tensor(name);
      EXPECT_TRUE(t.to(torch::kFloat64).equal(expected_tensor(ref, name))) << file << " " << name;
    }
    EXPECT_EQ(f.tensor("half").scalar_type(), torch::kFloat16);
    EXPECT_EQ(f.tensor("bf16").scalar_type(), torch::kBFloat16);
    EXPECT_EQ(f.tensor("double").scalar_type(), torch::kFloat64);
    EXPECT_EQ(f.tensor("param").scalar_type(), torch::kFloat32);
    EXPECT_EQ(f.tensor("transposed").strides(), c10::IntArrayRef({1, 6})) << file;
    EXPECT_EQ(f.tensor("empty").sizes(), c10::IntArrayRef({0, 3})) << file;
    EXPECT_FALSE(f.contains("_metadata"));
  }
  sl::TorchFile s(fixture("short_unicode.bin"));
  EXPECT_TRUE(s.tensor("w").equal(torch::tensor({2.0f, 3.0f, 4.0f})));
  try {
    s.tensor("nope");
    ADD_FAILURE() << "no error for a missing tensor";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("short_unicode.bin: missing tensor nope"), std::string::npos) << e.what();
  }
}

TEST(TorchPickle, HostileFilesAreRefusedNamingTheFile) {
  const std::pair<const char*, const char*> cases[] = {
      {"hostile_global.bin", "global posix.system is not allowed"},
      {"hostile_reduce_exec.bin", "global __builtin__.exec is not allowed"},  // protocol 2 names builtins so
      {"hostile_ordereddict_args.bin", "OrderedDict called with arguments"},
      {"hostile_not_a_storage.bin", "argument 0 (storage) is not a storage"},
      {"hostile_past_storage.bin", "reaches element 7, past its storage's 4 (tensor w)"},
      {"hostile_short_storage.bin", "holds 12 bytes, but the pickle declares 4 elements of 4 bytes (tensor w)"},
      {"hostile_huge_size.bin", "are impossible (tensor w)"},
      {"hostile_huge_storage.bin", "declares 4611686018427387904 elements"},
      {"hostile_missing_storage.bin", "its storage archive/data/7 is missing (tensor w)"},
      {"hostile_compressed.bin", "compressed (method 8)"},
  };
  for (const auto& [file, want] : cases) {
    const std::string msg = open_error(fixture(file));
    EXPECT_EQ(msg.rfind(fixture(file) + ": ", 0), 0u) << file << ": " << msg;
    EXPECT_NE(msg.find(want), std::string::npos) << file << ": " << msg;
  }
  EXPECT_FALSE(fs::exists("/tmp/sortedllama-pickle-ran"));

  // Truncated copies of a real file: the zip directory is gone or runs past the end.
  const std::string real = sl_test::shared_dir() + "/models/tiny-random-llama-hf/pytorch_model.bin";
  const std::string bytes = sl_test::read_file(real);
  const std::string dir = sl_test::temp_dir("pickle");
  for (size_t keep : {(size_t)0, (size_t)21, (size_t)3000, bytes.size() / 2, bytes.size() - 30, bytes.size() - 1}) {
    const std::string cut = dir + "/cut.bin";
    sl_test::write_file(cut, bytes.substr(0, keep));
    const std::string msg = open_error(cut);
    EXPECT_EQ(msg.rfind(cut + ": ", 0), 0u) << keep << ": " << msg;
    EXPECT_NE(msg.find("truncated"), std::string::npos) << keep << ": " << msg;
  }

  // Through load_model, an HF directory's pytorch_model.bin is named in the error.
  const std::string model = dir + "/model";
  fs::create_directories(model);
  fs::copy_file(sl_test::shared_dir() + "/models/tiny-random-llama-hf/config.json", model + "/config.json");
  fs::copy_file(fixture("hostile_global.bin"), model + "/pytorch_model.bin");
  try {
    sl::load_model(model);
    ADD_FAILURE() << "hostile pytorch_model.bin loaded";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find(model + "/pytorch_model.bin: "), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("posix.system"), std::string::npos) << e.what();
  }
}
