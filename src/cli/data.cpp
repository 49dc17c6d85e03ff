// sortedllama data: the embedded synthetic dataset (synth) and conversion of downloaded datasets (prepare).
#include <filesystem>

#include <fmt/core.h>

#include "cli.h"
#include "sortedllama/data/prepare.h"
#include "sortedllama/data/synth.h"

namespace sl {

namespace {

void print_synth_summary(const std::string& dir, const nlohmann::ordered_json& m) {
  const auto& c = m.at("counts");
  fmt::print("{:<8} {:>10} {:>6} {:>6} {:>6}\n", "task", "difficulty", "train", "valid", "test");
  int64_t totals[3] = {0, 0, 0};
  const char* splits[3] = {"train", "valid", "test"};
  for (const std::string& t : synth_tasks())
    for (const char* d : {"1", "2", "3"}) {
      int64_t n[3];
      for (int k = 0; k < 3; ++k) totals[k] += n[k] = c.at(splits[k]).at(t).at(d).get<int64_t>();
      fmt::print("{:<8} {:>10} {:>6} {:>6} {:>6}\n", t, d, n[0], n[1], n[2]);
    }
  fmt::print("{:<8} {:>10} {:>6} {:>6} {:>6}\n", "total", "", totals[0], totals[1], totals[2]);
  for (const auto& [name, info] : m.at("files").items())
    fmt::print("{}  sha256 {}\n", (std::filesystem::path(dir) / name).string(), info.at("sha256").get<std::string>());
}

}  // namespace

void add_data_command(CLI::App& app, const GlobalOptions&) {
  CLI::App* data = app.add_subcommand("data", "make the synthetic dataset or convert downloaded datasets");
  data->require_subcommand(1);

  struct SynthArgs {
    std::string out;
    SynthOptions o;
    bool fresh = false;
  };
  auto s = std::make_shared<SynthArgs>();
  CLI::App* synth = data->add_subcommand("synth", "write the deterministic synthetic Alpaca-format dataset");
  synth->add_option("--out", s->out, "output directory")->required();
  synth->add_option("--train", s->o.train, "train records")->capture_default_str()->check(CLI::PositiveNumber);
  synth->add_option("--valid", s->o.valid, "validation records")->capture_default_str()->check(CLI::NonNegativeNumber);
  synth->add_option("--test", s->o.test, "test records")->capture_default_str()->check(CLI::NonNegativeNumber);
  synth->add_option("--seed", s->o.seed, "random seed")->capture_default_str();
  synth->add_flag("--fresh", s->fresh, "regenerate even when the files already match");
  synth->callback([s] {
    const SynthWriteResult r = synth_write(s->out, s->o, s->fresh);
    fmt::print("{} {} (seed {}, generator version {})\n", r.reused ? "reusing" : "wrote", s->out, s->o.seed,
               kSynthVersion);
    print_synth_summary(s->out, r.manifest);
  });

  struct PrepareArgs {
    std::string kind, input, out;
  };
  auto p = std::make_shared<PrepareArgs>();
  CLI::App* prepare = data->add_subcommand("prepare", "convert a downloaded dataset file into the toolkit's JSONL");
  prepare->add_option("--kind", p->kind, "alpaca | triviaqa | pandalm | vicuna | koala | self-instruct")
      ->required()
      ->check(CLI::IsMember(prepare_kinds()));
  prepare->add_option("--input", p->input, "the downloaded file")->required()->check(CLI::ExistingFile);
  prepare->add_option("--out", p->out, "output JSONL file (written atomically)")->required();
  prepare->callback([p] {
    const PrepareResult r = prepare_dataset(p->kind, p->input, p->out);
    fmt::print("{}: {} records in, {} records out\n", p->kind, r.records_in, r.records_out);
    fmt::print("  input  {}  sha256 {}\n", p->input, r.input_sha256);
    fmt::print("  output {}  sha256 {}\n", p->out, r.output_sha256);
  });
}

}  // namespace sl
