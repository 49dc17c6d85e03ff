// Helpers of the training tests: real Alpaca slices, a tiny stories260K run config, errors as text.
#pragma once
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

#include "sortedllama/data/examples.h"
#include "sortedllama/io/tokenizer.h"
#include "sortedllama/train/config.h"
#include "test_util.h"

// inline: each test file uses some of them.
namespace {
// The first n Alpaca records of the real data set, as JSONL; as_text keeps only their outputs as
// {"text": ...} records (short sequences for the tiny model, whose tokenizer spells the Alpaca
// template in ~100 byte pieces).
inline std::string alpaca_slice(size_t first, size_t n, bool as_text = false) {
  static std::map<std::tuple<size_t, size_t, bool>, std::string> made;
  auto& path = made[{first, n, as_text}];
  if (path.empty()) {
    static nlohmann::json all = [] {
      std::ifstream f(sl_test::shared_dir() + "/data/alpaca/alpaca_data_cleaned.json");
      return nlohmann::json::parse(f);
    }();
    path = sl_test::temp_dir("alpaca") + "/slice.jsonl";
    std::ofstream out(path);
    for (size_t i = first; i < first + n; ++i)
      out << (as_text ? nlohmann::json{{"text", all[i]["output"]}} : all[i]).dump() << "\n";
  }
  return path;
}

// A config training the converted stories260K (5 layers) on an Alpaca slice for a few steps.
inline nlohmann::json tiny_config(const std::string& method, int64_t steps) {
  nlohmann::json c = sl::resolve_train_config("", {});
  c["model"] = sl_test::stories_model_dir();
  c["method"] = method;
  c["exits"] = "all";
  c["out_dir"] = sl_test::temp_dir("run") + "/out";
  c["data"]["train"] = alpaca_slice(0, 64, true);
  c["data"]["valid"] = alpaca_slice(1000, 24, true);
  c["data"]["format"] = "text";
  c["data"]["max_seq_len"] = 64;
  c["train"]["batch_size"] = 8;
  c["train"]["lr"] = 3e-3;
  c["train"]["max_steps"] = steps;
  c["train"]["warmup_ratio"] = 0.0;
  c["log"]["every"] = 1000;
  return c;
}

inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

inline std::vector<sl::Example> examples(size_t n) {
  sl::Tokenizer tok(sl_test::stories_model_dir() + "/tokenizer.model");
  sl::DataOptions o;
  o.max_seq_len = 256;
  auto ex = sl::load_examples(alpaca_slice(0, 64), tok, o, nullptr);
  ex.resize(n);
  return ex;
}
}  // namespace
