// Helpers shared by the unit tests.
#pragma once
#include <functional>
#include <string>

#include <torch/torch.h>

namespace sl_test {

std::string source_dir();                 // repository root
std::string shared_dir();                 // ../shared beside the repository (real data and models)
std::string temp_dir(const std::string& tag);  // a fresh empty directory
// Converted ../shared/models/stories260K, made once per test run.
std::string stories_model_dir();
std::string read_file(const std::string& path);
void write_file(const std::string& path, const std::string& bytes);
// Largest absolute difference between two tensors (as float64).
double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b);
// Calls of one ATen operator or user scope while fn runs on this thread, seen through libtorch's
// RecordFunction callbacks (the profiler's hook), e.g. "sl::decoder_layer": one per decoder layer run.
int64_t count_op_calls(const char* op, const std::function<void()>& fn);

}  // namespace sl_test
