// The tokenizer module and libtorch in one process (the start-up crash stays fixed), and decoding.
#include <gtest/gtest.h>

#include "sortedllama/util/runtime.h"
#include "sortedllama/io/tokenizer.h"
#include "test_util.h"

namespace {
std::string llama_tokenizer() { return sl_test::shared_dir() + "/models/llama2-tokenizer/tokenizer.model"; }
}  // namespace

TEST(Tokenizer, LlamaIdsWithLibtorchInTheSameProcess) {
  torch::Tensor a = torch::randn({64, 64});
  torch::Tensor before = torch::matmul(a, a);
  sl::Tokenizer tok(llama_tokenizer());
  EXPECT_EQ(tok.encode("Hello world, how are you?", true),
            (std::vector<int>{1, 15043, 3186, 29892, 920, 526, 366, 29973}));
  EXPECT_EQ(tok.vocab_size(), 32000);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_TRUE(torch::equal(torch::matmul(a, a), before));
}

TEST(Tokenizer, DecodeMatchesSentencepieceOnBytesAndSpaces) {
  sl::Tokenizer tok(llama_tokenizer());
  for (std::string text : {"Hello world", "naïve café 日本語 🦙!", "  two leading spaces", "tabs\tand\nnewlines",
                           "x = 1; // code"}) {
    auto ids = tok.encode(text, false);
    EXPECT_EQ(tok.decode(ids), text);
  }
  // 🦙 is not in the vocabulary: it becomes four byte pieces <0xF0><0x9F><0xA6><0x99>.
  auto ids = tok.encode("🦙", false);
  int bytes = 0;
  for (int id : ids) bytes += tok.piece(id).rfind("<0x", 0) == 0;
  EXPECT_EQ(bytes, 4);
  // The leading space marker of the first piece is dropped, as sentencepiece does.
  EXPECT_EQ(tok.piece(tok.encode("Once", false)[0]), "▁Once");
  EXPECT_EQ(tok.decode(tok.encode("Once", false)), "Once");
  EXPECT_EQ(tok.encode("a", true, true).back(), 2);
}

TEST(Tokenizer, BadFilesAndIdsGiveClearErrors) {
  std::string dir = sl_test::temp_dir("tok");
  sl_test::write_file(dir + "/broken.model", "not a sentencepiece model");
  try {
    sl::Tokenizer t(dir + "/broken.model");
    FAIL();
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("broken.model"), std::string::npos) << e.what();
  }
  sl::Tokenizer tok(llama_tokenizer());
  // An id past the pieces (a checkpoint's extra [PAD] row) has no text, and never aborts decoding.
  EXPECT_EQ(tok.decode({15043, 32000, 3186}), tok.decode({15043, 3186}));
  EXPECT_EQ(tok.decode({-1, 32001}), "");
}

TEST(Runtime, OptimizedBlasAndThreadCount) {
  EXPECT_TRUE(sl::blas_is_optimized()) << sl::blas_description();
  EXPECT_EQ(sl::init_threads(0), (int)std::max(1u, std::thread::hardware_concurrency()));
  EXPECT_EQ(sl::init_threads(1), 1);
  EXPECT_NE(sl::version_string().find("OpenBLAS"), std::string::npos);
  sl::init_threads(0);
}
