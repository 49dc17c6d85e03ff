// sortedllama launch --nproc N -- finetune ...: N local data-parallel ranks with torchrun's
// environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT). When one rank fails, the
// others are stopped and launch exits non-zero; Ctrl-C reaches every rank.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <thread>

#include <spdlog/spdlog.h>

#include "cli.h"

namespace sl {

namespace {
volatile sig_atomic_t g_signal = 0;
void on_signal(int sig) { g_signal = sig; }

// A port the kernel considers free right now (the ranks bind it moments later).
int free_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0)
    throw std::runtime_error(std::string("launch: cannot find a free port: ") + strerror(errno));
  close(fd);
  return ntohs(a.sin_port);
}

std::string describe(int status) {
  if (WIFEXITED(status)) return "exited with code " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("was killed by signal ") + strsignal(WTERMSIG(status));
  return "stopped";
}

void launch(int nproc, int port, const std::vector<std::string>& command, const GlobalOptions& g) {
  if (port == 0) port = free_port();
  const int cores = (int)std::max(1u, std::thread::hardware_concurrency());
  const int threads = g.threads > 0 ? g.threads : std::max(1, cores / nproc);  // no oversubscription
  std::vector<std::string> args = {"/proc/self/exe", "--threads", std::to_string(threads), "--device", g.device,
                                   "--log-level", g.log_level};
  args.insert(args.end(), command.begin(), command.end());
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  spdlog::info("launching {} ranks on 127.0.0.1:{} ({} threads each)", nproc, port, threads);
  std::vector<pid_t> pids;
  for (int r = 0; r < nproc; ++r) {
    pid_t pid = fork();
    if (pid < 0) throw std::runtime_error(std::string("launch: fork failed: ") + strerror(errno));
    if (pid == 0) {
      setenv("RANK", std::to_string(r).c_str(), 1);
      setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
      setenv("WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      setenv("LOCAL_WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      setenv("MASTER_ADDR", "127.0.0.1", 1);
      setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      execv(argv[0], argv.data());
      _exit(127);
    }
    pids.push_back(pid);
  }

  // Wait for all; on the first failure (or a signal) stop the rest: SIGTERM, then SIGKILL after 10 s.
  std::string failure;
  int running = nproc;
  auto stop_all = [&](int sig) {
    for (pid_t p : pids)
      if (p > 0) kill(p, sig);
  };
  std::chrono::steady_clock::time_point kill_at{};
  while (running > 0) {
    int status = 0;
    pid_t pid = waitpid(-1, &status, kill_at == decltype(kill_at){} ? 0 : WNOHANG);
    if (pid == 0 || (pid < 0 && errno == EINTR)) {
      if (g_signal && failure.empty()) {
        failure = std::string("interrupted by ") + strsignal(g_signal);
        stop_all(SIGTERM);
        kill_at = std::chrono::steady_clock::now() + std::chrono::seconds(10);
      }
      if (kill_at != decltype(kill_at){} && std::chrono::steady_clock::now() > kill_at) stop_all(SIGKILL);
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      continue;
    }
    if (pid < 0) break;
    const int r = (int)(std::find(pids.begin(), pids.end(), pid) - pids.begin());
    if (r == nproc) continue;
    pids[r] = -1;
    --running;
    const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (!ok && failure.empty()) {
      failure = "rank " + std::to_string(r) + " " + describe(status);
      spdlog::error("{}: stopping the other ranks", failure);
      stop_all(SIGTERM);
      kill_at = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    }
  }
  if (!failure.empty()) throw std::runtime_error("launch: " + failure);
}
}  // namespace

void add_launch_command(CLI::App& app, const GlobalOptions& g) {
  struct Args {
    int nproc = 2, port = 0;
    std::vector<std::string> command;
  };
  auto a = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("launch", "run a subcommand (finetune) as N local data-parallel ranks");
  cmd->add_option("--nproc", a->nproc, "number of ranks")->check(CLI::Range(1, 512));
  cmd->add_option("--master-port", a->port, "rendezvous port (default: a free one)")->check(CLI::Range(0, 65535));
  cmd->add_option("command", a->command, "-- SUBCOMMAND ARGS...: what every rank runs")->required();
  cmd->callback([a, &g] { launch(a->nproc, a->port, a->command, g); });
}

}  // namespace sl
