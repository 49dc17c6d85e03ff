// safetensors: round trips and every kind of hostile header.
#include <gtest/gtest.h>

#include "sortedllama/io/safetensors.h"
#include "test_util.h"

namespace {
// A file from a raw header string and a data section.
std::string make_file(const std::string& dir, const std::string& header, size_t data_bytes, int64_t claimed_len = -1) {
  std::string bytes(8, '\0');
  uint64_t n = claimed_len >= 0 ? (uint64_t)claimed_len : header.size();
  for (int i = 0; i < 8; ++i) bytes[i] = (char)(n >> (8 * i));
  bytes += header;
  bytes.append(data_bytes, '\0');
  std::string path = dir + "/bad.safetensors";
  sl_test::write_file(path, bytes);
  return path;
}

std::string error_of(const std::string& path) {
  try {
    sl::SafetensorsFile f(path);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

void expect_error(const std::string& header, size_t data, const std::string& needle, int64_t claimed = -1) {
  std::string dir = sl_test::temp_dir("st");
  std::string path = make_file(dir, header, data, claimed);
  std::string msg = error_of(path);
  EXPECT_NE(msg.find(path), std::string::npos) << "message must name the file: " << msg;
  EXPECT_NE(msg.find(needle), std::string::npos) << "expected '" << needle << "' in: " << msg;
}
}  // namespace

TEST(Safetensors, RoundTripKeepsBytesShapesAndMetadata) {
  std::string dir = sl_test::temp_dir("st");
  std::vector<float> a = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f, -0.125f};
  std::vector<uint16_t> b = {0x3f80, 0xc000, 0x0001};
  std::vector<sl::TensorBlob> blobs = {{"a.weight", "F32", {2, 3}, a.data(), a.size() * 4},
                                       {"b", "BF16", {3}, b.data(), b.size() * 2},
                                       {"empty", "F32", {0, 4}, a.data(), 0}};
  sl::write_safetensors(dir + "/x.safetensors", blobs, {{"format", "pt"}, {"note", "hi"}});
  sl::SafetensorsFile f(dir + "/x.safetensors");
  ASSERT_EQ(f.tensors().size(), 3u);
  EXPECT_EQ(f.metadata().at("note"), "hi");
  const auto& ta = f.at("a.weight");
  EXPECT_EQ(ta.dtype, "F32");
  EXPECT_EQ(ta.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(0, std::memcmp(ta.data, a.data(), 24));
  EXPECT_EQ(0, std::memcmp(f.at("b").data, b.data(), 6));
  EXPECT_EQ(f.at("empty").nbytes, 0u);
  // Header padded to 8 bytes so that the data section is aligned.
  std::string raw = sl_test::read_file(dir + "/x.safetensors");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | (uint8_t)raw[i];
  EXPECT_EQ(n % 8, 0u);
}

TEST(Safetensors, HostileHeadersGiveOneClearError) {
  expect_error("{}", 0, "header length 1000 runs past the end", 1000);
  expect_error("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]", 8, "malformed JSON header");
  expect_error("[1, 2]", 0, "not a JSON object");
  expect_error(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", 8, "past the data section");
  expect_error(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [8, 4]}})", 16, "reversed");
  expect_error(R"({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}})", 16, "needs 12 bytes");
  expect_error(R"({"a": {"dtype": "Q4", "shape": [4], "data_offsets": [0, 16]}})", 16, "unknown dtype \"Q4\"");
  expect_error(R"({"a": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}})", 16, "not a non-negative integer");
  expect_error(R"({"a": {"dtype": "F32", "shape": [4]}})", 16, "needs dtype, shape and data_offsets");
  expect_error(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                   "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}})",
               24, "overlap");
  expect_error(R"({"a": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 16]}})", 16,
               "too large");
  expect_error(R"({"__metadata__": {"k": 1}})", 0, "not a string");
  // Shorter than the length prefix itself.
  std::string dir = sl_test::temp_dir("st");
  sl_test::write_file(dir + "/tiny.safetensors", "abc");
  EXPECT_NE(error_of(dir + "/tiny.safetensors").find("truncated"), std::string::npos);
  EXPECT_NE(error_of(dir + "/missing.safetensors").find("cannot open"), std::string::npos);
}

TEST(Safetensors, MissingTensorIsNamed) {
  std::string dir = sl_test::temp_dir("st");
  float x = 1;
  sl::write_safetensors(dir + "/x.safetensors", {{"a", "F32", {1}, &x, 4}});
  sl::SafetensorsFile f(dir + "/x.safetensors");
  try {
    f.at("model.norm.weight");
    FAIL();
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("missing tensor model.norm.weight"), std::string::npos);
  }
}

TEST(Safetensors, HugeDimensionsAreRejectedWhateverTheProduct) {
  // A zero dimension keeps the product at zero, so only a per-dimension cap catches these; from
  // 2^63 on they would become negative int64_t dimensions.
  for (const char* d : {"4611686018427387904", "9223372036854775808", "18446744073709551615"})
    expect_error(std::string(R"({"a": {"dtype": "F32", "shape": [0, )") + d + R"(], "data_offsets": [0, 0]}})", 0,
                 std::string("shape dimension ") + d + " is not below 2^62 (tensor a)");
  // Just below the cap, an empty tensor still loads.
  const std::string dir = sl_test::temp_dir("st");
  sl::SafetensorsFile f(
      make_file(dir, R"({"a": {"dtype": "F32", "shape": [0, 4611686018427387903], "data_offsets": [0, 0]}})", 0));
  EXPECT_EQ(f.at("a").shape, (std::vector<int64_t>{0, (int64_t{1} << 62) - 1}));
}

TEST(Safetensors, DeeplyNestedHeaderValuesGiveAnErrorNotAStackOverflow) {
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  expect_error(R"({"a": {"dtype": "F32", "shape": [)" + deep + R"(], "data_offsets": [0, 4]}})", 4,
               "shape holds an array, not a non-negative integer (tensor a)");
}
