// The files of a run directory: step-N checkpoints with their trainer state, found, written and
// pruned so that a kill at any moment leaves the newest complete checkpoint usable.
#pragma once
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "sortedllama/train/optimizer.h"

namespace sl {

std::string step_dir_name(int64_t step);  // "step-000042"
// The step of a "step-N" directory name, or -1 for any other name.
int64_t step_of_dir_name(const std::string& name);

// The out_dir/step-N with the highest N (compared as numbers) that holds a complete trainer state;
// "" when there is none.
std::string latest_checkpoint(const std::string& out_dir);

// Removes all but the newest `keep` step directories (by step number), each atomically.
void prune_checkpoints(const std::string& out_dir, int64_t keep);

// Removes hidden temporaries that killed writers left in out_dir (".step-N.tmp-PID", ".x.trash-PID").
void remove_stale_temporaries(const std::string& out_dir);

// optimizer.safetensors + trainer_state.json in `dir`.
void save_trainer_state(const std::string& dir, const OptimizerState& st, int64_t step, int world,
                        const nlohmann::json& config);
// Loads the optimizer's part; returns the saved step and, in *config, the run's config.
int64_t load_trainer_state(const std::string& dir, DistAdamW& opt, nlohmann::json* config);

}  // namespace sl
