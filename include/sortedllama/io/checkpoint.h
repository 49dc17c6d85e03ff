// HF checkpoint directories: config.json + model.safetensors (or shards with an index) +
// tokenizer.model. Every file is untrusted: errors name the file and the tensor or key.
#pragma once
#include <functional>
#include <string>

#include <torch/torch.h>

#include "sortedllama/model/llama.h"

namespace sl {

// Loads weights memory-mapped, converting F32/F16/BF16 to `dtype` on `device` tensor by tensor.
Llama load_model(const std::string& dir, torch::Device device = torch::kCPU, torch::Dtype dtype = torch::kFloat32);

// The tokenizer that belongs to a model directory (DIR/tokenizer.model); throws if absent.
std::string model_tokenizer_path(const std::string& dir);

// Writes config.json and the weights (as `dtype`, sharded past max_shard_bytes, with
// model.safetensors.index.json) into an existing directory; copies `tokenizer` when non-empty.
void write_model_files(Llama& model, const std::string& dir, const std::string& tokenizer,
                       torch::Dtype dtype = torch::kFloat32, int64_t max_shard_bytes = 5'000'000'000LL);

// Throws unless `dir` is absent, empty or a model directory (has config.json): writing a model
// there replaces it whole, and nothing else the user had may be lost that way.
void require_replaceable_model_dir(const std::string& dir);

// write_dir_atomically (util/files.h) + write_model_files, after require_replaceable_model_dir.
void save_model(Llama& model, const std::string& dir, const std::string& tokenizer,
                torch::Dtype dtype = torch::kFloat32, int64_t max_shard_bytes = 5'000'000'000LL);

}  // namespace sl
