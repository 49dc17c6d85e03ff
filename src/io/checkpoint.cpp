#include "sortedllama/io/checkpoint.h"

#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>

#include <spdlog/spdlog.h>

#include "sortedllama/io/safetensors.h"
#include "sortedllama/io/torch_pickle.h"
#include "sortedllama/util/files.h"

namespace fs = std::filesystem;

namespace sl {

namespace {
torch::Dtype torch_dtype_of(const std::string& st, const std::string& file, const std::string& name) {
  if (st == "F32") return torch::kFloat32;
  if (st == "F16") return torch::kFloat16;
  if (st == "BF16") return torch::kBFloat16;
  if (st == "F64") return torch::kFloat64;
  throw std::runtime_error(file + ": tensor " + name + " has dtype " + st + ", not a floating-point weight type");
}

std::string safetensors_dtype(torch::Dtype d) {
  if (d == torch::kFloat32) return "F32";
  if (d == torch::kFloat16) return "F16";
  if (d == torch::kBFloat16) return "BF16";
  throw std::runtime_error("cannot save weights as " + std::string(c10::toString(d)));
}

std::string config_dtype_name(torch::Dtype d) {
  return d == torch::kBFloat16 ? "bfloat16" : d == torch::kFloat16 ? "float16" : "float32";
}

std::string shape_str(c10::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

}  // namespace

// One weights file of either format, memory-mapped; tensors are views of its bytes as stored.
class WeightFile {
 public:
  explicit WeightFile(const std::string& path) {
    if (fs::path(path).extension() == ".safetensors")
      st_ = std::make_unique<SafetensorsFile>(path);
    else
      pt_ = std::make_unique<TorchFile>(path);
  }
  const std::string& path() const { return st_ ? st_->path() : pt_->path(); }
  std::vector<std::string> names() const {
    if (pt_) return pt_->names();
    std::vector<std::string> out;
    for (auto& entry : st_->tensors()) out.push_back(entry.first);
    return out;
  }
  // Throws naming the file and the tensor when it is absent or not floating point.
  torch::Tensor tensor(const std::string& name) const {
    if (pt_) return pt_->tensor(name);
    const TensorView& t = st_->at(name);
    auto dtype = torch_dtype_of(t.dtype, st_->path(), name);
    if (reinterpret_cast<uintptr_t>(t.data) % dtype_size(t.dtype) == 0)
      return torch::from_blob(const_cast<uint8_t*>(t.data), t.shape, torch::dtype(dtype));
    // Misaligned data: copy the bytes before viewing them as numbers.
    torch::Tensor copy = torch::empty(t.shape, torch::dtype(dtype));
    std::memcpy(copy.data_ptr(), t.data, t.nbytes);
    return copy;
  }

 private:
  std::unique_ptr<SafetensorsFile> st_;
  std::unique_ptr<TorchFile> pt_;
};

// safetensors come first; torch.save's pytorch_model.bin is read when a directory has none.
HFWeights::HFWeights(const std::string& dir) : dir_(dir) {
  for (const char* base : {"model.safetensors", "pytorch_model.bin"}) {
    const std::string index = dir + "/" + base + ".index.json";
    if (!fs::exists(index)) {
      if (!fs::exists(dir + "/" + base)) continue;
      single_ = base;
      return;
    }
    index_ = index;
    nlohmann::json j = read_json_file(index);
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
      throw std::runtime_error(index + ": missing \"weight_map\" object");
    for (auto& [name, file] : j["weight_map"].items()) {
      if (!file.is_string()) throw std::runtime_error(index + ": weight_map entry " + name + " is not a file name");
      std::string f = file.get<std::string>();
      if (f.empty() || f.find('/') != std::string::npos || f == "." || f == "..")
        throw std::runtime_error(index + ": weight_map entry " + name + " names \"" + f + "\", not a file in " + dir);
      map_[name] = f;
    }
    return;
  }
  throw std::runtime_error(dir + ": no model.safetensors, model.safetensors.index.json, pytorch_model.bin or "
                           "pytorch_model.bin.index.json");
}

HFWeights::~HFWeights() = default;

WeightFile& HFWeights::file_of(const std::string& name) {
  std::string f = single_;
  if (!index_.empty()) {
    auto it = map_.find(name);
    if (it == map_.end()) throw std::runtime_error(index_ + ": missing tensor " + name);
    f = it->second;
  }
  auto& slot = open_[f];
  if (!slot) slot = std::make_unique<WeightFile>(dir_ + "/" + f);
  return *slot;
}

torch::Tensor HFWeights::get(const std::string& name, c10::IntArrayRef shape, const std::string& source) {
  const WeightFile& f = file_of(name);
  torch::Tensor t = f.tensor(name);
  if (t.sizes() != shape)
    throw std::runtime_error(f.path() + ": tensor " + name + " has shape " + shape_str(t.sizes()) + " but " + source +
                             " implies " + shape_str(shape));
  return t;
}

void HFWeights::warn_unused(const std::function<bool(const std::string&)>& used) {
  if (index_.empty()) {
    const WeightFile& f = file_of("");
    for (const std::string& name : f.names())
      if (!used(name)) spdlog::warn("{}: ignoring unexpected tensor {}", f.path(), name);
  }
  for (auto& entry : map_)
    if (!used(entry.first)) spdlog::warn("{}: ignoring unexpected tensor {}", index_, entry.first);
}

std::string model_tokenizer_path(const std::string& dir) {
  std::string p = dir + "/tokenizer.model";
  if (!fs::exists(p)) throw std::runtime_error(dir + ": no tokenizer.model (pass --tokenizer FILE)");
  return p;
}

Llama load_model(const std::string& dir, torch::Device device, torch::Dtype dtype) {
  if (!fs::is_directory(dir)) throw std::runtime_error(dir + ": not a model directory");
  const std::string config_path = dir + "/config.json";
  if (!fs::exists(config_path)) throw std::runtime_error(dir + ": no config.json");
  ModelConfig cfg = ModelConfig::from_file(config_path);
  HFWeights weights(dir);

  // Every tensor is checked against config.json before the model is built: sizes or a layer count
  // that the files do not hold must fail here, not allocate memory (or layers) for them first.
  std::map<std::string, torch::Tensor> sources;  // views of the mapped files
  for_each_parameter_shape(cfg, [&](const std::string& name, const std::vector<int64_t>& shape) {
    sources[name] = weights.get(name, shape, config_path);
  });
  Llama model(cfg);
  model->to(device, dtype);
  model->use_huge_pages();
  torch::NoGradGuard no_grad;
  // The one copy: from the mapping into the parameter's dtype and device.
  for (auto& p : model->named_parameters()) p.value().copy_(sources.at(p.key()));
  // Older HF files carry the rotary inv_freq buffers, which are recomputed.
  weights.warn_unused([&](const std::string& name) {
    return sources.count(name) || name.find("rotary_emb.inv_freq") != std::string::npos ||
           (cfg.tie_embeddings && name == "lm_head.weight");
  });
  model->eval();
  return model;
}

void write_hf_files(ModelConfig cfg, const std::vector<TensorSource>& tensors, const std::string& dir,
                    const std::string& tokenizer, torch::Dtype dtype, int64_t max_shard_bytes) {
  cfg.torch_dtype = config_dtype_name(dtype);
  {
    std::ofstream f(dir + "/config.json");
    f << cfg.to_json().dump(2) << "\n";
    if (!f) throw std::runtime_error(dir + "/config.json: write failed");
  }
  // Plan shards first so that every file name carries the total count.
  const int64_t esize = (int64_t)dtype_size(safetensors_dtype(dtype));
  std::vector<std::vector<size_t>> shards(1);
  int64_t shard_bytes = 0, total = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    int64_t bytes = esize;
    for (int64_t d : tensors[i].shape) bytes *= d;
    if (shard_bytes > 0 && shard_bytes + bytes > max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(i);
    shard_bytes += bytes;
    total += bytes;
  }
  nlohmann::ordered_json weight_map;
  char name_buf[64];
  for (size_t s = 0; s < shards.size(); ++s) {
    std::string fname = "model.safetensors";
    if (shards.size() > 1) {
      std::snprintf(name_buf, sizeof(name_buf), "model-%05zu-of-%05zu.safetensors", s + 1, shards.size());
      fname = name_buf;
    }
    std::vector<torch::Tensor> keep;  // CPU copies of this shard only
    std::vector<TensorBlob> blobs;
    for (size_t i : shards[s]) {
      const TensorSource& src = tensors[i];
      torch::Tensor t = src.make().detach().to(torch::kCPU, dtype).contiguous();
      if (t.sizes() != c10::IntArrayRef(src.shape))
        throw std::runtime_error(src.name + ": made with shape " + shape_str(t.sizes()) + ", not " + shape_str(src.shape));
      keep.push_back(t);
      blobs.push_back({src.name, safetensors_dtype(dtype), src.shape, t.data_ptr(), (size_t)(t.numel() * esize)});
      weight_map[src.name] = fname;
    }
    write_safetensors(dir + "/" + fname, blobs);
  }
  if (shards.size() > 1) {
    std::ofstream f(dir + "/model.safetensors.index.json");
    nlohmann::ordered_json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    f << index.dump(2) << "\n";
    if (!f) throw std::runtime_error(dir + "/model.safetensors.index.json: write failed");
  }
  if (!tokenizer.empty()) {
    const std::string dst = dir + "/tokenizer.model";
    fs::copy_file(tokenizer, dst, fs::copy_options::overwrite_existing);
    fs::permissions(dst, fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read | fs::perms::others_read);
  }
}

void write_model_files(Llama& model, const std::string& dir, const std::string& tokenizer, torch::Dtype dtype,
                       int64_t max_shard_bytes) {
  std::vector<TensorSource> tensors;
  for (auto& p : model->named_parameters()) {
    torch::Tensor t = p.value();
    tensors.push_back({p.key(), t.sizes().vec(), [t] { return t; }});
  }
  write_hf_files(model->config(), tensors, dir, tokenizer, dtype, max_shard_bytes);
}

void require_replaceable_model_dir(const std::string& dir) {
  if (!fs::exists(dir)) return;
  if (!fs::is_directory(dir))
    throw std::runtime_error("refusing to replace " + dir + ": it is not a directory (choose another output path)");
  if (!fs::is_empty(dir) && !fs::exists(fs::path(dir) / "config.json"))
    throw std::runtime_error("refusing to replace " + dir + ": it is not a model directory (no config.json) and would be lost");
}

namespace {
// Replaces config.json's "decoding" with what `set` makes of it, keeping every other key and the
// file's key order; the file is replaced atomically and what is written must load.
void rewrite_decoding(const std::string& dir, const std::function<void(ModelConfig&)>& set) {
  const std::string path = dir + "/config.json";
  ModelConfig cfg = ModelConfig::from_json(read_json_file(path), path);  // names the file when it is bad
  set(cfg);
  cfg.validate(path);
  std::ifstream in(path);
  nlohmann::ordered_json raw = nlohmann::ordered_json::parse(in);
  raw["decoding"] = nlohmann::ordered_json::parse(cfg.to_json()["decoding"].dump());
  ModelConfig::from_json(nlohmann::json::parse(raw.dump()), path);
  write_file_atomic(path, raw.dump(2) + "\n");
}
}  // namespace

void write_dynamic_profile(const std::string& dir, const DynamicProfile& profile) {
  rewrite_decoding(dir, [&](ModelConfig& c) { c.dynamic_profile = profile; });
}

void write_speculative_profile(const std::string& dir, const SpeculativeProfile& profile) {
  rewrite_decoding(dir, [&](ModelConfig& c) { c.speculative_profile = profile; });
}

void save_model(Llama& model, const std::string& dir, const std::string& tokenizer, torch::Dtype dtype,
                int64_t max_shard_bytes) {
  require_replaceable_model_dir(dir);
  write_dir_atomically(dir, [&](const std::string& tmp) { write_model_files(model, tmp, tokenizer, dtype, max_shard_bytes); });
}

}  // namespace sl
