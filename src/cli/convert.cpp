// sortedllama convert: import checkpoints from other formats into the HF layout.
#include "cli.h"
#include "sortedllama/io/convert.h"

namespace sl {

void add_convert_command(CLI::App& app, const GlobalOptions&) {
  struct Args {
    std::string from = "llama2c", input, tokenizer, out;
  };
  auto a = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("convert", "import a checkpoint into an HF directory");
  cmd->add_option("--from", a->from, "source format: llama2c")->check(CLI::IsMember({"llama2c"}));
  cmd->add_option("--input", a->input, "source checkpoint file")->required()->check(CLI::ExistingFile);
  cmd->add_option("--tokenizer", a->tokenizer, "its sentencepiece .model")->required()->check(CLI::ExistingFile);
  cmd->add_option("--out", a->out, "output HF directory (replaced atomically)")->required();
  cmd->callback([a] { convert_llama2c(a->input, a->tokenizer, a->out); });
}

}  // namespace sl
