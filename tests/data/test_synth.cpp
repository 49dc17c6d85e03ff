// The synthetic dataset (synth.h) and the converters of downloaded datasets (prepare.h).
// Torch-free on purpose: helpers are local instead of test_util.h.
#include <stdlib.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "sortedllama/data/examples.h"
#include "sortedllama/data/prepare.h"
#include "sortedllama/data/synth.h"
#include "sortedllama/util/files.h"
#include "sortedllama/util/sha256.h"

namespace {
namespace fs = std::filesystem;
using json = nlohmann::json;
using sl::SynthRecord;

std::string shared_data(const std::string& rel) { return std::string(SL_SOURCE_DIR) + "/../shared/data/" + rel; }

std::string temp_dir() {
  std::string t = (fs::temp_directory_path() / "test_synth.XXXXXX").string();
  if (!mkdtemp(t.data())) throw std::runtime_error("mkdtemp failed");
  return t;
}

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void spit(const std::string& path, const std::string& bytes) { std::ofstream(path, std::ios::binary) << bytes; }

std::vector<json> read_jsonl(const std::string& path) {
  std::vector<json> out;
  std::ifstream f(path);
  for (std::string line; std::getline(f, line);) out.push_back(json::parse(line));
  return out;
}

std::vector<std::string> split(const std::string& s, const std::string& sep) {
  std::vector<std::string> out;
  size_t b = 0;
  for (size_t e; (e = s.find(sep, b)) != std::string::npos; b = e + sep.size()) out.push_back(s.substr(b, e - b));
  out.push_back(s.substr(b));
  return out;
}

std::string join(const std::vector<std::string>& v, const std::string& sep) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? sep : "") + v[i];
  return s;
}

// The answer and difficulty re-derived from the prompt alone, written apart from the generator.
struct Solved {
  std::string task, output;
  int difficulty = 0;
};

Solved solve(const std::string& instruction, const std::string& input) {
  const std::vector<std::string> items = split(input, " ");
  const int n = (int)items.size();
  if (instruction == "Repeat the letters.") return {"copy", input, n - 1};
  if (instruction == "Reverse the letters.") return {"reverse", join({items.rbegin(), items.rend()}, " "), n - 1};
  if (instruction == "Sort the digits.") {
    std::vector<std::string> s = items;
    std::sort(s.begin(), s.end());
    return {"sort", join(s, " "), n / 2};
  }
  if (instruction.rfind("Count the letter ", 0) == 0 && instruction.size() == 19) {
    const std::string c = instruction.substr(17, 1);
    return {"count", std::to_string(std::count(items.begin(), items.end(), c)), (n - 1) / 2};
  }
  if (instruction.rfind("What is ", 0) == 0 && input.empty()) {
    long a = 0, b = 0;
    char plus = 0, q = 0;
    std::istringstream is(instruction.substr(8));
    is >> a >> plus >> b >> q;
    return {"add", std::to_string(a + b), (int)std::to_string(a).size()};
  }
  if (instruction == "Give the largest number.") {
    int m = -1;
    for (const auto& x : items) m = std::max(m, std::stoi(x));
    return {"max", std::to_string(m), n / 2};
  }
  auto lookup = [&](const char* task, const std::vector<std::pair<std::string, std::string>>& table) {
    std::vector<std::string> keys = split(input, ", "), values;
    for (const auto& k : keys) {
      auto it = std::find_if(table.begin(), table.end(), [&](const auto& p) { return p.first == k; });
      values.push_back(it == table.end() ? "?" : it->second);
    }
    return Solved{task, join(values, ", "), (int)keys.size()};
  };
  if (instruction == "Give the capital of each country.") return lookup("capital", sl::synth_capitals());
  if (instruction == "Give the color of each thing.") return lookup("color", sl::synth_colors());
  return {"?", "", 0};
}

std::string key(const SynthRecord& r) { return r.instruction + "\n" + r.input; }

std::string all_json(const sl::SynthSplits& s) {
  std::string out;
  for (const auto* split : {&s.train, &s.valid, &s.test})
    for (const auto& r : *split) out += sl::synth_record_json(r) + "\n";
  return out;
}

bool is_train_only(const std::string& task, int difficulty) {
  return (task == "capital" || task == "color") && difficulty == 1;
}

// ---------------------------------------------------------------------------------------------

TEST(Synth, DeterministicAndPinned) {
  sl::SynthOptions o;
  o.train = 100, o.valid = 30, o.test = 30, o.seed = 7;
  const std::string a = all_json(sl::synth_generate(o));
  EXPECT_EQ(a, all_json(sl::synth_generate(o)));
  // Pinned: mt19937_64 and our sampling are fully specified, so these bytes are the same everywhere.
  // A deliberate change to the generator must bump kSynthVersion and update this checksum.
  EXPECT_EQ(sl::kSynthVersion, 2);
  EXPECT_EQ(sl::sha256_hex(a), "bca99c7cc53e0cc4fd2101544f64502052b7ff7ca432e9509e7fbfe1de9f4a3b");
  o.seed = 8;
  EXPECT_NE(a, all_json(sl::synth_generate(o)));
}

TEST(Synth, EarlierSplitsDoNotDependOnLaterSizes) {
  sl::SynthOptions o;
  o.train = 50, o.valid = 40, o.test = 40;
  const sl::SynthSplits a = sl::synth_generate(o);
  o.train = 500, o.valid = 80;
  const sl::SynthSplits b = sl::synth_generate(o);
  ASSERT_EQ(a.test.size(), b.test.size());
  for (size_t i = 0; i < a.test.size(); ++i) EXPECT_EQ(sl::synth_record_json(a.test[i]), sl::synth_record_json(b.test[i]));
}

TEST(Synth, DefaultSplitsAreDisjointCheckableAndCoverEveryCell) {
  const sl::SynthSplits s = sl::synth_generate(sl::SynthOptions{});
  ASSERT_EQ(s.train.size(), 20000u);
  ASSERT_EQ(s.valid.size(), 500u);
  ASSERT_EQ(s.test.size(), 500u);

  std::set<std::string> train_keys, valid_keys, test_keys;
  for (const auto& r : s.train) train_keys.insert(key(r));
  for (const auto& r : s.valid) EXPECT_TRUE(valid_keys.insert(key(r)).second) << "repeated in valid: " << key(r);
  for (const auto& r : s.test) EXPECT_TRUE(test_keys.insert(key(r)).second) << "repeated in test: " << key(r);
  for (const auto& k : test_keys) EXPECT_FALSE(train_keys.count(k) || valid_keys.count(k)) << "test overlaps: " << k;
  for (const auto& k : valid_keys) EXPECT_FALSE(train_keys.count(k)) << "valid overlaps train: " << k;

  std::map<std::string, std::map<std::pair<std::string, int>, int>> cells;  // split -> (task, difficulty) -> n
  size_t max_chars = 0;
  for (const auto& [name, split] : {std::pair{"train", &s.train}, {"valid", &s.valid}, {"test", &s.test}})
    for (const SynthRecord& r : *split) {
      const Solved want = solve(r.instruction, r.input);
      ASSERT_EQ(want.task, r.task) << sl::synth_record_json(r);
      ASSERT_EQ(want.output, r.output) << sl::synth_record_json(r);
      ASSERT_EQ(want.difficulty, r.difficulty) << sl::synth_record_json(r);
      ++cells[name][{r.task, r.difficulty}];
      max_chars = std::max(max_chars, r.instruction.size() + r.input.size() + r.output.size());
    }
  EXPECT_LE(max_chars, 80u);  // short enough for a ~64-token budget after the template
  for (const std::string& t : sl::synth_tasks())
    for (int d = 1; d <= 3; ++d) {
      const auto cell = std::make_pair(t, d);
      EXPECT_GE(cells["train"][cell], 800) << t << " " << d;
      for (const char* eval : {"valid", "test"}) {
        if (is_train_only(t, d)) {
          EXPECT_EQ(cells[eval][cell], 0) << eval << " " << t;
        } else {
          EXPECT_GE(cells[eval][cell], 20) << eval << " " << t << " " << d;
        }
      }
    }
  // Both Alpaca templates occur; spot-check the fact tables against the generator's.
  EXPECT_TRUE(std::any_of(s.test.begin(), s.test.end(), [](const auto& r) { return r.input.empty(); }));
  EXPECT_EQ(solve("Give the color of each thing.", "lemon, sky, coal").output, "yellow, blue, black");
  EXPECT_EQ(solve("Give the capital of each country.", "Dravia").output, "Kelm");
  EXPECT_EQ(sl::synth_capitals().size(), 30u);
}

TEST(Synth, RejectsImpossibleRequests) {
  sl::SynthOptions o;
  o.train = 0;
  EXPECT_THROW(sl::synth_generate(o), std::runtime_error);
  o.train = 10, o.test = 200000;  // more distinct 2-country lookups than exist
  try {
    sl::synth_generate(o);
    FAIL() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("run out of new"), std::string::npos) << e.what();
  }
}

TEST(Synth, RecordAndCorpusFormat) {
  const SynthRecord r{"Count the letter b.", "b a b", "2", "count", 1};
  EXPECT_EQ(sl::synth_record_json(r),
            R"({"instruction":"Count the letter b.","input":"b a b","output":"2","task":"count","difficulty":1})");
  EXPECT_EQ(sl::synth_record_text(r), sl::alpaca_prompt(r.instruction, r.input) + "2");
  EXPECT_EQ(sl::synth_record_text({"What is 10 + 12?", "", "22", "add", 1}),
            "Below is an instruction that describes a task. Write a response that appropriately completes the "
            "request.\n\n### Instruction:\nWhat is 10 + 12?\n\n### Response:22");
}

TEST(Synth, WriteManifestAndReuse) {
  const std::string dir = temp_dir() + "/synth";
  sl::SynthOptions o;
  o.train = 120, o.valid = 25, o.test = 25, o.seed = 3;
  const sl::SynthWriteResult w = sl::synth_write(dir, o, false);
  EXPECT_FALSE(w.reused);
  const sl::SynthSplits s = sl::synth_generate(o);
  std::string corpus;
  for (const auto& [name, split] : {std::pair{"train", &s.train}, {"valid", &s.valid}, {"test", &s.test}}) {
    std::string want;
    for (const auto& r : *split) want += sl::synth_record_json(r) + "\n", corpus += sl::synth_record_text(r) + "\n";
    const std::string file = dir + "/" + name + ".jsonl";
    EXPECT_EQ(slurp(file), want) << file;
    // The trainer's loader reads the records as Alpaca data.
    const auto recs = read_jsonl(file);
    ASSERT_EQ(recs.size(), split->size());
    const json m = json::parse(slurp(dir + "/manifest.json"));
    EXPECT_EQ(m["files"][std::string(name) + ".jsonl"]["sha256"], sl::sha256_hex(want));
    EXPECT_EQ(m["files"][std::string(name) + ".jsonl"]["records"], split->size());
    int total = 0;
    for (const auto& [t, per] : m["counts"][name].items())
      for (const auto& [d, n] : per.items()) total += n.get<int>();
    EXPECT_EQ(total, (int)split->size());
  }
  EXPECT_EQ(slurp(dir + "/tokenizer_corpus.txt"), corpus);
  const json m = json::parse(slurp(dir + "/manifest.json"));
  EXPECT_EQ(m["params"]["seed"], 3);
  EXPECT_EQ(m["params"]["version"], sl::kSynthVersion);
  EXPECT_EQ(m["files"]["tokenizer_corpus.txt"]["sha256"], sl::sha256_hex(corpus));

  EXPECT_TRUE(sl::synth_write(dir, o, false).reused);
  EXPECT_FALSE(sl::synth_write(dir, o, true).reused);  // --fresh
  spit(dir + "/valid.jsonl", "tampered\n");
  EXPECT_FALSE(sl::synth_write(dir, o, false).reused);
  EXPECT_EQ(slurp(dir + "/valid.jsonl").substr(0, 16), R"({"instruction":")");
  o.seed = 4;
  EXPECT_FALSE(sl::synth_write(dir, o, false).reused);
  EXPECT_EQ(json::parse(slurp(dir + "/manifest.json"))["params"]["seed"], 4);
  fs::remove_all(fs::path(dir).parent_path());
}

// ---------------------------------------------------------------------------------------------
// prepare: every kind on the real files in ../shared/data, and a malformed record of each.

struct Prepared {
  sl::PrepareResult r;
  std::vector<json> records;
};

Prepared prepare(const std::string& kind, const std::string& input, const std::string& dir) {
  const std::string out = dir + "/" + kind + ".jsonl";
  Prepared p{sl::prepare_dataset(kind, input, out), read_jsonl(out)};
  EXPECT_EQ(p.r.input_sha256, sl::sha256_file(input));
  EXPECT_EQ(p.r.output_sha256, sl::sha256_file(out));
  EXPECT_EQ(p.r.records_out, (int64_t)p.records.size());
  return p;
}

std::vector<std::string> keys_of(const json& j) {
  std::vector<std::string> k;
  for (const auto& [name, v] : j.items()) k.push_back(name);
  return k;
}

// prepare must fail with a message containing `want` (file and line or record).
void expect_prepare_error(const std::string& kind, const std::string& path, const std::string& bytes,
                          const std::string& want) {
  spit(path, bytes);
  try {
    sl::prepare_dataset(kind, path, path + ".out");
    ADD_FAILURE() << kind << ": no error for " << bytes;
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << kind << ": " << e.what();
  }
  EXPECT_FALSE(fs::exists(path + ".out"));
}

class Prepare : public ::testing::Test {
 protected:
  void SetUp() override { dir = temp_dir(); }
  void TearDown() override { fs::remove_all(dir); }
  std::string dir;
};

std::string first_line(const std::string& path) {
  std::ifstream f(path);
  std::string line;
  std::getline(f, line);
  return line;
}

TEST_F(Prepare, Alpaca) {
  const Prepared p = prepare("alpaca", shared_data("alpaca/alpaca_data_cleaned.json"), dir);
  EXPECT_EQ(p.r.records_in, 50921);
  ASSERT_EQ(p.records.size(), 50921u);
  EXPECT_EQ(first_line(dir + "/alpaca.jsonl").substr(0, 74),
            R"({"instruction":"Give three tips for staying healthy.","input":"","output":)");
  // JSONL input, a null input and a missing one read as "".
  spit(dir + "/in.jsonl", "{\"instruction\": \"a\", \"input\": null, \"output\": \"b\"}\n\n{\"instruction\": \"c\", \"output\": \"d\"}\n");
  EXPECT_EQ(prepare("alpaca", dir + "/in.jsonl", dir).records[1], json({{"instruction", "c"}, {"input", ""}, {"output", "d"}}));
  expect_prepare_error("alpaca", dir + "/bad.json",
                       "[\n {\"instruction\": \"a\", \"input\": \"\", \"output\": \"b\"},\n {\"instruction\": \"c\"}\n]",
                       "bad.json:3 (record 1): missing field \"output\"");
  expect_prepare_error("alpaca", dir + "/bad.jsonl", "{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": 5",
                       "bad.jsonl:2: malformed JSON");
}

TEST_F(Prepare, TriviaQAFlat) {
  const Prepared p = prepare("triviaqa", shared_data("triviaqa/triviaqa_unfiltered_test_1000.jsonl"), dir);
  ASSERT_EQ(p.records.size(), 1000u);
  EXPECT_EQ(first_line(dir + "/triviaqa.jsonl").substr(0, 36), R"({"question_id":"qw_2021","question":)");
  EXPECT_EQ(p.records[0]["answers"][0], "First man in space");  // order kept
  for (const auto& r : p.records) {  // the source has empty and repeated aliases; they are gone
    std::set<std::string> seen;
    ASSERT_FALSE(r["answers"].empty());
    for (const auto& a : r["answers"]) {
      EXPECT_NE(a, "");
      EXPECT_TRUE(seen.insert(a.get<std::string>()).second) << r.dump();
    }
  }
  expect_prepare_error("triviaqa", dir + "/bad.jsonl", "{\"question_id\": \"q1\", \"question\": \"Q?\"}\n",
                       "bad.jsonl:1: missing field \"answers\"");
  expect_prepare_error("triviaqa", dir + "/bad2.jsonl", "{\"question\": \"Q?\", \"answers\": [\"\"]}\n",
                       "bad2.jsonl:1: no non-empty answer");
}

TEST_F(Prepare, TriviaQAOfficialAndHF) {
  // The official release (sorted keys, one line) with its bulky evidence lists, and HF's export.
  const std::string official =
      R"({"Data": [{"Answer": {"Aliases": ["Paris", "paris", "Paris, France"], "NormalizedAliases": ["paris"], )"
      R"("Value": "Paris"}, "EntityPages": [{"Title": "x"}], "Question": "Capital of France?", "QuestionId": "tc_1", )"
      R"("SearchResults": [{"Url": "u"}]}, {"Answer": {"Aliases": ["4"], "Value": "Four"}, "Question": "2+2?", )"
      R"("QuestionId": "tc_2"}], "Domain": "Web", "Version": 1.0})";
  spit(dir + "/unfiltered-web-dev.json", official);
  Prepared p = prepare("triviaqa", dir + "/unfiltered-web-dev.json", dir);
  ASSERT_EQ(p.records.size(), 2u);
  EXPECT_EQ(p.records[0], json({{"question_id", "tc_1"}, {"question", "Capital of France?"},
                                {"answers", {"Paris", "paris", "Paris, France"}}}));
  EXPECT_EQ(p.records[1]["answers"], json({"Four", "4"}));  // value first
  // Pretty-printed, "Data" not first.
  spit(dir + "/verified-web-dev.json", "{\n  \"Version\": 1.0,\n  \"Data\": " + json::parse(official)["Data"].dump(2) + "\n}\n");
  EXPECT_EQ(prepare("triviaqa", dir + "/verified-web-dev.json", dir).records, p.records);

  spit(dir + "/hf.jsonl",
       R"({"question": "Q1?", "question_id": "hf_1", "answer": {"value": "B", "aliases": ["A", "B", ""], "normalized_value": "b"}})"
       "\n");
  p = prepare("triviaqa", dir + "/hf.jsonl", dir);
  EXPECT_EQ(p.records[0], json({{"question_id", "hf_1"}, {"question", "Q1?"}, {"answers", {"B", "A"}}}));

  expect_prepare_error("triviaqa", dir + "/test-without-answers.json",
                       R"({"Data": [{"Question": "Q?", "QuestionId": "t1"}], "Version": 1.0})",
                       "test-without-answers.json: Data[0]: missing field \"Answer\"");
  expect_prepare_error("triviaqa", dir + "/bad-hf.jsonl", R"({"question": "Q?", "answer": {"value": 3}})" "\n",
                       "bad-hf.jsonl:1: field \"answer.value\" is number, not a string");
}

TEST_F(Prepare, PandaLM) {
  const Prepared p = prepare("pandalm", shared_data("pandalm/testset-inference-v1.json"), dir);
  ASSERT_EQ(p.records.size(), 170u);
  EXPECT_EQ(p.records[0]["id"], 0);
  EXPECT_EQ(p.records[169]["id"], 169);
  EXPECT_EQ(p.records[1], json({{"id", 1},
                                {"instruction", "Make a list of adjectives that can be used to describe the given brand."},
                                {"input", "a creative tech startup"}}));
  EXPECT_EQ(first_line(dir + "/pandalm.jsonl").substr(0, 22), R"({"id":0,"instruction":)");
  expect_prepare_error("pandalm", dir + "/bad.json", "[\n  {\"instruction\": 3, \"input\": \"\"}\n]",
                       "bad.json:2 (record 0): field \"instruction\" is number, not a string");
}

TEST_F(Prepare, Vicuna) {
  const Prepared p = prepare("vicuna", shared_data("instruct_eval/vicuna_question.jsonl"), dir);
  ASSERT_EQ(p.records.size(), 80u);
  EXPECT_EQ(p.records[0], json({{"id", 1}, {"instruction", "How can I improve my time management skills?"}, {"input", ""}}));
  expect_prepare_error("vicuna", dir + "/bad.jsonl", "{\"question_id\": 1, \"turns\": [\"a\"]}\n{\"question_id\": 2, \"turns\": []}\n",
                       "bad.jsonl:2: field \"turns\" is not an array starting with a non-empty string");
}

TEST_F(Prepare, Koala) {
  const Prepared p = prepare("koala", shared_data("instruct_eval/koala_test_set.jsonl"), dir);
  ASSERT_EQ(p.records.size(), 180u);
  EXPECT_EQ(p.records[2], json({{"id", "koala_2"},
                                {"instruction", "List the layers of the TCP/IP model and for each layer identify one protocol."},
                                {"input", ""}}));
  expect_prepare_error("koala", dir + "/bad.jsonl", "{\"id\": \"k\", \"text\": \"a\"}\n", "bad.jsonl:1: missing field \"prompt\"");
}

TEST_F(Prepare, SelfInstruct) {
  const Prepared p = prepare("self-instruct", shared_data("instruct_eval/user_oriented_instructions.jsonl"), dir);
  ASSERT_EQ(p.records.size(), 252u);
  EXPECT_EQ(keys_of(p.records[0]), (std::vector<std::string>{"id", "input", "instruction", "output"}));
  EXPECT_EQ(p.records[0]["id"], "user_oriented_task_0");
  EXPECT_EQ(p.records[0]["output"].get<std::string>().substr(0, 30), "If you have any questions abou");
  spit(dir + "/two.jsonl", R"({"id": "t", "instruction": "i", "instances": [{"input": "a", "output": "b"}, {"input": "", "output": "c"}]})" "\n");
  EXPECT_EQ(prepare("self-instruct", dir + "/two.jsonl", dir).records[1],
            json({{"id", "t#1"}, {"instruction", "i"}, {"input", ""}, {"output", "c"}}));
  expect_prepare_error("self-instruct", dir + "/bad.jsonl", "{\"id\": \"t\", \"instruction\": \"i\", \"instances\": [{\"input\": \"a\"}]}\n",
                       "bad.jsonl:1 instances[0]: missing field \"output\"");
}

TEST_F(Prepare, UnknownKindAndMissingFile) {
  EXPECT_THROW(sl::prepare_dataset("nope", shared_data("instruct_eval/koala_test_set.jsonl"), dir + "/x"), std::runtime_error);
  EXPECT_THROW(sl::prepare_dataset("koala", dir + "/missing.jsonl", dir + "/x"), std::runtime_error);
  spit(dir + "/empty.jsonl", "\n");
  expect_prepare_error("koala", dir + "/empty.jsonl", "\n", "empty.jsonl: no records");
}

}  // namespace
