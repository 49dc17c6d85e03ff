// finetune: SoFT (sorted loss over nested sub-models), SFT, SFT+ICT and extracted fine-tuning, as
// one recipe. The Trainer's set-up and loop are short sequences of named steps; the objective
// lives in loss.h, the schedule in schedule.h, the run directory's files in state.h.
#pragma once
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "sortedllama/data/examples.h"
#include "sortedllama/model/llama.h"
#include "sortedllama/train/config.h"
#include "sortedllama/train/distributed.h"
#include "sortedllama/train/loss.h"
#include "sortedllama/train/optimizer.h"
#include "sortedllama/train/schedule.h"

namespace sl {

struct FinetuneResult {
  std::string final_dir;
  int64_t steps = 0;                 // optimizer steps taken in total (including before a resume)
  std::vector<double> losses;        // training loss of each step run in this call
  std::map<int, double> valid_loss;  // per exit, at the end (empty without validation data)
};

struct FinetuneHooks {
  int64_t stop_after = 0;            // tests: end (as if killed) after this many steps, without the final save
  bool resume_with_changes = false;  // resume even when the config differs from the checkpoint's
};

class Trainer {
 public:
  // resume: "" = fresh start, "auto" = the latest checkpoint in out_dir, else a checkpoint
  // directory. Under torchrun-style environment variables (RANK, WORLD_SIZE, ...) this process is
  // one data-parallel rank: train.batch_size is the global micro-batch, split over the ranks; rank
  // 0 logs and writes.
  Trainer(const nlohmann::json& config, const std::string& resume, torch::Device device, const FinetuneHooks& hooks);
  ~Trainer();
  FinetuneResult run();

 private:
  // Set-up, in order.
  void init_distributed();
  void load_or_init_model();
  void plan_method();
  std::vector<double> exit_weights_in_exit_order(int n_layers) const;
  void load_data();
  void make_optimizer_and_resume();
  void check_resumed_config(const nlohmann::json& saved) const;
  void open_run_log();
  // One step of the loop.
  struct StepExits {
    std::vector<int> exits;
    std::vector<double> weights;
    double weight_sum = 0;
  };
  StepExits exits_for_step() const;
  std::vector<size_t> active_exit_indices() const;
  struct MicroBatch {
    Batch batch;
    torch::Tensor layer_keep;  // [n_layers, B] bool, false = the sequence skips the layer; undefined = none skip
  };
  std::vector<MicroBatch> micro_batches(int64_t* targets, int64_t* tokens);
  torch::Tensor layer_keep_mask(int64_t micro, size_t lo, size_t hi, size_t n);
  std::map<int, double> train_step(const StepExits& se, const std::vector<MicroBatch>& micro, int64_t targets);
  struct StepLoss {
    double loss = 0;
    nlohmann::json per_exit;  // exit -> mean NLL per target token
  };
  StepLoss reduce_step_loss(const StepExits& se, const std::map<int, double>& exit_nll, int64_t targets);
  bool accept_finite(const StepLoss& sl, double grad_norm);
  void log_step(const StepExits& se, const StepLoss& sl, int64_t tokens, double lr, double grad_norm, double ms);
  std::map<int, double> validate();
  void save_checkpoint(const std::string& dir, bool with_state);
  void save_and_rotate();
  bool lead() const { return dist_->rank() == 0; }

  const nlohmann::json config_;
  const TrainOptions o_;
  const FinetuneHooks hooks_;
  std::string resume_, resume_dir_, tok_path_;
  torch::Device device_;
  torch::Dtype dtype_ = torch::kFloat32;
  std::unique_ptr<Dist> dist_;
  Llama model_{nullptr};
  std::vector<int> exits_;
  std::vector<double> weights_;
  std::vector<double> drop_rates_;  // per layer, training only
  std::vector<int64_t> dropped_;    // this step: sequences of the global batch that skipped each layer
  StepPhases phases_;               // this step's time per phase
  std::vector<std::pair<std::string, torch::Tensor>> trainable_;
  std::vector<Example> train_, valid_;
  Schedule sched_;
  int64_t loss_chunk_ = 0, step_ = 0, start_step_ = 0;
  std::unique_ptr<DistAdamW> opt_;
  std::ofstream metrics_;
  std::vector<std::vector<size_t>> batches_;  // the current epoch's
  int64_t batches_epoch_ = -1;
  double elapsed_s_ = 0;
  bool tty_ = false;
};

// Trainer(config, resume, device, hooks).run().
FinetuneResult finetune(const nlohmann::json& config, const std::string& resume, torch::Device device,
                        const FinetuneHooks& hooks = {});

}  // namespace sl
