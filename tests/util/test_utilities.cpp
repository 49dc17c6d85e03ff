// util: checksums, the portable seeded RNG, atomic writes and the process set-up.
#include <gtest/gtest.h>

#include <filesystem>

#include "sortedllama/util/files.h"
#include "sortedllama/util/rng.h"
#include "sortedllama/util/runtime.h"
#include "sortedllama/util/sha256.h"
#include "test_util.h"

namespace fs = std::filesystem;

TEST(Sha256, StandardVectors) {
  EXPECT_EQ(sl::sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sl::sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sl::sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(sl::sha256_hex(std::string(1000000, 'a')),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256, MatchesPublishedChecksumsOfSharedFiles) {  // ../shared/DATA.md
  EXPECT_EQ(sl::sha256_file(sl_test::shared_dir() + "/data/instruct_eval/vicuna_question.jsonl"),
            "c248c5c98ba45bb0c2aadae2f270e643bd32679c6c306a3b2a503ac4254cdaa5");
  EXPECT_EQ(sl::sha256_file(sl_test::shared_dir() + "/data/alpaca/alpaca_data_cleaned.json"),  // 21 MB: several read chunks
            "66149e0247b815ee9afcbd6f5bb622a7fb57d34da2739fc7b71295f296bfd1f4");
  EXPECT_THROW(sl::sha256_file("/nonexistent/file"), std::runtime_error);
}

TEST(DataShuffle, PortableGoldenPermutation) {
  // Fixed by the algorithm (mt19937_64 + rejection + Fisher-Yates), not by the standard library;
  // cross-checked against an independent Python implementation.
  EXPECT_EQ(sl::shuffled_indices(10, 42), (std::vector<size_t>{1, 7, 9, 0, 3, 8, 4, 2, 5, 6}));
  EXPECT_TRUE(sl::shuffled_indices(0, 1).empty());
  EXPECT_EQ(sl::shuffled_indices(1, 1), std::vector<size_t>{0});
}

TEST(Rng, BelowStaysInRangeAndRangeIsInclusive) {
  sl::Rng r(7);
  bool lo = false, hi = false;
  for (int i = 0; i < 2000; ++i) {
    const int v = r.range(3, 5);
    ASSERT_GE(v, 3);
    ASSERT_LE(v, 5);
    lo |= v == 3;
    hi |= v == 5;
  }
  EXPECT_TRUE(lo && hi);
  EXPECT_NE(sl::splitmix64(1), sl::splitmix64(2));
}

TEST(AtomicFiles, WriteReplacesWholeAndLeavesNoTemporary) {
  const std::string dir = sl_test::temp_dir("atomic");
  const std::string path = dir + "/results.json";
  sl::write_file_atomic(path, "old");
  sl::write_file_atomic(path, "new contents");
  EXPECT_EQ(sl_test::read_file(path), "new contents");
  for (const auto& e : fs::directory_iterator(dir)) EXPECT_EQ(e.path().filename(), "results.json");
}

TEST(AtomicFiles, FailedWriteKeepsTheOldFileAndNamesThePath) {
  const std::string dir = sl_test::temp_dir("atomic-fail");
  try {
    sl::write_file_atomic(dir + "/no/such/dir/x.json", "x");
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("no/such/dir/x.json"), std::string::npos) << e.what();
  }
}

TEST(AtomicFiles, RemoveDirNeverLeavesAHalfDeletedDirectoryUnderItsName) {
  const std::string dir = sl_test::temp_dir("atomic-rm");
  fs::create_directories(dir + "/step-000003/sub");
  sl_test::write_file(dir + "/step-000003/sub/a", "a");
  sl::remove_dir_atomically(dir + "/step-000003");
  EXPECT_FALSE(fs::exists(dir + "/step-000003"));
  EXPECT_TRUE(fs::is_empty(dir));
  EXPECT_TRUE(sl::is_atomic_temporary(".step-000003.tmp-123"));
  EXPECT_TRUE(sl::is_atomic_temporary(".step-000003.trash-123"));
  EXPECT_FALSE(sl::is_atomic_temporary("step-000003"));
  EXPECT_FALSE(sl::is_atomic_temporary(".hidden"));
}

TEST(BlasKernel, AFallbackKernelIsReplacedByWhatTheCpuRuns) {
  sl::CpuFeatures avx512;
  avx512.avx2 = avx512.fma = avx512.avx512f = avx512.avx512bw = avx512.avx512dq = avx512.avx512vl = true;
  sl::CpuFeatures avx2;
  avx2.avx2 = avx2.fma = true;
  sl::CpuFeatures avx512f_only = avx2;
  avx512f_only.avx512f = true;  // without BW/DQ/VL the SkylakeX kernels would not run
  EXPECT_EQ(sl::better_blas_core("Prescott", avx512), "SkylakeX");
  EXPECT_EQ(sl::better_blas_core("Nehalem", avx2), "Haswell");
  EXPECT_EQ(sl::better_blas_core("Prescott", avx512f_only), "Haswell");
  EXPECT_EQ(sl::better_blas_core("Prescott", sl::CpuFeatures{}), "");
  for (const char* known : {"Haswell", "SkylakeX", "Cooperlake", "Zen", "SapphireRapids"})
    EXPECT_EQ(sl::better_blas_core(known, avx512), "") << known << " is OpenBLAS's own good choice";
}

TEST(BlasKernel, ProductsOfTheKernelInUseAreChecked) {
  EXPECT_FALSE(sl::blas_core_name().empty()) << "the BLAS is not OpenBLAS";
  EXPECT_TRUE(sl::blas_products_correct()) << "kernel " << sl::blas_core_name();
}

TEST(ThreadEnv, DecodingCutsOpenBlasSpinningAndTheRestWaitsPassivelyUnlessTheUserChose) {
  using Env = std::vector<std::pair<std::string, std::string>>;
  // Restores a variable as the test found it.
  struct Saved {
    std::string name, value;
    bool was_set;
    explicit Saved(const char* n) : name(n), value(getenv(n) ? getenv(n) : ""), was_set(getenv(n) != nullptr) {}
    ~Saved() { was_set ? setenv(name.c_str(), value.c_str(), 1) : unsetenv(name.c_str()); }
  } timeout("OPENBLAS_THREAD_TIMEOUT"), wait("OMP_WAIT_POLICY");
  unsetenv("OPENBLAS_THREAD_TIMEOUT");
  unsetenv("OMP_WAIT_POLICY");
  for (const char* decoding : {"generate", "calibrate", "tune"})
    EXPECT_EQ(sl::thread_env_for(decoding), (Env{{"OPENBLAS_THREAD_TIMEOUT", "18"}})) << decoding;
  for (const char* other : {"finetune", "eval", "convert", ""})
    EXPECT_EQ(sl::thread_env_for(other), (Env{{"OMP_WAIT_POLICY", "PASSIVE"}})) << other;
  setenv("OPENBLAS_THREAD_TIMEOUT", "28", 1);
  setenv("OMP_WAIT_POLICY", "ACTIVE", 1);
  EXPECT_TRUE(sl::thread_env_for("generate").empty());
  EXPECT_TRUE(sl::thread_env_for("finetune").empty());
}
