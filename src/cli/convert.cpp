// sortedllama convert: import checkpoints from other formats into the HF layout.
#include "cli.h"
#include "sortedllama/io/checkpoint.h"
#include "sortedllama/io/convert.h"

namespace sl {

void add_convert_command(CLI::App& app, const GlobalOptions&) {
  struct Args {
    std::string from = "llama2c", input, tokenizer, out;
  };
  auto a = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("convert", "import a checkpoint into an HF directory");
  cmd->add_option("--from", a->from,
                  "source format: llama2c (a .bin file), meta (params.json + consolidated.NN.pth), "
                  "hf-bin (an HF directory with pytorch_model.bin)")
      ->check(CLI::IsMember({"llama2c", "meta", "hf-bin"}));
  cmd->add_option("--input", a->input, "source checkpoint file (llama2c) or directory (meta, hf-bin)")
      ->required()
      ->check(CLI::ExistingPath);
  cmd->add_option("--tokenizer", a->tokenizer, "its sentencepiece .model (meta, hf-bin: default INPUT/tokenizer.model)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--out", a->out, "output HF directory (replaced atomically)")->required();
  cmd->callback([a] {
    if (a->from == "llama2c") {
      if (a->tokenizer.empty()) throw std::runtime_error("convert --from llama2c needs --tokenizer");
      convert_llama2c(a->input, a->tokenizer, a->out);
      return;
    }
    const std::string tok = a->tokenizer.empty() ? model_tokenizer_path(a->input) : a->tokenizer;
    if (a->from == "meta")
      convert_meta(a->input, tok, a->out);
    else
      convert_hf_bin(a->input, tok, a->out);
  });
}

}  // namespace sl
