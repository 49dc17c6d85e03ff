// HF checkpoint directories: save/load round trips, dtypes, shards, atomic writes, bad inputs.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <limits>

#include "sortedllama/io/checkpoint.h"
#include "sortedllama/util/files.h"
#include "sortedllama/io/safetensors.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace {
sl::ModelConfig small_config() {
  sl::ModelConfig c;
  c.dim = 16;
  c.hidden_dim = 40;
  c.n_layers = 3;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.vocab_size = 50;
  c.max_seq_len = 32;
  return c;
}

sl::Llama random_model(sl::ModelConfig c = small_config()) {
  sl::Llama m(c);
  m->init_weights(0.5, 7);
  return m;
}

void expect_same_params(sl::Llama& a, sl::Llama& b, double tol) {
  auto pa = a->named_parameters(), pb = b->named_parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (auto& p : pa) EXPECT_LE(sl_test::max_abs_diff(p.value(), pb[p.key()]), tol) << p.key();
}

std::string load_error(const std::string& dir) {
  try {
    sl::load_model(dir);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

nlohmann::json read_json(const std::string& p) {
  std::ifstream f(p);
  return nlohmann::json::parse(f);
}
void write_json(const std::string& p, const nlohmann::json& j) { sl_test::write_file(p, j.dump()); }
}  // namespace

TEST(Checkpoint, Fp32RoundTripIsExact) {
  auto m = random_model();
  std::string dir = sl_test::temp_dir("ck") + "/m";
  sl::save_model(m, dir, "");
  EXPECT_TRUE(fs::exists(dir + "/model.safetensors"));
  auto back = sl::load_model(dir);
  expect_same_params(m, back, 0.0);
}

TEST(Checkpoint, Bf16AndF16LoadAsRoundedWeights) {
  auto m = random_model();
  for (auto dt : {torch::kBFloat16, torch::kFloat16}) {
    std::string dir = sl_test::temp_dir("ck") + "/m";
    sl::save_model(m, dir, "", dt);
    EXPECT_EQ(read_json(dir + "/config.json")["torch_dtype"], dt == torch::kBFloat16 ? "bfloat16" : "float16");
    sl::SafetensorsFile f(dir + "/model.safetensors");
    EXPECT_EQ(f.at("model.norm.weight").dtype, dt == torch::kBFloat16 ? "BF16" : "F16");
    auto back = sl::load_model(dir);  // converted to fp32 on load
    for (auto& p : m->named_parameters())
      EXPECT_EQ(sl_test::max_abs_diff(back->named_parameters()[p.key()], p.value().to(dt).to(torch::kFloat32)), 0.0)
          << p.key();
  }
}

TEST(Checkpoint, ShardedWriteHasAnIndexAndLoadsBack) {
  auto m = random_model();
  std::string dir = sl_test::temp_dir("ck") + "/m";
  sl::save_model(m, dir, "", torch::kFloat32, 4000);  // forces several shards
  auto index = read_json(dir + "/model.safetensors.index.json");
  int64_t total = 0;
  for (auto& p : m->parameters()) total += p.numel() * 4;
  EXPECT_EQ(index["metadata"]["total_size"].get<int64_t>(), total);
  EXPECT_EQ(index["weight_map"].size(), m->named_parameters().size());
  EXPECT_FALSE(fs::exists(dir + "/model.safetensors"));
  int shards = 0;
  for (auto& e : fs::directory_iterator(dir)) shards += e.path().filename().string().rfind("model-", 0) == 0;
  EXPECT_GT(shards, 1);
  char last[64];
  std::snprintf(last, sizeof(last), "/model-%05d-of-%05d.safetensors", shards, shards);
  EXPECT_TRUE(fs::exists(dir + last)) << last;
  auto back = sl::load_model(dir);
  expect_same_params(m, back, 0.0);
}

TEST(Checkpoint, TiedEmbeddingsHaveNoLmHead) {
  auto c = small_config();
  c.tie_embeddings = true;
  auto m = random_model(c);
  std::string dir = sl_test::temp_dir("ck") + "/m";
  sl::save_model(m, dir, "");
  sl::SafetensorsFile f(dir + "/model.safetensors");
  EXPECT_FALSE(f.contains("lm_head.weight"));
  auto back = sl::load_model(dir);
  EXPECT_TRUE(torch::equal(back->head_weight(3), back->body->embed_tokens->weight));
}

TEST(Checkpoint, EmbeddingRowsBeyondTheTokenizerAreAccepted) {
  auto c = small_config();
  c.vocab_size = 51;  // like PandaLM-7B's extra [PAD] row
  auto m = random_model(c);
  std::string dir = sl_test::temp_dir("ck") + "/m";
  sl::save_model(m, dir, "");
  EXPECT_EQ(sl::load_model(dir)->config().vocab_size, 51);
}

TEST(Checkpoint, BadDirectoriesNameTheFileAndTensorOrKey) {
  auto m = random_model();
  std::string base = sl_test::temp_dir("ck");
  auto fresh = [&](const std::string& name) {
    std::string d = base + "/" + name;
    sl::save_model(m, d, "");
    return d;
  };
  // Missing config key and impossible values.
  std::string d = fresh("nokey");
  auto cfg = read_json(d + "/config.json");
  cfg.erase("num_hidden_layers");
  write_json(d + "/config.json", cfg);
  EXPECT_NE(load_error(d).find("config.json: missing required key \"num_hidden_layers\""), std::string::npos) << load_error(d);

  d = fresh("heads");
  cfg = read_json(d + "/config.json");
  cfg["num_key_value_heads"] = 3;
  write_json(d + "/config.json", cfg);
  EXPECT_NE(load_error(d).find("not a multiple of num_key_value_heads 3"), std::string::npos) << load_error(d);

  d = fresh("negative");
  cfg = read_json(d + "/config.json");
  cfg["hidden_size"] = -16;
  write_json(d + "/config.json", cfg);
  EXPECT_NE(load_error(d).find("\"hidden_size\" must be positive"), std::string::npos) << load_error(d);

  d = fresh("type");
  cfg = read_json(d + "/config.json");
  cfg["vocab_size"] = "fifty";
  write_json(d + "/config.json", cfg);
  EXPECT_NE(load_error(d).find("\"vocab_size\" has the wrong type"), std::string::npos) << load_error(d);

  d = fresh("json");
  sl_test::write_file(d + "/config.json", "{\"hidden_size\": 16,");
  EXPECT_NE(load_error(d).find("config.json: malformed JSON"), std::string::npos) << load_error(d);

  // A shape that contradicts config.json.
  d = fresh("shape");
  cfg = read_json(d + "/config.json");
  cfg["intermediate_size"] = 48;
  write_json(d + "/config.json", cfg);
  std::string msg = load_error(d);
  EXPECT_NE(msg.find("model.layers.0.mlp.gate_proj.weight has shape [40, 16]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("implies [48, 16]"), std::string::npos) << msg;

  // A missing tensor.
  d = fresh("missing");
  {
    sl::SafetensorsFile f(d + "/model.safetensors");
    std::vector<sl::TensorBlob> keep;
    for (auto& [name, t] : f.tensors())
      if (name != "model.layers.2.mlp.up_proj.weight") keep.push_back({name, t.dtype, t.shape, t.data, t.nbytes});
    sl::write_safetensors(d + "/model.new", keep);
  }
  fs::rename(d + "/model.new", d + "/model.safetensors");
  EXPECT_NE(load_error(d).find("missing tensor model.layers.2.mlp.up_proj.weight"), std::string::npos) << load_error(d);

  // A truncated weights file.
  d = fresh("truncated");
  fs::resize_file(d + "/model.safetensors", fs::file_size(d + "/model.safetensors") - 100);
  msg = load_error(d);
  EXPECT_NE(msg.find("model.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;

  // Index naming a file outside the directory.
  d = fresh("index");
  write_json(d + "/model.safetensors.index.json", {{"weight_map", {{"lm_head.weight", "../evil.safetensors"}}}});
  EXPECT_NE(load_error(d).find("not a file in"), std::string::npos) << load_error(d);

  EXPECT_NE(load_error(base + "/nothing").find("not a model directory"), std::string::npos);
  fs::create_directories(base + "/empty");
  EXPECT_NE(load_error(base + "/empty").find("no config.json"), std::string::npos);
}

TEST(Checkpoint, ConfigSizesTheWeightsDoNotHoldFailBeforeAnyAllocation) {
  auto m = random_model();
  const std::string base = sl_test::temp_dir("ck");
  auto error_with = [&](const char* key, const nlohmann::json& value) {
    const std::string d = base + "/" + key;
    sl::save_model(m, d, "");
    auto cfg = read_json(d + "/config.json");
    cfg[key] = value;
    write_json(d + "/config.json", cfg);
    return load_error(d);
  };
  // Building the model first would construct 2^30 layers, or allocate terabytes and fail with a
  // bare allocator error.
  std::string msg = error_with("num_hidden_layers", int64_t{1} << 30);
  EXPECT_NE(msg.find("model.safetensors: missing tensor model.layers.3.self_attn.q_proj.weight"), std::string::npos) << msg;
  msg = error_with("intermediate_size", int64_t{1} << 40);
  EXPECT_NE(msg.find("model.layers.0.mlp.gate_proj.weight has shape [40, 16]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("config.json implies [1099511627776, 16]"), std::string::npos) << msg;
  msg = error_with("vocab_size", std::numeric_limits<int64_t>::max());
  EXPECT_NE(msg.find("model.embed_tokens.weight has shape [50, 16]"), std::string::npos) << msg;
}

TEST(Config, IntegerKeysTakeOnlyExactIntegers) {
  const nlohmann::json base = small_config().to_json();
  auto error_with = [&](const char* key, const nlohmann::json& value) {
    nlohmann::json j = base;
    j[key] = value;
    try {
      sl::ModelConfig::from_json(j, "m/config.json");
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  // JSON's numbers would convert silently: 64.5 to 64, 2^64 - 1 to -1, 2^32 + 1 to the int 1.
  EXPECT_EQ(error_with("hidden_size", 64.5), "m/config.json: key \"hidden_size\" must be an integer, got 64.5");
  EXPECT_EQ(error_with("num_hidden_layers", 4.9), "m/config.json: key \"num_hidden_layers\" must be an integer, got 4.9");
  EXPECT_EQ(error_with("vocab_size", 50.0), "m/config.json: key \"vocab_size\" must be an integer, got 50.0");
  EXPECT_EQ(error_with("eos_token_id", std::numeric_limits<uint64_t>::max()),
            "m/config.json: key \"eos_token_id\" is out of range, got 18446744073709551615");
  EXPECT_EQ(error_with("num_attention_heads", "4"), "m/config.json: key \"num_attention_heads\" has the wrong type (string)");
  EXPECT_EQ(error_with("sortedllama", {{"ict_exits", {1, 4294967297}}}),
            "m/config.json: an entry of sortedllama.ict_exits is out of range, got 4294967297");
  EXPECT_EQ(error_with("sortedllama", {{"ict_exits", nlohmann::json::array({1.5})}}),
            "m/config.json: an entry of sortedllama.ict_exits must be an integer, got 1.5");
  EXPECT_EQ(error_with("hidden_size", 32), "");
  EXPECT_EQ(error_with("sortedllama", {{"ict_exits", {1, 2}}}), "");
}

TEST(Checkpoint, AtomicWriteKeepsTheOldDirectoryWhenSavingFails) {
  auto m = random_model();
  std::string dir = sl_test::temp_dir("ck") + "/final";
  sl::save_model(m, dir, "");
  const std::string before = sl_test::read_file(dir + "/model.safetensors");
  EXPECT_THROW(sl::write_dir_atomically(dir,
                                        [&](const std::string& tmp) {
                                          sl::write_model_files(m, tmp, "");
                                          throw std::runtime_error("killed mid-save");
                                        }),
               std::runtime_error);
  EXPECT_EQ(sl_test::read_file(dir + "/model.safetensors"), before);
  sl::load_model(dir);
  // No temporary directory is left behind, and a successful save replaces the old one.
  for (auto& e : fs::directory_iterator(fs::path(dir).parent_path()))
    EXPECT_EQ(e.path().filename(), "final");
  auto other = random_model();
  other->init_weights(0.5, 99);
  sl::save_model(other, dir, "");
  auto back = sl::load_model(dir);
  expect_same_params(other, back, 0.0);
}
