// Importers from other checkpoint formats into the HF layout.
#pragma once
#include <string>

namespace sl {

// llama2.c `.bin` (version 0, ../shared/FORMATS.md) -> HF directory. Meta's interleaved RoPE rows of
// wq/wk are permuted into HF's rotate-half layout; the tokenizer is copied alongside.
void convert_llama2c(const std::string& bin_path, const std::string& tokenizer, const std::string& out_dir);

}  // namespace sl
