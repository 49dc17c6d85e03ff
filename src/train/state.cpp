#include "sortedllama/train/state.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "sortedllama/io/safetensors.h"
#include "sortedllama/util/files.h"

namespace fs = std::filesystem;
using torch::Tensor;

namespace sl {

std::string step_dir_name(int64_t step) { return fmt::format("step-{:06d}", step); }

int64_t step_of_dir_name(const std::string& name) {
  if (name.rfind("step-", 0) != 0 || name.size() == 5 || name.size() > 5 + 18) return -1;
  int64_t step = 0;
  for (size_t i = 5; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return -1;
    step = step * 10 + (name[i] - '0');
  }
  return step;
}

namespace {
// (step, path) of every step-N directory in out_dir, oldest first.
std::vector<std::pair<int64_t, fs::path>> step_dirs(const std::string& out_dir) {
  std::vector<std::pair<int64_t, fs::path>> dirs;
  if (!fs::is_directory(out_dir)) return dirs;
  for (const auto& e : fs::directory_iterator(out_dir))
    if (const int64_t s = step_of_dir_name(e.path().filename().string()); s >= 0 && e.is_directory())
      dirs.emplace_back(s, e.path());
  std::sort(dirs.begin(), dirs.end());
  return dirs;
}
}  // namespace

std::string latest_checkpoint(const std::string& out_dir) {
  const auto dirs = step_dirs(out_dir);
  for (auto it = dirs.rbegin(); it != dirs.rend(); ++it)
    if (fs::exists(it->second / "trainer_state.json")) return it->second.string();
  return "";
}

void prune_checkpoints(const std::string& out_dir, int64_t keep) {
  const auto dirs = step_dirs(out_dir);
  for (size_t i = 0; i + (size_t)keep < dirs.size(); ++i) remove_dir_atomically(dirs[i].second.string());
}

void remove_stale_temporaries(const std::string& out_dir) {
  if (!fs::is_directory(out_dir)) return;
  for (const auto& e : fs::directory_iterator(out_dir)) {
    const std::string name = e.path().filename().string();
    if (!is_atomic_temporary(name)) continue;
    spdlog::info("removing {} (left by an interrupted write)", e.path().string());
    fs::remove_all(e.path());
  }
}

void save_trainer_state(const std::string& dir, const OptimizerState& st, int64_t step, int world,
                        const nlohmann::json& config) {
  std::vector<TensorBlob> blobs;
  for (const auto& [name, t] : st.tensors)
    blobs.push_back({name, "F32", std::vector<int64_t>(t.sizes().begin(), t.sizes().end()), t.data_ptr(),
                     (size_t)t.numel() * 4});
  write_safetensors(dir + "/optimizer.safetensors", blobs);
  write_file_atomic(dir + "/trainer_state.json",
                    nlohmann::json{{"step", step}, {"adam_steps", st.steps}, {"world_size", world}, {"config", config}}.dump(2) +
                        "\n");
}

// Any number of ranks can resume a state saved by any other: it holds every parameter's moments.
int64_t load_trainer_state(const std::string& dir, DistAdamW& opt, nlohmann::json* config) {
  const std::string path = dir + "/trainer_state.json";
  if (!fs::exists(path)) throw std::runtime_error("cannot resume: " + path + " is missing");
  const nlohmann::json j = read_json_file(path);
  if (!j.is_object() || !j.contains("step") || !j["step"].is_number_integer() || j["step"].get<int64_t>() < 0 ||
      !j.contains("adam_steps") || !j["adam_steps"].is_object())
    throw std::runtime_error(path + ": missing \"step\" or \"adam_steps\"");
  // AdamW's bias correction divides by 1 - beta^steps: a state exists only after a first step.
  for (const auto& [name, n] : j["adam_steps"].items())
    if (!n.is_number_integer() || n.get<int64_t>() < 1)
      throw std::runtime_error(path + ": adam_steps \"" + name + "\" is " + n.dump() + ", not a step count >= 1");
  SafetensorsFile sf(dir + "/optimizer.safetensors");
  opt.load_state(
      [&](const std::string& key) {
        if (!sf.contains(key)) return Tensor();
        const TensorView& v = sf.at(key);
        if (v.dtype != "F32") throw std::runtime_error(sf.path() + ": tensor " + key + " is " + v.dtype + ", not F32");
        // clone: the mapping is read-only and goes away with `sf`.
        return torch::from_blob(const_cast<uint8_t*>(v.data), v.shape, torch::kFloat32).clone();
      },
      j["adam_steps"], sf.path());
  if (config) *config = j.value("config", nlohmann::json());
  return j["step"].get<int64_t>();
}

}  // namespace sl
