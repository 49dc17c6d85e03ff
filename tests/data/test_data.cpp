// Fine-tuning data: prompt bytes, masking, truncation, bad records, real files, split, batching.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <numeric>
#include <set>

#include "sortedllama/data/examples.h"
#include "sortedllama/data/records.h"
#include "test_util.h"

using namespace sl;

namespace {
const std::string kRoot = SL_SOURCE_DIR;
const std::string kAlpaca = kRoot + "/../shared/data/alpaca/alpaca_data_cleaned.json";
const std::string kTrivia = kRoot + "/../shared/data/triviaqa/triviaqa_unfiltered_test_1000.jsonl";

const Tokenizer& llama_tok() {
  static Tokenizer tok(kRoot + "/../shared/models/llama2-tokenizer/tokenizer.model");
  return tok;
}

std::string temp_dir() {
  static std::string dir = sl_test::temp_dir("data");
  return dir;
}

std::string write_file(const std::string& name, const std::string& text) {
  std::string path = temp_dir() + "/" + name;
  std::ofstream(path) << text;
  return path;
}

int64_t count_targets(const Example& ex) { return std::count(ex.target.begin(), ex.target.end(), 1); }

DataOptions opts(const std::string& format, const std::string& on_bad = "fail") {
  DataOptions o;
  o.format = format;
  o.on_bad_record = on_bad;
  return o;
}

// The runtime_error message load_examples throws, or "" when it does not throw.
std::string load_error(const std::string& path, const DataOptions& o) {
  try {
    load_examples(path, llama_tok(), o, nullptr);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}

// Synthetic examples whose first token identifies them and whose length is given.
std::vector<Example> synthetic(const std::vector<size_t>& lengths) {
  std::vector<Example> out;
  for (size_t i = 0; i < lengths.size(); ++i) {
    Example ex;
    ex.tokens.assign(lengths[i], 0);
    ex.tokens[0] = (int)i;
    ex.target.assign(lengths[i], 1);
    ex.target[0] = 0;
    out.push_back(ex);
  }
  return out;
}

std::vector<size_t> flatten(const std::vector<std::vector<size_t>>& batches) {
  std::vector<size_t> all;
  for (const auto& b : batches) all.insert(all.end(), b.begin(), b.end());
  return all;
}
}  // namespace

TEST(DataPrompts, AlpacaExactBytes) {
  EXPECT_EQ(alpaca_prompt("Add the numbers.", "2, 3"),
            "Below is an instruction that describes a task, paired with an input that provides further context. "
            "Write a response that appropriately completes the request.\n\n"
            "### Instruction:\nAdd the numbers.\n\n### Input:\n2, 3\n\n### Response:");
  EXPECT_EQ(alpaca_prompt("Say hi.", ""),
            "Below is an instruction that describes a task. Write a response that appropriately completes the "
            "request.\n\n### Instruction:\nSay hi.\n\n### Response:");
}

TEST(DataPrompts, TriviaqaExactBytes) {
  EXPECT_EQ(triviaqa_prompt("Who wrote Hamlet"), "Question: Who wrote Hamlet?\nAnswer:");
  // Like lm-evaluation-harness: a question that already ends in '?' gets a second one.
  EXPECT_EQ(triviaqa_prompt("Who wrote Hamlet?"), "Question: Who wrote Hamlet??\nAnswer:");
}

TEST(MakeExample, AlpacaMaskingAndTargets) {
  const Tokenizer& tok = llama_tok();
  const std::string prompt = alpaca_prompt("Name a primary color.", "");
  const std::string response = "Red is a primary color.";
  DataStats st;
  Example ex = make_example(tok, prompt, response, DataOptions{}, &st);

  std::vector<int> full = tok.encode(prompt + response, true);
  full.push_back(tok.eos_id());
  EXPECT_EQ(ex.tokens, full);
  ASSERT_EQ(ex.target.size(), ex.tokens.size());
  EXPECT_EQ(ex.tokens.front(), tok.bos_id());
  EXPECT_EQ(ex.tokens.back(), tok.eos_id());
  EXPECT_EQ(ex.prompt_tokens, (int64_t)tok.encode(prompt, true).size());
  EXPECT_EQ(ex.target[0], 0);
  for (int64_t t = 0; t < ex.prompt_tokens; ++t) EXPECT_EQ(ex.target[t], 0) << t;
  for (size_t t = ex.prompt_tokens; t < ex.tokens.size(); ++t) EXPECT_EQ(ex.target[t], 1) << t;
  EXPECT_EQ(count_targets(ex), (int64_t)ex.tokens.size() - ex.prompt_tokens);
  // The targets are exactly the response and EOS.
  std::vector<int> targets(ex.tokens.begin() + ex.prompt_tokens, ex.tokens.end() - 1);
  EXPECT_EQ(tok.decode(targets), response);
  EXPECT_EQ(st.target_tokens, count_targets(ex));
  EXPECT_EQ(st.truncated, 0);
}

TEST(MakeExample, PromptSeamMatchesStanfordAlpaca) {
  // ":" and a leading "-" of the response merge into one token ":-" (about 3% of Alpaca records).
  // Like Stanford Alpaca, the first encode(prompt).size() positions stay masked regardless, so
  // that merged token is not a target: kept on purpose for comparability with the paper.
  const Tokenizer& tok = llama_tok();
  const std::string prompt = alpaca_prompt("Give one tip.", "");
  Example ex = make_example(tok, prompt, "- Sleep well.", DataOptions{}, nullptr);
  EXPECT_EQ(ex.prompt_tokens, (int64_t)tok.encode(prompt, true).size());
  EXPECT_EQ(tok.piece(ex.tokens[ex.prompt_tokens - 1]), ":-");
  EXPECT_EQ(ex.target[ex.prompt_tokens - 1], 0);
  EXPECT_EQ(ex.target[ex.prompt_tokens], 1);
}

TEST(MakeExample, TrainOnPromptNeverTargetsBos) {
  const Tokenizer& tok = llama_tok();
  DataOptions o;
  o.train_on_prompt = true;
  Example ex = make_example(tok, triviaqa_prompt("Capital of France"), " Paris", o, nullptr);
  EXPECT_EQ(ex.target[0], 0);
  EXPECT_EQ(count_targets(ex), (int64_t)ex.tokens.size() - 1);
  EXPECT_EQ(ex.prompt_tokens, (int64_t)tok.encode(triviaqa_prompt("Capital of France"), true).size());
}

TEST(MakeExample, TextHasNoPrompt) {
  const Tokenizer& tok = llama_tok();
  Example ex = make_example(tok, "", "Once upon a time", DataOptions{}, nullptr);
  EXPECT_EQ(ex.prompt_tokens, 1);
  EXPECT_EQ(ex.target[0], 0);
  EXPECT_EQ(count_targets(ex), (int64_t)ex.tokens.size() - 1);
  EXPECT_EQ(ex.tokens.back(), tok.eos_id());
}

TEST(MakeExample, TruncationIsCounted) {
  const Tokenizer& tok = llama_tok();
  const std::string prompt = triviaqa_prompt("Which planet is known as the red planet");
  const int64_t p = (int64_t)tok.encode(prompt, true).size();
  DataOptions o;
  o.max_seq_len = p + 2;
  DataStats st;
  Example ex = make_example(tok, prompt, " Mars, the fourth planet from the sun", o, &st);
  EXPECT_EQ((int64_t)ex.tokens.size(), p + 2);
  EXPECT_NE(ex.tokens.back(), tok.eos_id());
  EXPECT_EQ(count_targets(ex), 2);
  EXPECT_EQ(st.truncated, 1);
  EXPECT_EQ(st.target_tokens, 2);

  // Cut inside the prompt: nothing left to learn.
  o.max_seq_len = p;
  try {
    make_example(tok, prompt, " Mars", o, &st);
    FAIL() << "expected BadRecord";
  } catch (const BadRecord& e) {
    EXPECT_NE(std::string(e.what()).find("no response tokens left after truncation to max_seq_len"),
              std::string::npos)
        << e.what();
  }
  EXPECT_EQ(st.truncated, 1);  // a rejected example is not counted

  // With train_on_prompt the same cut still has targets.
  o.train_on_prompt = true;
  Example all = make_example(tok, prompt, " Mars", o, &st);
  EXPECT_EQ(count_targets(all), p - 1);
  EXPECT_EQ(all.prompt_tokens, p);
  EXPECT_EQ(st.truncated, 2);
}

TEST(MakeExample, RejectsTinyMaxSeqLen) {
  DataOptions o;
  o.max_seq_len = 1;
  try {
    make_example(llama_tok(), "", "hello", o, nullptr);
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("data.max_seq_len"), std::string::npos) << e.what();
  }
}

TEST(LoadExamples, OptionErrorsNameTheirKey) {
  std::string path = write_file("opt.jsonl", R"({"text": "hi"})" "\n");
  EXPECT_NE(load_error(path, opts("sharegpt")).find("data.format"), std::string::npos);
  EXPECT_NE(load_error(path, opts("text", "ignore")).find("data.on_bad_record"), std::string::npos);
  DataOptions o = opts("triviaqa");
  o.answer_alias = -1;
  EXPECT_NE(load_error(path, o).find("data.answer_alias"), std::string::npos);
}

TEST(LoadExamples, AlpacaInputMissingNullOrEmptyIsTheSame) {
  const Tokenizer& tok = llama_tok();
  std::string path = write_file("alpaca_inputs.jsonl",
                                R"({"instruction": "Say hi.", "output": "Hi!"})" "\n"
                                R"({"instruction": "Say hi.", "input": null, "output": "Hi!", "extra": 3})" "\n"
                                R"({"instruction": "Say hi.", "input": "", "output": "Hi!"})" "\n"
                                R"({"instruction": "Say hi.", "input": "to Bob", "output": "Hi Bob!"})" "\n");
  DataStats st;
  auto ex = load_examples(path, tok, opts("alpaca"), &st);
  ASSERT_EQ(ex.size(), 4u);
  EXPECT_EQ(ex[0].tokens, ex[1].tokens);
  EXPECT_EQ(ex[0].tokens, ex[2].tokens);
  EXPECT_EQ(ex[0].prompt_tokens, (int64_t)tok.encode(alpaca_prompt("Say hi.", ""), true).size());
  EXPECT_EQ(ex[3].prompt_tokens, (int64_t)tok.encode(alpaca_prompt("Say hi.", "to Bob"), true).size());
  EXPECT_EQ(st.records, 4);
  EXPECT_EQ(st.used, 4);
  EXPECT_EQ(st.skipped, 0);
  int64_t targets = 0;
  for (const auto& e : ex) targets += count_targets(e);
  EXPECT_EQ(st.target_tokens, targets);
}

TEST(LoadExamples, TriviaqaAliasChoice) {
  const Tokenizer& tok = llama_tok();
  std::string path = write_file("tqa.jsonl",
                                R"({"question": "Q1", "answers": ["", "Paris", "paris", "Paris"]})" "\n"
                                R"({"question": "Q2", "answer": {"value": "Rome", "aliases": ["roma", "Rome"]}})" "\n");
  auto response = [&](const Example& ex) {
    return tok.decode(std::vector<int>(ex.tokens.begin() + ex.prompt_tokens, ex.tokens.end() - 1));
  };
  DataOptions o = opts("triviaqa");
  auto ex = load_examples(path, tok, o, nullptr);
  ASSERT_EQ(ex.size(), 2u);
  EXPECT_EQ(response(ex[0]), "Paris");  // the empty alias is ignored
  EXPECT_EQ(response(ex[1]), "Rome");   // HF: value first
  std::vector<int> full = tok.encode(triviaqa_prompt("Q2") + " Rome", true, true);
  EXPECT_EQ(ex[1].tokens, full);
  o.answer_alias = 1;
  ex = load_examples(path, tok, o, nullptr);
  EXPECT_EQ(response(ex[0]), "paris");
  EXPECT_EQ(response(ex[1]), "roma");
  o.answer_alias = 7;  // past every record's aliases: a bad record, never silently another alias
  EXPECT_NE(load_error(path, o).find("data.answer_alias 7 is past them"), std::string::npos) << load_error(path, o);
}

// Every kind of bad record, on line 3 after a good record and a blank line.
TEST(LoadExamples, BadRecordsFailWithFileAndLine) {
  struct Case {
    std::string format, good, bad, expect;
  };
  const std::string alpaca = R"({"instruction": "Say hi.", "input": "", "output": "Hi!"})";
  const std::string tqa = R"({"question": "Capital of France", "answers": ["Paris"]})";
  const std::string text = R"({"text": "Some text."})";
  const std::vector<Case> cases = {
      {"alpaca", alpaca, R"({"instruction": "x", "output": )", "malformed JSON"},
      {"alpaca", alpaca, R"(["not", "an", "object"])", "record is array, not a JSON object"},
      {"alpaca", alpaca, R"("just a string")", "record is string, not a JSON object"},
      {"alpaca", alpaca, R"({"input": "", "output": "x"})", "missing field \"instruction\""},
      {"alpaca", alpaca, R"({"instruction": 5, "output": "x"})", "field \"instruction\" is number, not a string"},
      {"alpaca", alpaca, R"({"instruction": "", "output": "x"})", "field \"instruction\" is empty"},
      {"alpaca", alpaca, R"({"instruction": "x", "input": ["a"], "output": "x"})",
       "field \"input\" is array, not a string"},
      {"alpaca", alpaca, R"({"instruction": "x", "input": ""})", "missing field \"output\""},
      {"alpaca", alpaca, R"({"instruction": "x", "output": null})", "field \"output\" is null, not a string"},
      {"alpaca", alpaca, R"({"instruction": "x", "output": ""})", "field \"output\" is empty"},
      {"triviaqa", tqa, R"({"answers": ["Paris"]})", "missing field \"question\""},
      {"triviaqa", tqa, R"({"question": "Q"})", "missing field \"answers\""},
      {"triviaqa", tqa, R"({"question": "Q", "answers": "Paris"})",
       "field \"answers\" is string, not an array of strings"},
      {"triviaqa", tqa, R"({"question": "Q", "answers": ["Paris", 3]})",
       "field \"answers[1]\" is number, not a string"},
      {"triviaqa", tqa, R"({"question": "Q", "answers": []})", "no non-empty answer alias"},
      {"triviaqa", tqa, R"({"question": "Q", "answers": ["", ""]})", "no non-empty answer alias"},
      {"triviaqa", tqa, R"({"question": "Q", "answer": "Paris"})", "field \"answer\" is string, not an object"},
      {"triviaqa", tqa, R"({"question": "Q", "answer": {"value": 1}})", "field \"answer.value\" is number"},
      {"triviaqa", tqa, R"({"question": "Q", "answer": {"aliases": []}})", "no non-empty answer alias"},
      {"text", text, R"({"txt": "x"})", "missing field \"text\""},
      {"text", text, R"({"text": ""})", "field \"text\" is empty"},
      {"text", text, R"({"text": {"a": 1}})", "field \"text\" is object, not a string"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    std::string name = "bad" + std::to_string(i) + ".jsonl";
    std::string path = write_file(name, c.good + "\n\n" + c.bad + "\n" + c.good + "\n");
    std::string msg = load_error(path, opts(c.format));
    SCOPED_TRACE(c.bad);
    EXPECT_NE(msg.find(name + ":3: "), std::string::npos) << msg;
    EXPECT_NE(msg.find(c.expect), std::string::npos) << msg;
    EXPECT_NE(msg.find("set data.on_bad_record=skip"), std::string::npos) << msg;

    DataStats st;
    auto ex = load_examples(path, llama_tok(), opts(c.format, "skip"), &st);
    EXPECT_EQ(ex.size(), 2u);
    EXPECT_EQ(st.records, 3);
    EXPECT_EQ(st.used, 2);
    EXPECT_EQ(st.skipped, 1);
  }
}

TEST(LoadExamples, PromptFillingMaxSeqLenIsDroppedAndCountedEvenInFailMode) {
  std::string long_instruction(3000, 'a');
  std::string path = write_file("long.jsonl", R"({"instruction": "Say hi.", "output": "Hi!"})" "\n"
                                              R"({"instruction": ")" + long_instruction + R"(", "output": "x"})" "\n");
  for (const char* mode : {"fail", "skip"}) {
    DataStats st;
    auto ex = load_examples(path, llama_tok(), opts("alpaca", mode), &st);
    EXPECT_EQ(ex.size(), 1u);
    EXPECT_EQ(st.records, 2);
    EXPECT_EQ(st.too_long, 1);
    EXPECT_EQ(st.skipped, 0);
    EXPECT_EQ(st.truncated, 0);
  }
}

TEST(LoadExamples, JsonArrayErrorsNameTheLine) {
  std::string path = write_file("arr.json",
                                "[\n"
                                " {\"instruction\": \"Say hi.\",\n  \"output\": \"Hi! [ok], {fine} \\\"q\\\"\"},\n"
                                " {\"instruction\": \"Say hi.\",\n"
                                "  \"output\": \"\"}\n"
                                "]\n");
  std::string msg = load_error(path, opts("alpaca"));
  EXPECT_NE(msg.find("arr.json:4 (record 1): field \"output\" is empty"), std::string::npos) << msg;
  DataStats st;
  EXPECT_EQ(load_examples(path, llama_tok(), opts("alpaca", "skip"), &st).size(), 1u);
  EXPECT_EQ(st.skipped, 1);
}

TEST(LoadExamples, SkipModeCountsAndNeedsOneGoodRecord) {
  std::string path = write_file("mixed.jsonl", "{\"text\": \"a\"}\n{bad\n\"x\"\n{\"text\": \"\"}\n{\"text\": \"b\"}\n"
                                               "{\"text\": 1}\n{\"no\": 1}\n{\"text\": \"c\"}\n");
  DataStats st;
  auto ex = load_examples(path, llama_tok(), opts("text", "skip"), &st);
  EXPECT_EQ(ex.size(), 3u);
  EXPECT_EQ(st.records, 8);
  EXPECT_EQ(st.used, 3);
  EXPECT_EQ(st.skipped, 5);

  std::string none = write_file("none.jsonl", "{bad\n{\"text\": \"\"}\n");
  std::string msg = load_error(none, opts("text", "skip"));
  EXPECT_NE(msg.find("no usable text records (2 read, 2 skipped)"), std::string::npos) << msg;
  // A broken JSON array has no records to skip to.
  std::string broken = write_file("broken.json", "[{\"text\": \"a\"},\n{\"text\": ]\n");
  msg = load_error(broken, opts("text", "skip"));
  EXPECT_NE(msg.find("broken.json: malformed JSON"), std::string::npos) << msg;
}

TEST(Jsonl, ReadRecordsStillThrowsOnMalformedLines) {
  std::string path = write_file("rr.jsonl", "{\"a\": 1}\n\n{oops\n");
  try {
    read_records(path);
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("rr.jsonl:3: malformed JSON"), std::string::npos) << e.what();
  }
  auto recs = read_records(write_file("rr2.jsonl", "{\"a\": 1}\n\n{\"a\": 2}\n"));
  ASSERT_EQ(recs.size(), 2u);
  EXPECT_EQ(recs[1].value["a"], 2);
  EXPECT_NE(recs[1].where.find("rr2.jsonl:3"), std::string::npos);
}

TEST(DataRealFiles, AlpacaFirst50) {
  const Tokenizer& tok = llama_tok();
  auto records = read_records(kAlpaca);
  ASSERT_EQ(records.size(), 50921u);
  EXPECT_EQ(records[0].where, kAlpaca + ":2 (record 0)");
  EXPECT_EQ(records[1].where, kAlpaca + ":7 (record 1)");
  nlohmann::json first50 = nlohmann::json::array();
  for (size_t i = 0; i < 50; ++i) first50.push_back(records[i].value);
  std::string path = write_file("alpaca50.json", first50.dump(1));

  DataStats st;
  auto ex = load_examples(path, tok, opts("alpaca"), &st);
  ASSERT_EQ(ex.size(), 50u);
  EXPECT_EQ(st.used, 50);
  EXPECT_EQ(st.skipped, 0);
  EXPECT_EQ(st.truncated, 0);
  int64_t targets = 0;
  for (size_t i = 0; i < 50; ++i) {
    const auto& r = records[i].value;
    std::string prompt = alpaca_prompt(r["instruction"], r["input"]);
    std::vector<int> full = tok.encode(prompt + r["output"].get<std::string>(), true, true);
    EXPECT_EQ(ex[i].tokens, full) << i;
    EXPECT_EQ(ex[i].prompt_tokens, (int64_t)tok.encode(prompt, true).size()) << i;
    EXPECT_EQ(ex[i].tokens.back(), tok.eos_id());
    targets += count_targets(ex[i]);
  }
  EXPECT_EQ(st.target_tokens, targets);
  // Record 0 has an empty input: the short template.
  EXPECT_EQ(records[0].value["input"], "");
  EXPECT_EQ(tok.decode(std::vector<int>(ex[0].tokens.begin() + 1, ex[0].tokens.begin() + ex[0].prompt_tokens)),
            alpaca_prompt("Give three tips for staying healthy.", ""));
}

TEST(DataRealFiles, Triviaqa1000) {
  const Tokenizer& tok = llama_tok();
  DataStats st;
  auto ex = load_examples(kTrivia, tok, opts("triviaqa"), &st);
  ASSERT_EQ(ex.size(), 1000u);
  EXPECT_EQ(st.records, 1000);
  EXPECT_EQ(st.skipped, 0);
  EXPECT_EQ(st.truncated, 0);
  // Line 1: "Who was the first man sent into space, in 1961?" with aliases starting "First man in space".
  EXPECT_EQ(ex[0].tokens,
            tok.encode(triviaqa_prompt("Who was the first man sent into space, in 1961?") + " First man in space",
                       true, true));
  // Some records list an empty alias first; the first non-empty one is used instead.
  auto records = read_records(kTrivia);
  size_t empty_first = 0;
  for (size_t i = 0; i < records.size(); ++i) {
    const auto& answers = records[i].value["answers"];
    if (answers[0] != "") continue;
    ++empty_first;
    std::string answer = answers[1] != "" ? answers[1].get<std::string>() : answers[2].get<std::string>();
    std::string prompt = triviaqa_prompt(records[i].value["question"]);
    EXPECT_EQ(ex[i].tokens, tok.encode(prompt + " " + answer, true, true)) << records[i].where;
  }
  EXPECT_GT(empty_first, 0u);
}

TEST(DataSplit, DeterministicDisjointAndComplete) {
  std::vector<size_t> lengths(101);
  std::iota(lengths.begin(), lengths.end(), size_t{2});
  auto split = [&](uint64_t seed) {
    std::vector<Example> train = synthetic(lengths), valid = synthetic({3});
    split_validation(train, valid, 0.1, seed);
    std::vector<int> t, v;
    for (const auto& e : train) t.push_back(e.tokens[0]);
    for (const auto& e : valid) v.push_back(e.tokens[0]);
    return std::make_pair(t, v);
  };
  auto [t1, v1] = split(7);
  auto [t2, v2] = split(7);
  EXPECT_EQ(t1, t2);
  EXPECT_EQ(v1, v2);
  EXPECT_EQ(v1.size(), 10u);  // round(0.1 * 101), replacing valid's old contents
  EXPECT_EQ(t1.size(), 91u);
  EXPECT_TRUE(std::is_sorted(t1.begin(), t1.end()));  // file order kept
  EXPECT_TRUE(std::is_sorted(v1.begin(), v1.end()));
  std::set<int> all(t1.begin(), t1.end());
  for (int id : v1) EXPECT_TRUE(all.insert(id).second) << id << " in both";
  EXPECT_EQ(all.size(), 101u);
  EXPECT_NE(split(8).second, v1);

  std::vector<Example> train = synthetic({2, 3}), valid;
  split_validation(train, valid, 0.01, 1);  // at least one held out
  EXPECT_EQ(valid.size(), 1u);
  EXPECT_EQ(train.size(), 1u);
  EXPECT_THROW(split_validation(train, valid, 0.0, 1), std::runtime_error);
  EXPECT_THROW(split_validation(train, valid, 1.0, 1), std::runtime_error);
}


TEST(DataBatches, DeterministicCompleteAndVaryingByEpoch) {
  std::vector<size_t> lengths(103);
  for (size_t i = 0; i < lengths.size(); ++i) lengths[i] = 2 + (i * 37) % 50;
  auto data = synthetic(lengths);
  auto b0 = epoch_batches(data, 8, 3, 0, false);
  EXPECT_EQ(b0, epoch_batches(data, 8, 3, 0, false));
  ASSERT_EQ(b0.size(), 13u);
  for (size_t i = 0; i + 1 < b0.size(); ++i) EXPECT_EQ(b0[i].size(), 8u);
  EXPECT_EQ(b0.back().size(), 7u);
  std::vector<size_t> all = flatten(b0);
  std::sort(all.begin(), all.end());
  std::vector<size_t> expect(103);
  std::iota(expect.begin(), expect.end(), size_t{0});
  EXPECT_EQ(all, expect);
  EXPECT_NE(flatten(b0), flatten(epoch_batches(data, 8, 3, 1, false)));
  EXPECT_NE(flatten(b0), flatten(epoch_batches(data, 8, 4, 0, false)));
  EXPECT_THROW(epoch_batches(data, 0, 3, 0, false), std::runtime_error);
}

TEST(DataBatches, GroupByLength) {
  // 2 * 50 * 4 + 1 examples: two full mega-batches and a one-example one, distinct lengths.
  const int64_t bs = 4;
  std::vector<size_t> lengths(401);
  std::iota(lengths.begin(), lengths.end(), size_t{2});
  auto data = synthetic(lengths);
  auto len = [&](size_t i) { return data[i].tokens.size(); };
  auto batches = epoch_batches(data, bs, 11, 0, true);
  EXPECT_EQ(batches, epoch_batches(data, bs, 11, 0, true));
  std::vector<size_t> all = flatten(batches);
  std::sort(all.begin(), all.end());
  std::vector<size_t> expect(401);
  std::iota(expect.begin(), expect.end(), size_t{0});
  EXPECT_EQ(all, expect);
  ASSERT_EQ(batches.size(), 101u);
  size_t partial = 0;
  for (const auto& b : batches) {
    partial += b.size() < (size_t)bs;
    // Longest first inside a batch, and batches are cut from a sorted run of 200 random
    // examples out of 401, so lengths within one batch stay close (no batch mixes extremes).
    for (size_t i = 0; i + 1 < b.size(); ++i) EXPECT_GT(len(b[i]), len(b[i + 1]));
    EXPECT_LT(len(b.front()) - len(b.back()), 100u);
  }
  EXPECT_EQ(partial, 1u);
  // The batch order is shuffled: not simply longest-first within each mega-batch.
  std::vector<size_t> firsts;
  for (const auto& b : batches) firsts.push_back(len(b.front()));
  EXPECT_FALSE(std::is_sorted(firsts.begin(), firsts.begin() + 50, std::greater<size_t>()));
  EXPECT_NE(batches, epoch_batches(data, bs, 11, 1, true));
  // Ungrouped batches of the same data mix lengths far more.
  size_t spread_grouped = 0, spread_plain = 0;
  for (const auto& b : batches) spread_grouped += len(b.front()) - len(b.back());
  for (const auto& b : epoch_batches(data, bs, 11, 0, false)) {
    auto [mn, mx] = std::minmax_element(b.begin(), b.end(), [&](size_t x, size_t y) { return len(x) < len(y); });
    spread_plain += len(*mx) - len(*mn);
  }
  EXPECT_LT(spread_grouped * 5, spread_plain);
}
