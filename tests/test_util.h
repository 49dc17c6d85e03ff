// Helpers shared by the unit tests.
#pragma once
#include <functional>
#include <string>

#include <torch/torch.h>

#include "sortedllama/model/llama.h"

namespace sl_test {

std::string source_dir();                 // repository root
std::string shared_dir();                 // ../shared beside the repository (real data and models)
std::string temp_dir(const std::string& tag);  // a fresh empty directory
// Converted ../shared/models/stories260K, made once per test run.
std::string stories_model_dir();
// stories260K is not SoFT-trained: its tied head reads shallow states as "repeat the input token",
// so its early exits almost never agree with the full model. Scaling the outputs of layers 3..5 by
// 0.2 stands in for a SoFT checkpoint: exit 2 then agrees with the full model ~80% of the time
// (greedy), not always. `dir` is stories_model_dir().
sl::Llama damped_stories_model(const std::string& dir);
std::string read_file(const std::string& path);
void write_file(const std::string& path, const std::string& bytes);
// Largest absolute difference between two tensors (as float64).
double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b);
// Calls of one ATen operator or user scope while fn runs on this thread, seen through libtorch's
// RecordFunction callbacks (the profiler's hook), e.g. "sl::decoder_layer": one per decoder layer run.
int64_t count_op_calls(const char* op, const std::function<void()>& fn);

}  // namespace sl_test
