// sortedllama finetune: SoFT / SFT / ICT / extracted fine-tuning from a JSON config.
#include <iostream>

#include <spdlog/spdlog.h>

#include "cli.h"
#include "sortedllama/train/distributed.h"
#include "sortedllama/train/trainer.h"

namespace sl {

void add_finetune_command(CLI::App& app, const GlobalOptions& g) {
  struct Args {
    std::string config, resume;
    std::vector<std::string> sets;
    bool resume_with_changes = false, reference = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("finetune", "fine-tune with SoFT (sorted loss), SFT, SFT+ICT or extracted layers");
  cmd->add_option("--config", a->config, "JSON config (configs/*.json); omitted keys take their defaults")
      ->check(CLI::ExistingFile);
  cmd->add_option("--set", a->sets, "override a key: --set train.lr=1e-4 (repeatable)");
  cmd->add_option("--resume", a->resume, "continue from the latest checkpoint in out_dir, or from DIR")
      ->expected(0, 1)
      ->default_str("auto");
  cmd->add_flag("--resume-with-changes", a->resume_with_changes,
                "resume even though the config differs from the checkpoint's (the differences are logged)");
  cmd->add_flag("--config-reference", a->reference, "print every config key with its default and meaning (Markdown)");
  cmd->callback([a, cmd, &g] {
    if (a->reference) {
      std::cout << train_config_reference();
      return;
    }
    nlohmann::json cfg = resolve_train_config(a->config, a->sets);
    const DistEnv env = DistEnv::from_environment();
    if (env.world > 1) {  // ranks tag their lines; only rank 0 reports progress and warnings
      spdlog::default_logger()->set_pattern(fmt::format("[%H:%M:%S rank {}/{} %^%l%$] %v", env.rank, env.world));
      // Every rank loads the same data and config, so their warnings would repeat rank 0's.
      if (env.rank != 0 && spdlog::get_level() < spdlog::level::err) spdlog::set_level(spdlog::level::err);
    }
    if (env.rank == 0) std::cout << cfg.dump(2) << std::endl;  // the resolved config, as saved to out_dir/config.json
    std::string resume = cmd->count("--resume") ? (a->resume.empty() ? "auto" : a->resume) : "";
    FinetuneHooks hooks;
    hooks.resume_with_changes = a->resume_with_changes;
    finetune(cfg, resume, resolve_device(g.device), hooks);
  });
}

}  // namespace sl
