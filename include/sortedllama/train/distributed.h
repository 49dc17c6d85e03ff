// Data-parallel processes through libtorch's c10d: rendezvous on a TCPStore, collectives on Gloo.
// A single process (no WORLD_SIZE in the environment) is world 1 and every collective is a no-op.
#pragma once
#include <chrono>
#include <memory>
#include <string>

#include <torch/torch.h>

namespace sl {

// torchrun's variables: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT.
struct DistEnv {
  int rank = 0, world = 1, local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  static DistEnv from_environment();  // throws naming the variable when one is malformed
};

class Dist {
 public:
  // world 1: no store, no process group. Otherwise blocks until every rank has joined; any
  // collective that waits longer than `timeout` (a dead or hung peer) throws.
  Dist(const DistEnv& env, std::chrono::seconds timeout);
  ~Dist();
  int rank() const { return env_.rank; }
  int world() const { return env_.world; }
  int local_rank() const { return env_.local_rank; }

  // In place. Gloo reduces float32/float64/int64 tensors (not bf16): callers reduce fp32 buffers.
  void all_reduce_sum(torch::Tensor& t);
  void reduce_sum(torch::Tensor& t, int root);  // the sum arrives on `root` only
  // The same, started and left running: wait() completes one (and fails as the blocking forms do).
  // Every rank must start its collectives in the same order.
  class Work;
  std::shared_ptr<Work> all_reduce_sum_async(const torch::Tensor& t);
  std::shared_ptr<Work> reduce_sum_async(const torch::Tensor& t, int root);
  void wait(const std::shared_ptr<Work>& w);
  void broadcast(torch::Tensor& t, int root);
  void barrier();

 private:
  struct Impl;
  DistEnv env_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sl
