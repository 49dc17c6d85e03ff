// HF checkpoint directories: config.json + model.safetensors (or shards with an index) +
// tokenizer.model; without safetensors, torch.save's pytorch_model.bin (or its shards with
// pytorch_model.bin.index.json) is read (io/torch_pickle.h). Every file is untrusted: errors name
// the file and the tensor or key.
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "sortedllama/model/llama.h"

namespace sl {

// Loads weights memory-mapped, converting F32/F16/BF16 to `dtype` on `device` tensor by tensor.
Llama load_model(const std::string& dir, torch::Device device = torch::kCPU, torch::Dtype dtype = torch::kFloat32);

// The tokenizer that belongs to a model directory (DIR/tokenizer.model); throws if absent.
std::string model_tokenizer_path(const std::string& dir);

class WeightFile;  // one memory-mapped safetensors or torch.save file

// The weights of an HF directory, found by name through the shard index (or in the single file)
// and mapped when first asked for.
class HFWeights {
 public:
  explicit HFWeights(const std::string& dir);  // reads the index; throws if the directory has no weights
  ~HFWeights();
  // The tensor as stored (its own dtype), viewing the mapping; throws naming the file and the tensor
  // when it is missing or its shape differs from `shape`, which `source` (a path) implies.
  torch::Tensor get(const std::string& name, c10::IntArrayRef shape, const std::string& source);
  // Warns about each tensor of the checkpoint for which `used` is false: nothing is dropped silently.
  void warn_unused(const std::function<bool(const std::string&)>& used);

 private:
  WeightFile& file_of(const std::string& name);
  std::string dir_, index_, single_;             // index path, or the single file's name
  std::map<std::string, std::string> map_;       // tensor -> file name, from the index
  std::map<std::string, std::unique_ptr<WeightFile>> open_;
};

// A tensor to write and how to make it: make() runs while the tensor's shard is written, so that
// one shard at a time is in memory; it must return a tensor of `shape`.
struct TensorSource {
  std::string name;
  std::vector<int64_t> shape;
  std::function<torch::Tensor()> make;
};

// Writes config.json and the tensors (as `dtype`, sharded past max_shard_bytes, with
// model.safetensors.index.json) into an existing directory; copies `tokenizer` when non-empty.
void write_hf_files(ModelConfig cfg, const std::vector<TensorSource>& tensors, const std::string& dir,
                    const std::string& tokenizer, torch::Dtype dtype = torch::kFloat32,
                    int64_t max_shard_bytes = 5'000'000'000LL);

// write_hf_files of a model's parameters.
void write_model_files(Llama& model, const std::string& dir, const std::string& tokenizer,
                       torch::Dtype dtype = torch::kFloat32, int64_t max_shard_bytes = 5'000'000'000LL);

// Throws unless `dir` is absent, empty or a model directory (has config.json): writing a model
// there replaces it whole, and nothing else the user had may be lost that way.
void require_replaceable_model_dir(const std::string& dir);

// Set (or replace) one decoding profile in DIR/config.json, keeping the other profile and every
// other key as they were; the file is replaced atomically and must still parse as this model's config.
void write_dynamic_profile(const std::string& dir, const DynamicProfile& profile);
void write_speculative_profile(const std::string& dir, const SpeculativeProfile& profile);

// write_dir_atomically (util/files.h) + write_model_files, after require_replaceable_model_dir.
void save_model(Llama& model, const std::string& dir, const std::string& tokenizer,
                torch::Dtype dtype = torch::kFloat32, int64_t max_shard_bytes = 5'000'000'000LL);

}  // namespace sl
