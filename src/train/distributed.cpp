#include "sortedllama/train/distributed.h"

#include <cstdlib>
#include <stdexcept>

#include <spdlog/spdlog.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

namespace sl {

namespace {
int env_int(const char* name, int fallback, int lo) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  if (*end != '\0' || x < lo || x > 65535)
    throw std::runtime_error(std::string("environment variable ") + name + "=\"" + v + "\" is not a valid number");
  return (int)x;
}

// Gloo reports peers that vanished as socket errors deep in its transport; keep the first line.
std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }
}  // namespace

DistEnv DistEnv::from_environment() {
  DistEnv e;
  e.world = env_int("WORLD_SIZE", 1, 1);
  e.rank = env_int("RANK", 0, 0);
  e.local_rank = env_int("LOCAL_RANK", e.rank, 0);
  e.master_port = env_int("MASTER_PORT", 29500, 1);
  if (const char* a = std::getenv("MASTER_ADDR"); a && *a) e.master_addr = a;
  if (e.rank >= e.world)
    throw std::runtime_error("environment: RANK=" + std::to_string(e.rank) + " is not below WORLD_SIZE=" +
                             std::to_string(e.world));
  return e;
}

// One collective in flight: the tensor it fills, its host staging copy, Gloo's handle.
class Dist::Work {
 public:
  torch::Tensor target, host;
  c10::intrusive_ptr<c10d::Work> work;
  const char* what = "";
};

struct Dist::Impl {
  c10::intrusive_ptr<c10d::TCPStore> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
  std::chrono::seconds timeout;

  // Starts one collective on CPU tensors (Gloo's CPU path covers every operation used here),
  // staging device tensors through host memory.
  template <class F>
  std::shared_ptr<Work> start(const torch::Tensor& t, const char* what, int rank, F&& op) {
    auto w = std::make_shared<Work>();
    w->target = t;
    w->host = t.device().is_cpu() ? t : t.to(torch::kCPU);
    w->what = what;
    std::vector<torch::Tensor> v{w->host};
    try {
      w->work = op(v);
    } catch (const std::exception& e) {
      fail(*w, rank, e);
    }
    return w;
  }
  // Waits for it and turns transport failures into one clear error.
  void finish(Work& w, int rank) {
    try {
      w.work->wait(timeout);
    } catch (const std::exception& e) {
      fail(w, rank, e);
    }
    if (!w.target.device().is_cpu()) w.target.copy_(w.host);
  }
  [[noreturn]] void fail(const Work& w, int rank, const std::exception& e) {
    throw std::runtime_error("rank " + std::to_string(rank) + ": " + w.what +
                             " failed (a peer rank exited, crashed or did not answer within " +
                             std::to_string(timeout.count()) + " s): " + first_line(e.what()));
  }
};

Dist::Dist(const DistEnv& env, std::chrono::seconds timeout) : env_(env) {
  if (env_.world == 1) return;
  impl_ = std::make_unique<Impl>();
  impl_->timeout = timeout;
  c10d::TCPStoreOptions so;
  so.port = (uint16_t)env_.master_port;
  so.isServer = env_.rank == 0;
  so.numWorkers = (size_t)env_.world;
  so.timeout = timeout;
  try {
    impl_->store = c10::make_intrusive<c10d::TCPStore>(env_.master_addr, so);
    auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
    const bool loopback = env_.master_addr == "127.0.0.1" || env_.master_addr == "localhost";
    if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname && *ifname)
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
    else if (loopback)
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    else
      opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    impl_->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(impl_->store, env_.rank, env_.world, opts);
  } catch (const std::exception& e) {
    throw std::runtime_error("rank " + std::to_string(env_.rank) + ": rendezvous at " + env_.master_addr + ":" +
                             std::to_string(env_.master_port) + " (world " + std::to_string(env_.world) +
                             ") failed: " + first_line(e.what()));
  }
  spdlog::debug("rank {}/{} joined {}:{}", env_.rank, env_.world, env_.master_addr, env_.master_port);
}

Dist::~Dist() = default;

std::shared_ptr<Dist::Work> Dist::all_reduce_sum_async(const torch::Tensor& t) {
  if (!impl_) return nullptr;
  return impl_->start(t, "all-reduce", env_.rank, [&](std::vector<torch::Tensor>& v) { return impl_->pg->allreduce(v); });
}

std::shared_ptr<Dist::Work> Dist::reduce_sum_async(const torch::Tensor& t, int root) {
  if (!impl_) return nullptr;
  c10d::ReduceOptions o;
  o.rootRank = root;
  return impl_->start(t, "reduce", env_.rank, [&](std::vector<torch::Tensor>& v) { return impl_->pg->reduce(v, o); });
}

void Dist::wait(const std::shared_ptr<Work>& w) {
  if (w) impl_->finish(*w, env_.rank);
}

void Dist::all_reduce_sum(torch::Tensor& t) { wait(all_reduce_sum_async(t)); }

void Dist::reduce_sum(torch::Tensor& t, int root) { wait(reduce_sum_async(t, root)); }

void Dist::broadcast(torch::Tensor& t, int root) {
  if (!impl_) return;
  c10d::BroadcastOptions o;
  o.rootRank = root;
  wait(impl_->start(t, "broadcast", env_.rank, [&](std::vector<torch::Tensor>& v) { return impl_->pg->broadcast(v, o); }));
}

void Dist::barrier() {
  if (!impl_) return;
  torch::Tensor t = torch::zeros({1});
  all_reduce_sum(t);  // Gloo's barrier cannot take a timeout per call; a tiny all-reduce can
}

}  // namespace sl
