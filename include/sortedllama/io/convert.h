// Importers from other checkpoint formats into the HF layout.
#pragma once
#include <string>

namespace sl {

// llama2.c `.bin` (version 0, ../shared/FORMATS.md) -> HF directory. Meta's interleaved RoPE rows of
// wq/wk are permuted into HF's rotate-half layout; the tokenizer is copied alongside.
void convert_llama2c(const std::string& bin_path, const std::string& tokenizer, const std::string& out_dir);

// Meta's original download (params.json + consolidated.00.pth .. consolidated.NN.pth, one
// tensor-parallel shard each) -> HF directory, in the checkpoint's dtype. Shards are joined along
// the dimension each tensor was split on, as Meta's and HF's converters do, and the wq/wk rows are
// permuted into rotate-half layout. vocab_size -1 in params.json means the tokenizer's size.
void convert_meta(const std::string& dir, const std::string& tokenizer, const std::string& out_dir);

// HF directory with torch.save weights (pytorch_model.bin, or shards with
// pytorch_model.bin.index.json) -> the same model with safetensors weights, in config.json's dtype.
void convert_hf_bin(const std::string& dir, const std::string& tokenizer, const std::string& out_dir);

}  // namespace sl
