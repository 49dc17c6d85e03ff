#include "sortedllama/data/synth.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <stdexcept>

#include <spdlog/spdlog.h>

#include "sortedllama/data/examples.h"
#include "sortedllama/util/files.h"
#include "sortedllama/util/rng.h"
#include "sortedllama/util/sha256.h"

namespace sl {

namespace {
using ojson = nlohmann::ordered_json;

const std::vector<std::pair<std::string, std::string>> kCapitals = {
    {"Abrovia", "Tesk"},    {"Belmora", "Ruun"},   {"Calvaro", "Imma"},  {"Dravia", "Kelm"},    {"Estoria", "Pell"},
    {"Farnland", "Osk"},    {"Gelvia", "Brin"},    {"Halvar", "Zuma"},   {"Istrad", "Velo"},    {"Jorvia", "Amsa"},
    {"Kalmar", "Dun"},      {"Lorvane", "Fiss"},   {"Morvia", "Gant"},   {"Norland", "Hesk"},   {"Olmet", "Tass"},
    {"Pravia", "Lune"},     {"Quorra", "Mesk"},    {"Rustavo", "Nim"},   {"Selvane", "Orrin"},  {"Tolvia", "Parr"},
    {"Ulmara", "Kiv"},      {"Valdor", "Sorn"},    {"Wendia", "Tull"},   {"Xandria", "Bask"},   {"Yorvik", "Caln"},
    {"Zemora", "Dorr"},     {"Arvland", "Elm"},    {"Borvia", "Fenn"},   {"Cresta", "Gorm"},    {"Dunmora", "Holt"}};

const std::vector<std::pair<std::string, std::string>> kColors = {
    {"lemon", "yellow"},  {"banana", "yellow"}, {"butter", "yellow"}, {"grass", "green"},   {"leaf", "green"},
    {"frog", "green"},    {"lime", "green"},    {"tomato", "red"},    {"cherry", "red"},    {"blood", "red"},
    {"snow", "white"},    {"milk", "white"},    {"cloud", "white"},   {"coal", "black"},    {"crow", "black"},
    {"sky", "blue"},      {"sea", "blue"},      {"carrot", "orange"}, {"pumpkin", "orange"}, {"chocolate", "brown"},
    {"bark", "brown"},    {"flamingo", "pink"}, {"plum", "purple"},   {"grape", "purple"}};

enum Task { kCopy, kReverse, kSort, kCount, kAdd, kMax, kCapital, kColor, kNumTasks };

std::string join(const std::vector<std::string>& items, const std::string& sep) {
  std::string s;
  for (size_t i = 0; i < items.size(); ++i) s += (i ? sep : "") + items[i];
  return s;
}

std::vector<std::string> draw(Rng& rng, int n, const std::string& alphabet) {
  std::vector<std::string> v(n);
  for (auto& x : v) x = std::string(1, alphabet[rng.below(alphabet.size())]);
  return v;
}

// k distinct entries of a fact table (a partial Fisher-Yates over the indices).
SynthRecord lookup(Rng& rng, int k, const std::vector<std::pair<std::string, std::string>>& table,
                   const std::string& instruction) {
  std::vector<size_t> idx(table.size());
  for (size_t i = 0; i < idx.size(); ++i) idx[i] = i;
  std::vector<std::string> keys, values;
  for (int i = 0; i < k; ++i) {
    std::swap(idx[i], idx[i + rng.below(idx.size() - i)]);
    keys.push_back(table[idx[i]].first);
    values.push_back(table[idx[i]].second);
  }
  return {instruction, join(keys, ", "), join(values, ", "), "", 0};
}

SynthRecord make_record(Task t, int d, Rng& rng) {
  static const std::string kLetters = "abcdefghijklmnopqrstuvwxyz", kDigits = "0123456789", kFew = "abcde";
  SynthRecord r;
  switch (t) {
    case kCopy:
    case kReverse: {  // d + 1 letters: longer lists take a tiny model far longer to learn to copy
      std::vector<std::string> v = draw(rng, d + 1, kLetters);
      r.instruction = t == kCopy ? "Repeat the letters." : "Reverse the letters.";
      r.input = join(v, " ");
      if (t == kReverse) std::reverse(v.begin(), v.end());
      r.output = join(v, " ");
      break;
    }
    case kSort: {
      std::vector<std::string> v = draw(rng, rng.range(2 * d, 2 * d + 1), kDigits);
      r.instruction = "Sort the digits.";
      r.input = join(v, " ");
      std::sort(v.begin(), v.end());
      r.output = join(v, " ");
      break;
    }
    case kCount: {
      const std::string c(1, kFew[rng.below(kFew.size())]);
      std::vector<std::string> v = draw(rng, rng.range(2 * d + 1, 2 * d + 2), kFew);
      r.instruction = "Count the letter " + c + ".";
      r.input = join(v, " ");
      r.output = std::to_string(std::count(v.begin(), v.end(), c));
      break;
    }
    case kAdd: {  // d digits per operand; no input, to exercise the other Alpaca template
      const int lo = d == 1 ? 1 : d == 2 ? 10 : 100;
      const int a = rng.range(lo, 10 * lo - 1), b = rng.range(lo, 10 * lo - 1);
      r.instruction = "What is " + std::to_string(a) + " + " + std::to_string(b) + "?";
      r.output = std::to_string(a + b);
      break;
    }
    case kMax: {
      std::vector<int> v(rng.range(2 * d, 2 * d + 1));
      std::vector<std::string> s;
      for (int& x : v) s.push_back(std::to_string(x = rng.range(10, 99)));
      r.instruction = "Give the largest number.";
      r.input = join(s, " ");
      r.output = std::to_string(*std::max_element(v.begin(), v.end()));
      break;
    }
    case kCapital:
      r = lookup(rng, d, kCapitals, "Give the capital of each country.");
      break;
    case kColor:
      r = lookup(rng, d, kColors, "Give the color of each thing.");
      break;
    case kNumTasks:
      break;
  }
  r.task = synth_tasks()[t];
  r.difficulty = d;
  return r;
}

struct Cell {
  Task task;
  int difficulty;
};

// A single-fact lookup is the fact table itself: train only (see synth.h).
bool train_only(const Cell& c) { return (c.task == kCapital || c.task == kColor) && c.difficulty == 1; }

std::vector<Cell> cells(bool for_eval) {
  std::vector<Cell> out;
  for (int t = 0; t < kNumTasks; ++t)
    for (int d = 1; d <= 3; ++d)
      if (!(for_eval && train_only({(Task)t, d}))) out.push_back({(Task)t, d});
  return out;
}

std::string key(const SynthRecord& r) { return r.instruction + '\n' + r.input; }

// Draws until the record's key is acceptable; small cells can run out of new keys.
template <class Accept>
SynthRecord draw_record(const Cell& c, Rng& rng, Accept accept, const char* split) {
  for (int attempt = 0; attempt < 10000; ++attempt) {
    SynthRecord r = make_record(c.task, c.difficulty, rng);
    if (accept(r)) return r;
  }
  throw std::runtime_error(std::string("synth: task ") + synth_tasks()[c.task] + " difficulty " +
                           std::to_string(c.difficulty) + " has run out of new (instruction, input) pairs for " +
                           split + "; ask for fewer valid/test records");
}

void check_count(const char* name, int64_t n, int64_t min) {
  if (n < min) throw std::runtime_error(std::string("synth: --") + name + " must be >= " + std::to_string(min));
}

const char* const kSplits[] = {"train", "valid", "test"};

}  // namespace

const std::vector<std::string>& synth_tasks() {
  static const std::vector<std::string> names = {"copy", "reverse", "sort", "count", "add", "max", "capital", "color"};
  return names;
}
const std::vector<std::pair<std::string, std::string>>& synth_capitals() { return kCapitals; }
const std::vector<std::pair<std::string, std::string>>& synth_colors() { return kColors; }

SynthSplits synth_generate(const SynthOptions& o) {
  check_count("train", o.train, 1);
  check_count("valid", o.valid, 0);
  check_count("test", o.test, 0);
  Rng rng(o.seed);
  std::set<std::string> held;  // keys of valid and test: each occurs once there and never in train
  // Test first, then valid, then train: a split does not change when a later one is resized.
  auto eval_split = [&](int64_t n, const char* name) {
    const std::vector<Cell> cs = cells(true);
    std::vector<SynthRecord> out;
    for (int64_t i = 0; i < n; ++i)
      out.push_back(draw_record(cs[i % cs.size()], rng, [&](const SynthRecord& r) { return held.insert(key(r)).second; },
                                name));
    rng.shuffle(out);
    return out;
  };
  SynthSplits s;
  s.test = eval_split(o.test, "test");
  s.valid = eval_split(o.valid, "valid");
  const std::vector<Cell> cs = cells(false);
  for (int64_t i = 0; i < o.train; ++i)
    s.train.push_back(draw_record(cs[i % cs.size()], rng, [&](const SynthRecord& r) { return !held.count(key(r)); },
                                  "train"));
  rng.shuffle(s.train);
  return s;
}

std::string synth_record_json(const SynthRecord& r) {
  ojson j;
  j["instruction"] = r.instruction;
  j["input"] = r.input;
  j["output"] = r.output;
  j["task"] = r.task;
  j["difficulty"] = r.difficulty;
  return j.dump();
}

std::string synth_record_text(const SynthRecord& r) { return alpaca_prompt(r.instruction, r.input) + r.output; }

SynthWriteResult synth_write(const std::string& dir, const SynthOptions& o, bool fresh) {
  namespace fs = std::filesystem;
  const ojson params = {{"generator", "sortedllama data synth"}, {"version", kSynthVersion}, {"seed", o.seed},
                        {"train", o.train},  {"valid", o.valid},  {"test", o.test}};
  const fs::path manifest_path = fs::path(dir) / "manifest.json";
  if (!fresh && fs::exists(manifest_path)) {
    std::ifstream f(manifest_path);
    const ojson m = ojson::parse(f, nullptr, false);
    std::string why;
    if (m.is_discarded() || !m.contains("params") || !m.contains("files")) {
      why = "it is unreadable";
    } else if (m["params"].dump() != params.dump()) {
      why = "it was made with " + m["params"].dump();
    } else {
      for (const auto& [name, info] : m["files"].items()) {
        const fs::path p = fs::path(dir) / name;
        if (!fs::exists(p) || sha256_file(p.string()) != info.value("sha256", "")) {
          why = name + " has changed";
          break;
        }
      }
    }
    if (why.empty()) return {true, m};
    spdlog::info("regenerating {}: {}", dir, why);
  }

  const SynthSplits s = synth_generate(o);
  fs::create_directories(dir);
  fs::remove(manifest_path);  // files and manifest never disagree, even if we stop half-way
  ojson counts, files;
  std::string corpus;
  const std::vector<SynthRecord>* splits[] = {&s.train, &s.valid, &s.test};
  for (int k = 0; k < 3; ++k) {
    std::string jsonl;
    ojson& c = counts[kSplits[k]];
    for (const std::string& t : synth_tasks()) c[t] = {{"1", 0}, {"2", 0}, {"3", 0}};
    for (const SynthRecord& r : *splits[k]) {
      jsonl += synth_record_json(r) + "\n";
      corpus += synth_record_text(r) + "\n";
      ojson& n = c[r.task][std::to_string(r.difficulty)];
      n = n.get<int64_t>() + 1;
    }
    const std::string name = std::string(kSplits[k]) + ".jsonl";
    write_file_atomic((fs::path(dir) / name).string(), jsonl);
    files[name] = {{"records", splits[k]->size()}, {"sha256", sha256_hex(jsonl)}};
  }
  write_file_atomic((fs::path(dir) / "tokenizer_corpus.txt").string(), corpus);
  files["tokenizer_corpus.txt"] = {{"sha256", sha256_hex(corpus)}};
  ojson m = {{"params", params}, {"counts", counts}, {"files", files}};
  write_file_atomic(manifest_path.string(), m.dump(2) + "\n");
  return {false, m};
}

}  // namespace sl
