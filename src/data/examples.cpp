#include "sortedllama/data/examples.h"

#include <algorithm>
#include <numeric>

#include <spdlog/spdlog.h>

#include "sortedllama/data/records.h"
#include "sortedllama/util/rng.h"

namespace sl {

namespace {
using nlohmann::json;

constexpr int kWarnBadRecords = 5;  // bad records warned about one by one; the rest only counted

void check_max_seq_len(const DataOptions& o) {
  if (o.max_seq_len < 2)
    throw std::runtime_error("data.max_seq_len must be at least 2 (BOS and one target), got " +
                             std::to_string(o.max_seq_len));
}

void check_options(const DataOptions& o) {
  if (o.format != "alpaca" && o.format != "triviaqa" && o.format != "text")
    throw std::runtime_error("data.format must be alpaca, triviaqa or text, got \"" + o.format + "\"");
  if (o.on_bad_record != "fail" && o.on_bad_record != "skip")
    throw std::runtime_error("data.on_bad_record must be fail or skip, got \"" + o.on_bad_record + "\"");
  if (o.answer_alias < 0)
    throw std::runtime_error("data.answer_alias must be >= 0, got " + std::to_string(o.answer_alias));
  check_max_seq_len(o);
}

Example record_example(const json& r, const Tokenizer& tok, const DataOptions& o, DataStats* st) {
  require_object(r);
  if (o.format == "alpaca") {
    const std::string instruction = required_string(r, "instruction"), input = optional_string(r, "input");
    const std::string output = required_string(r, "output");
    return make_example(tok, alpaca_prompt(instruction, input), output, o, st);
  }
  if (o.format == "triviaqa") {
    const std::string question = required_string(r, "question");
    std::vector<std::string> aliases = triviaqa_aliases(r);
    if ((size_t)o.answer_alias >= aliases.size())
      throw BadRecord("has " + std::to_string(aliases.size()) + " non-empty alias(es); data.answer_alias " +
                      std::to_string(o.answer_alias) + " is past them");
    const std::string& answer = aliases[(size_t)o.answer_alias];
    return make_example(tok, triviaqa_prompt(question), " " + answer, o, st);
  }
  return make_example(tok, "", required_string(r, "text"), o, st);
}
}  // namespace

std::string alpaca_prompt(const std::string& instruction, const std::string& input) {
  if (input.empty())
    return "Below is an instruction that describes a task. Write a response that appropriately completes "
           "the request.\n\n### Instruction:\n" +
           instruction + "\n\n### Response:";
  return "Below is an instruction that describes a task, paired with an input that provides further context. "
         "Write a response that appropriately completes the request.\n\n### Instruction:\n" +
         instruction + "\n\n### Input:\n" + input + "\n\n### Response:";
}

std::string triviaqa_prompt(const std::string& question) { return "Question: " + question + "?\nAnswer:"; }

Example make_example(const Tokenizer& tok, const std::string& prompt, const std::string& response,
                     const DataOptions& o, DataStats* st) {
  check_max_seq_len(o);
  Example ex;
  ex.tokens = tok.encode(prompt + response, /*bos=*/true, /*eos=*/true);
  // The prompt's share is measured by encoding it alone, as Stanford Alpaca does.
  const size_t prompt_alone = tok.encode(prompt, /*bos=*/true).size();
  const bool cut = (int64_t)ex.tokens.size() > o.max_seq_len;
  if (cut) ex.tokens.resize(o.max_seq_len);
  ex.prompt_tokens = (int64_t)std::min(prompt_alone, ex.tokens.size());
  const size_t first = o.train_on_prompt ? 1 : ex.prompt_tokens;
  if (first >= ex.tokens.size()) {
    if (cut)
      throw PromptTooLong("no response tokens left after truncation to max_seq_len (" +
                          std::to_string(o.max_seq_len) + "; the prompt alone is " + std::to_string(prompt_alone) +
                          " tokens)");
    throw BadRecord("no response tokens after the prompt");
  }
  ex.target.assign(ex.tokens.size(), 0);
  std::fill(ex.target.begin() + first, ex.target.end(), 1);
  if (st) {
    st->truncated += cut;
    st->target_tokens += (int64_t)(ex.tokens.size() - first);
  }
  return ex;
}

std::vector<Example> load_examples(const std::string& path, const Tokenizer& tok, const DataOptions& o,
                                   DataStats* st) {
  check_options(o);
  DataStats local;
  DataStats& s = st ? *st : local;
  s = DataStats{};
  std::vector<Example> out;
  auto bad = [&](const std::string& where, const std::string& what) {
    if (o.on_bad_record == "fail")
      throw std::runtime_error(where + ": " + what + " (set data.on_bad_record=skip to skip such records)");
    if (++s.skipped <= kWarnBadRecords) spdlog::warn("{}: {}; skipping this record", where, what);
  };
  for_each_record(
      path,
      [&](Record&& r) {
        ++s.records;
        try {
          out.push_back(record_example(r.value, tok, o, &s));
          ++s.used;
        } catch (const PromptTooLong& e) {
          if (++s.too_long <= kWarnBadRecords) spdlog::warn("{}: {}; dropping this record", r.where, e.what());
        } catch (const BadRecord& e) {
          bad(r.where, e.what());
        }
      },
      [&](const std::string& where, const std::string& what) {
        ++s.records;
        bad(where, what);
      });
  if (s.skipped > kWarnBadRecords) spdlog::warn("{}: skipped {} bad records of {}", path, s.skipped, s.records);
  if (s.too_long > 0)
    spdlog::warn("{}: dropped {} records whose prompt alone fills max_seq_len {}", path, s.too_long, o.max_seq_len);
  if (out.empty())
    throw std::runtime_error(path + ": no usable " + o.format + " records (" + std::to_string(s.records) +
                             " read, " + std::to_string(s.skipped) + " skipped)");
  return out;
}

void split_validation(std::vector<Example>& train, std::vector<Example>& valid, double fraction, uint64_t seed) {
  if (!(fraction > 0 && fraction < 1))
    throw std::runtime_error("validation fraction must be in (0, 1), got " + std::to_string(fraction));
  const size_t n = train.size();
  if (n < 2)
    throw std::runtime_error("cannot hold out a validation fraction of " + std::to_string(n) + " example(s)");
  const size_t n_valid = std::clamp<size_t>((size_t)std::llround(fraction * n), 1, n - 1);
  const std::vector<size_t> order = shuffled_indices(n, seed);
  std::vector<char> held(n, 0);
  for (size_t i = 0; i < n_valid; ++i) held[order[i]] = 1;
  std::vector<Example> kept;
  valid.clear();
  for (size_t i = 0; i < n; ++i) (held[i] ? valid : kept).push_back(std::move(train[i]));
  train = std::move(kept);
}

std::vector<std::vector<size_t>> epoch_batches(const std::vector<Example>& data, int64_t batch_size, uint64_t seed,
                                               int64_t epoch, bool group_by_length) {
  if (batch_size < 1) throw std::runtime_error("batch size must be >= 1, got " + std::to_string(batch_size));
  const size_t n = data.size(), bs = (size_t)batch_size;
  Rng rng(splitmix64(seed ^ splitmix64((uint64_t)epoch)));
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t{0});
  rng.shuffle(order);
  if (group_by_length) {
    const size_t mega = 50 * bs;
    auto longer = [&](size_t a, size_t b) { return data[a].tokens.size() > data[b].tokens.size(); };
    for (size_t b = 0; b < n; b += mega)  // stable: ties keep the shuffled order on every platform
      std::stable_sort(order.begin() + b, order.begin() + std::min(n, b + mega), longer);
  }
  std::vector<std::vector<size_t>> batches;
  for (size_t b = 0; b < n; b += bs) batches.emplace_back(order.begin() + b, order.begin() + std::min(n, b + bs));
  if (group_by_length) rng.shuffle(batches);
  return batches;
}

}  // namespace sl
