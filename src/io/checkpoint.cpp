#include "sortedllama/io/checkpoint.h"

#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>

#include <spdlog/spdlog.h>

#include "sortedllama/io/safetensors.h"
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

nlohmann::json read_json(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw std::runtime_error("cannot open " + path);
  try {
    return nlohmann::json::parse(f);
  } catch (const nlohmann::json::parse_error& e) {
    throw std::runtime_error(path + ": malformed JSON: " + e.what());
  }
}

// tensor name -> file name, from the shard index or the single model.safetensors.
std::map<std::string, std::string> weight_files(const std::string& dir) {
  const std::string index = dir + "/model.safetensors.index.json";
  if (fs::exists(index)) {
    nlohmann::json j = read_json(index);
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
      throw std::runtime_error(index + ": missing \"weight_map\" object");
    std::map<std::string, std::string> map;
    for (auto& [name, file] : j["weight_map"].items()) {
      if (!file.is_string()) throw std::runtime_error(index + ": weight_map entry " + name + " is not a file name");
      std::string f = file.get<std::string>();
      if (f.empty() || f.find('/') != std::string::npos || f == "." || f == "..")
        throw std::runtime_error(index + ": weight_map entry " + name + " names \"" + f + "\", not a file in " + dir);
      map[name] = f;
    }
    return map;
  }
  if (fs::exists(dir + "/model.safetensors")) return {};  // empty map = everything in model.safetensors
  if (fs::exists(dir + "/pytorch_model.bin") || fs::exists(dir + "/pytorch_model.bin.index.json"))
    throw std::runtime_error(dir + ": holds pytorch_model.bin (pickle), which is not read for safety; resave it as "
                             "safetensors (transformers: save_pretrained(dir, safe_serialization=True))");
  throw std::runtime_error(dir + ": no model.safetensors or model.safetensors.index.json");
}
}  // namespace

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
  auto map = weight_files(dir);

  std::map<std::string, std::unique_ptr<SafetensorsFile>> open;  // file name -> mapping
  auto file = [&](const std::string& name) -> SafetensorsFile& {
    std::string f = "model.safetensors";
    if (!map.empty()) {
      auto it = map.find(name);
      if (it == map.end())
        throw std::runtime_error(dir + "/model.safetensors.index.json: missing tensor " + name);
      f = it->second;
    }
    auto& slot = open[f];
    if (!slot) slot = std::make_unique<SafetensorsFile>(dir + "/" + f);
    return *slot;
  };
  // Every tensor is checked against config.json before the model is built: sizes or a layer count
  // that the files do not hold must fail here, not allocate memory (or layers) for them first.
  std::map<std::string, std::pair<const TensorView*, torch::Dtype>> sources;
  for_each_parameter_shape(cfg, [&](const std::string& name, const std::vector<int64_t>& shape) {
    SafetensorsFile& sf = file(name);
    const TensorView& t = sf.at(name);
    if (t.shape != shape)
      throw std::runtime_error(sf.path() + ": tensor " + name + " has shape " + shape_str(t.shape) + " but " +
                               config_path + " implies " + shape_str(shape));
    sources[name] = {&t, torch_dtype_of(t.dtype, sf.path(), name)};
  });

  Llama model(cfg);
  model->to(device, dtype);
  torch::NoGradGuard no_grad;
  for (auto& p : model->named_parameters()) {
    const auto& [t, src_dtype] = sources.at(p.key());
    torch::Tensor src;
    if (reinterpret_cast<uintptr_t>(t->data) % dtype_size(t->dtype) == 0) {
      src = torch::from_blob(const_cast<uint8_t*>(t->data), t->shape, torch::dtype(src_dtype));
    } else {  // misaligned data: copy the bytes before viewing them as numbers
      src = torch::empty(t->shape, torch::dtype(src_dtype));
      std::memcpy(src.data_ptr(), t->data, t->nbytes);
    }
    p.value().copy_(src);
  }
  // Tensors nobody asked for are reported, not silently dropped (older HF files carry inv_freq).
  auto params = model->named_parameters();
  auto check_expected = [&](const std::string& name, const std::string& where) {
    if (!params.contains(name) && name.find("rotary_emb.inv_freq") == std::string::npos &&
        !(cfg.tie_embeddings && name == "lm_head.weight"))
      spdlog::warn("{}: ignoring unexpected tensor {}", where, name);
  };
  if (map.empty())
    for (auto& entry : open.begin()->second->tensors()) check_expected(entry.first, open.begin()->second->path());
  for (auto& entry : map) check_expected(entry.first, dir + "/model.safetensors.index.json");
  model->eval();
  return model;
}

void write_model_files(Llama& model, const std::string& dir, const std::string& tokenizer, torch::Dtype dtype,
                       int64_t max_shard_bytes) {
  ModelConfig cfg = model->config();
  cfg.torch_dtype = config_dtype_name(dtype);
  {
    std::ofstream f(dir + "/config.json");
    f << cfg.to_json().dump(2) << "\n";
    if (!f) throw std::runtime_error(dir + "/config.json: write failed");
  }
  // Plan shards first so that every file name carries the total count.
  auto params = model->named_parameters();
  const int64_t esize = (int64_t)dtype_size(safetensors_dtype(dtype));
  std::vector<std::vector<size_t>> shards(1);
  int64_t shard_bytes = 0, total = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    int64_t bytes = params[i].value().numel() * esize;
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
      torch::Tensor t = params[i].value().detach().to(torch::kCPU, dtype).contiguous();
      keep.push_back(t);
      blobs.push_back({params[i].key(), safetensors_dtype(dtype),
                       std::vector<int64_t>(t.sizes().begin(), t.sizes().end()), t.data_ptr(),
                       (size_t)(t.numel() * esize)});
      weight_map[params[i].key()] = fname;
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

void save_model(Llama& model, const std::string& dir, const std::string& tokenizer, torch::Dtype dtype,
                int64_t max_shard_bytes) {
  write_dir_atomically(dir, [&](const std::string& tmp) { write_model_files(model, tmp, tokenizer, dtype, max_shard_bytes); });
}

}  // namespace sl
