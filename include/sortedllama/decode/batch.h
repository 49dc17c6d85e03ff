// The running batch every decoder shares: left-padded prompts (so every row's next token goes to
// the same cache slot), the key mask, which sequence each row is, and how a row finishes.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "sortedllama/model/llama.h"

namespace sl {

struct Generation {
  std::vector<int> tokens;    // new tokens only (EOS excluded)
  std::string finish_reason;  // "eos", "length" or "stop"
};

// When a sequence ends: EOS, a length limit, or the caller's stop test.
struct StopRule {
  int64_t max_new_tokens = 256;
  int64_t eos_id = 2;
  // Called after each new token of sequence `row` (streaming, stop strings); returning true ends
  // that sequence with finish_reason "stop".
  std::function<bool(size_t row, const std::vector<int>& tokens)> on_token;
};

struct DecodeBatch {
  // Checks the prompts against the model; `extra` = cache slots beyond the longest prompt.
  DecodeBatch(Llama& model, const std::vector<std::vector<int>>& prompts, int64_t extra);
  torch::Tensor tokens;       // [B,P] int64, left-padded prompts (on the model's device)
  torch::Tensor key_mask;     // [B,capacity] int64, 1 = a real token in that slot (on the model's device)
  std::vector<int64_t> rows;  // batch row -> sequence index, for the rows still running
  int64_t prompt_len = 0, capacity = 0;
  // A cache for every layer of this batch, in the model's dtype and on its device.
  KVCache make_cache(Llama& model) const;
  int64_t prompt_tokens() const;  // real (unpadded) prompt tokens
  // Appends `tok` to row r's sequence in `out` (EOS is not appended); false once it is finished.
  bool emit(std::vector<Generation>& out, size_t r, int tok, const StopRule& stop) const;
  // Keeps these batch rows (indices into `rows`) in the batch and the cache.
  void keep(const std::vector<int64_t>& keep_rows, KVCache& cache);
};

}  // namespace sl
