#include "sortedllama/data.h"

#include <algorithm>
#include <numeric>
#include <random>

#include <spdlog/spdlog.h>

#include "sortedllama/jsonl.h"

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

std::string not_a(const std::string& what, const json& v, const char* expected) {
  return what + " is " + v.type_name() + ", not " + expected;
}

// A string field that must be present and non-empty.
std::string required_text(const json& obj, const std::string& key) {
  auto it = obj.find(key);
  if (it == obj.end()) throw BadRecord("missing field \"" + key + "\"");
  if (!it->is_string()) throw BadRecord(not_a("field \"" + key + "\"", *it, "a string"));
  std::string s = it->get<std::string>();
  if (s.empty()) throw BadRecord("field \"" + key + "\" is empty");
  return s;
}

// Candidate answers in order, empty and repeated aliases dropped (the TriviaQA export has both).
std::vector<std::string> triviaqa_aliases(const json& obj) {
  std::vector<std::string> out;
  auto add = [&](const json& v, const std::string& what) {
    if (!v.is_string()) throw BadRecord(not_a(what, v, "a string"));
    std::string s = v.get<std::string>();
    if (!s.empty() && std::find(out.begin(), out.end(), s) == out.end()) out.push_back(std::move(s));
  };
  auto add_all = [&](const json& arr, const std::string& what) {
    if (!arr.is_array()) throw BadRecord(not_a(what, arr, "an array of strings"));
    for (size_t i = 0; i < arr.size(); ++i) add(arr[i], what + "[" + std::to_string(i) + "]");
  };
  if (auto it = obj.find("answers"); it != obj.end()) {
    add_all(*it, "field \"answers\"");
  } else if (auto a = obj.find("answer"); a != obj.end()) {  // HF trivia_qa: {value, aliases, ...}
    if (!a->is_object()) throw BadRecord(not_a("field \"answer\"", *a, "an object with \"value\" and \"aliases\""));
    if (auto v = a->find("value"); v != a->end()) add(*v, "field \"answer.value\"");
    if (auto al = a->find("aliases"); al != a->end()) add_all(*al, "field \"answer.aliases\"");
  } else {
    throw BadRecord("missing field \"answers\" (or \"answer\" with \"value\" and \"aliases\")");
  }
  if (out.empty()) throw BadRecord("no non-empty answer alias");
  return out;
}

Example record_example(const json& r, const Tokenizer& tok, const DataOptions& o, DataStats* st) {
  if (!r.is_object()) throw BadRecord(not_a("record", r, "a JSON object"));
  if (o.format == "alpaca") {
    std::string instruction = required_text(r, "instruction");
    std::string input;
    if (auto it = r.find("input"); it != r.end() && !it->is_null()) {
      if (!it->is_string()) throw BadRecord(not_a("field \"input\"", *it, "a string"));
      input = it->get<std::string>();
    }
    std::string output = required_text(r, "output");
    return make_example(tok, alpaca_prompt(instruction, input), output, o, st);
  }
  if (o.format == "triviaqa") {
    std::string question = required_text(r, "question");
    std::vector<std::string> aliases = triviaqa_aliases(r);
    const std::string& answer = aliases[std::min<size_t>(o.answer_alias, aliases.size() - 1)];
    return make_example(tok, triviaqa_prompt(question), " " + answer, o, st);
  }
  return make_example(tok, "", required_text(r, "text"), o, st);
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Uniform in [0, n). std::uniform_int_distribution is implementation-defined, so reject draws
// below 2^64 mod n and reduce the rest: unbiased and the same everywhere.
uint64_t below(std::mt19937_64& rng, uint64_t n) {
  const uint64_t threshold = (0 - n) % n;
  for (;;) {
    uint64_t x = rng();
    if (x >= threshold) return x % n;
  }
}

template <typename T>
void fisher_yates(std::vector<T>& v, std::mt19937_64& rng) {
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[below(rng, i)]);
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

std::vector<size_t> shuffled_indices(size_t n, uint64_t seed) {
  std::vector<size_t> idx(n);
  std::iota(idx.begin(), idx.end(), size_t{0});
  std::mt19937_64 rng(seed);
  fisher_yates(idx, rng);
  return idx;
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
  std::mt19937_64 rng(splitmix64(seed ^ splitmix64((uint64_t)epoch)));
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t{0});
  fisher_yates(order, rng);
  if (group_by_length) {
    const size_t mega = 50 * bs;
    auto longer = [&](size_t a, size_t b) { return data[a].tokens.size() > data[b].tokens.size(); };
    for (size_t b = 0; b < n; b += mega)  // stable: ties keep the shuffled order on every platform
      std::stable_sort(order.begin() + b, order.begin() + std::min(n, b + mega), longer);
  }
  std::vector<std::vector<size_t>> batches;
  for (size_t b = 0; b < n; b += bs) batches.emplace_back(order.begin() + b, order.begin() + std::min(n, b + bs));
  if (group_by_length) fisher_yates(batches, rng);
  return batches;
}

}  // namespace sl
