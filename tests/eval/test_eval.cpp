// eval tasks: TriviaQA scoring and predictions, pairwise judging arithmetic, batched generation,
// layer analysis, instruction loaders, results files and plots.
#include <gtest/gtest.h>

#include "sortedllama/io/checkpoint.h"
#include "sortedllama/eval/tasks.h"
#include "sortedllama/eval/plot.h"
#include "test_util.h"

namespace {

std::string shared(const std::string& rel) { return sl_test::shared_dir() + "/" + rel; }

// Expects `f` to throw a message containing `part`.
template <typename F>
void expect_error(F&& f, const std::string& part) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one containing: " << part;
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

// ---- TriviaQA ----

struct QACase {
  std::string prediction;
  std::vector<std::string> aliases;
  bool em, cs, official;
  double f1;
};

TEST(EvalTriviaqa, HandWorkedScores) {
  const std::vector<QACase> cases = {
      {"paris", {"Paris"}, true, false, true, 1.0},                  // case
      {"Paris", {"London", "Paris"}, true, true, true, 1.0},         // any alias
      {"The Beatles", {"Beatles"}, false, false, true, 1.0},         // articles: only the official scorer drops them
      {"O'Neil", {"ONeil"}, true, false, false, 0.0},                // lm-eval deletes punctuation, official spaces it
      {"New  York", {"New York"}, false, false, true, 1.0},          // inner whitespace kept by lm-eval only
      {"émile zola", {"Émile Zola"}, true, false, true, 1.0},        // unicode lowercasing
      {"", {"Paris"}, false, false, false, 0.0},                     // empty prediction
      {"Yuri Gagarin", {"Gagarin"}, false, false, false, 2.0 / 3.0}, // partial: P = 1/2, R = 1
  };
  for (const auto& c : cases) {
    sl::QAScore s = sl::score_triviaqa(c.prediction, c.aliases);
    EXPECT_EQ(s.exact_match, c.em) << c.prediction;
    EXPECT_EQ(s.exact_match_case_sensitive, c.cs) << c.prediction;
    EXPECT_EQ(s.exact_match_official, c.official) << c.prediction;
    EXPECT_NEAR(s.f1, c.f1, 1e-12) << c.prediction;
  }
}

TEST(EvalTriviaqa, PredictionsScoredToKnownNumbers) {
  std::string d = sl_test::temp_dir("eval-preds");
  sl_test::write_file(d + "/q.jsonl",
                      "{\"question_id\": \"a\", \"question\": \"Capital of France\", \"answers\": [\"Paris\"]}\n"
                      "{\"question_id\": \"b\", \"question\": \"Band from Liverpool\", \"answers\": [\"Beatles\", \"The Fab Four\"]}\n"
                      "{\"question_id\": \"c\", \"question\": \"First man in space\", \"answers\": [\"Yuri Gagarin\"]}\n"
                      "{\"question_id\": \"d\", \"question\": \"Largest planet\", \"answers\": [\"Jupiter\"]}\n");
  // Exit 2: raw continuations, cut at "\n" . , as generated ones are.
  sl_test::write_file(d + "/p_exit2.jsonl",
                      "{\"question_id\": \"a\", \"prediction\": \" Paris, France\"}\n"
                      "{\"question_id\": \"b\", \"prediction\": \"the fab four.\"}\n"
                      "{\"question_id\": \"c\", \"prediction\": \"Gagarin\\nQuestion:\"}\n"
                      "{\"question_id\": \"d\", \"prediction\": \"\"}\n");
  // The record's "exit" wins over the file name.
  sl_test::write_file(d + "/other.jsonl", "{\"question_id\": \"a\", \"prediction\": \"paris\", \"exit\": 5}\n");
  auto qs = sl::load_triviaqa(d + "/q.jsonl");
  sl::TaskResult r = sl::score_triviaqa_predictions(qs, {d + "/p_exit2.jsonl", d + "/other.jsonl"}, 0);
  ASSERT_EQ(r.rows.size(), 2u);
  const auto& m2 = r.rows[0].metrics;
  EXPECT_EQ(r.rows[0].name, "2");
  // a: all three; b: lm-eval and official, not case-sensitive; c: none (F1 2/3); d: none.
  EXPECT_DOUBLE_EQ(m2["exact_match"].get<double>(), 2.0 / 4);
  EXPECT_DOUBLE_EQ(m2["exact_match_case_sensitive"].get<double>(), 1.0 / 4);
  EXPECT_DOUBLE_EQ(m2["exact_match_official"].get<double>(), 2.0 / 4);
  EXPECT_NEAR(m2["f1"].get<double>(), (1.0 + 1.0 + 2.0 / 3.0 + 0.0) / 4, 1e-12);
  EXPECT_EQ(m2["n"].get<int64_t>(), 4);
  EXPECT_EQ(r.rows[0].samples[0]["prediction"], "Paris");
  EXPECT_EQ(r.rows[1].name, "5");
  EXPECT_DOUBLE_EQ(r.rows[1].metrics["exact_match"].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(r.rows[1].metrics["exact_match_case_sensitive"].get<double>(), 0.0);

  sl_test::write_file(d + "/bad_id.jsonl", "{\"question_id\": \"a\", \"prediction\": \"x\"}\n"
                                           "{\"question_id\": \"zz\", \"prediction\": \"x\"}\n");
  expect_error([&] { sl::score_triviaqa_predictions(qs, {d + "/bad_id.jsonl"}, 0); },
               "bad_id.jsonl:2: question_id \"zz\" is not in the questions file");
  sl_test::write_file(d + "/dup.jsonl", "{\"question_id\": \"a\", \"prediction\": \"x\"}\n"
                                        "{\"question_id\": \"a\", \"prediction\": \"y\"}\n");
  expect_error([&] { sl::score_triviaqa_predictions(qs, {d + "/dup.jsonl"}, 0); }, "dup.jsonl:2");
  sl_test::write_file(d + "/badq.jsonl", "{\"question\": \"q\", \"answers\": [\"x\", 3]}\n");
  expect_error([&] { sl::load_triviaqa(d + "/badq.jsonl"); }, "badq.jsonl:1: field \"answers[1]\" is number");
}

TEST(EvalTriviaqa, FewShotContextIsLmEvalFormat) {
  std::vector<sl::TriviaQuestion> pool = {{"x", "Who wrote Hamlet", {"Shakespeare", "Will"}, "Shakespeare"},
                                          {"y", "2+2", {"4"}, "4"}};
  EXPECT_EQ(sl::triviaqa_fewshot(pool, 1, 7, "y"), "Question: Who wrote Hamlet?\nAnswer: Shakespeare\n\n");
  EXPECT_EQ(sl::triviaqa_fewshot(pool, 2, 7, "z").size(),
            std::string("Question: Who wrote Hamlet?\nAnswer: Shakespeare\n\nQuestion: 2+2?\nAnswer: 4\n\n").size());
  expect_error([&] { sl::triviaqa_fewshot(pool, 2, 7, "x"); }, "only 1 usable");
  // lm-eval's target is answer.aliases[0], which need not be the answer's value.
  const std::string d = sl_test::temp_dir("fewshot");
  sl_test::write_file(d + "/hf.jsonl", R"({"question": "Q", "answer": {"value": "Val", "aliases": ["", "First", "Val"]}})" "\n");
  const auto qs = sl::load_triviaqa(d + "/hf.jsonl");
  EXPECT_EQ(qs[0].aliases, (std::vector<std::string>{"Val", "First"}));
  EXPECT_EQ(sl::triviaqa_fewshot(qs, 1, 7, ""), "Question: Q?\nAnswer: First\n\n");
}

// ---- compare ----

// A scripted judge: response 1 or 2 wins when only it contains "GOOD"; "Tie" otherwise.
std::vector<std::string> good_judge(const std::vector<std::string>& prompts) {
  std::vector<std::string> out;
  for (const auto& p : prompts) {
    const size_t r1 = p.find("### Response 1:\n"), r2 = p.find("### Response 2:\n"), ev = p.find("### Evaluation:");
    const bool g1 = p.substr(r1, r2 - r1).find("GOOD") != std::string::npos;
    const bool g2 = p.substr(r2, ev - r2).find("GOOD") != std::string::npos;
    out.push_back(g1 && !g2 ? "1\n\nReason: ..." : g2 && !g1 ? " 2\n" : "Tie");
  }
  return out;
}

sl::SampleSet samples(const std::vector<std::string>& outputs, std::vector<int> exits) {
  sl::SampleSet s;
  for (int e : exits)
    for (size_t i = 0; i < outputs.size(); ++i) s[e]["id" + std::to_string(i)] = {"Say something", "", outputs[i]};
  return s;
}

TEST(EvalCompare, PairwiseScoreFromScriptedVerdictsBothOrders) {
  // A beats B on id0 (in both orders), ties id1 and id2.
  sl::SampleSet a = samples({"GOOD answer", "GOOD too", "meh"}, {1, 2});
  sl::SampleSet b = samples({"bad answer", "GOOD too", "meh"}, {1, 2});
  sl::TaskResult r = sl::eval_compare(a, b, {{1, 1}}, good_judge, 0);
  ASSERT_EQ(r.rows.size(), 1u);
  const auto& m = r.rows[0].metrics;
  EXPECT_EQ(m["wins"].get<int64_t>(), 2);
  EXPECT_EQ(m["ties"].get<int64_t>(), 4);
  EXPECT_EQ(m["losses"].get<int64_t>(), 0);
  EXPECT_EQ(m["n"].get<int64_t>(), 3);
  EXPECT_NEAR(m["score"].get<double>(), 2.0 / 6.0, 1e-12);  // (W - L) / 2N
  EXPECT_EQ(r.rows[0].samples.size(), 6u);
  EXPECT_EQ(r.rows[0].samples[3]["order"], "BA");
  EXPECT_EQ(r.rows[0].samples[3]["verdict"], 2);  // B first, A (GOOD) second

  // B against A mirrors the score.
  EXPECT_NEAR(sl::eval_compare(b, a, {{1, 1}}, good_judge, 0).rows[0].metrics["score"].get<double>(), -2.0 / 6.0, 1e-12);

  // A judge that always prefers the first response: each order cancels the other.
  auto first = [](const std::vector<std::string>& p) { return std::vector<std::string>(p.size(), "1"); };
  const sl::TaskResult biased = sl::eval_compare(a, b, {{1, 1}}, first, 0);
  const auto& f = biased.rows[0].metrics;
  EXPECT_EQ(f["wins"].get<int64_t>(), 3);
  EXPECT_EQ(f["losses"].get<int64_t>(), 3);
  EXPECT_EQ(f["score"].get<double>(), 0.0);

  // Every exit pair: the score matrix, A's exits as rows; --limit keeps the first ids.
  sl::TaskResult mx = sl::eval_compare(a, b, {{1, 1}, {1, 2}, {2, 1}, {2, 2}}, good_judge, 1);
  ASSERT_TRUE(mx.extra.contains("matrix"));
  EXPECT_EQ(mx.extra["matrix"]["score"], sl::ojson::parse("[[1.0, 1.0], [1.0, 1.0]]"));
  expect_error([&] { sl::eval_compare(a, b, {{3, 1}}, good_judge, 0); }, "system A has no samples for exit 3");
}

TEST(EvalCompare, SampleSetsFromInstructOutput) {
  std::string d = sl_test::temp_dir("eval-samples");
  sl_test::write_file(d + "/samples_exit3.jsonl",
                      "{\"id\": \"u1\", \"instruction\": \"i\", \"input\": \"\", \"output\": \"o\", \"exit\": 3}\n"
                      "{\"id\": 7, \"instruction\": \"j\", \"output\": \"p\"}\n");
  sl::SampleSet s = sl::load_sample_set(d);
  ASSERT_EQ(s.size(), 1u);
  EXPECT_EQ(s.at(3).at("7").output, "p");
  sl_test::write_file(d + "/samples_exit4.jsonl", "{\"id\": \"u1\", \"instruction\": \"i\"}\n");
  expect_error([&] { sl::load_sample_set(d); }, "samples_exit4.jsonl:1: missing field \"output\"");
}

// ---- generation, analysis (the stories260K model) ----

TEST(EvalGenerate, BatchedEqualsUnbatchedAndPlainGenerate) {
  std::string dir = sl_test::stories_model_dir();
  sl::Llama m = sl::load_model(dir);
  sl::Tokenizer tok(dir + "/tokenizer.model");
  std::vector<std::vector<int>> prompts = {tok.encode("Tom had a red ball", true), tok.encode("The sun", true),
                                           tok.encode("One day, a little bird flew over the big tree and", true),
                                           tok.encode("Lily", true)};
  sl::EvalGenOptions o;
  o.max_new_tokens = 24;
  o.batch_size = 3;  // a full and a partial batch
  o.stop = [&](const std::vector<int>& t) { return tok.decode(t).find('!') != std::string::npos; };
  auto batched = sl::eval_generate(m, prompts, {1, 3, 5}, o);
  o.batch_size = 1;
  auto single = sl::eval_generate(m, prompts, {1, 3, 5}, o);
  ASSERT_EQ(batched.size(), 3u);
  int64_t tokens = 0;
  for (size_t e = 0; e < batched.size(); ++e)
    for (size_t i = 0; i < prompts.size(); ++i) {
      EXPECT_EQ(batched[e].gens[i].tokens, single[e].gens[i].tokens) << "exit " << batched[e].exit << " prompt " << i;
      EXPECT_EQ(batched[e].gens[i].finish_reason, single[e].gens[i].finish_reason);
      sl::DecodeOptions g;
      g.exit_layer = batched[e].exit;
      g.max_new_tokens = 24;
      g.on_token = [&](size_t, const std::vector<int>& t) { return o.stop(t); };
      EXPECT_EQ(batched[e].gens[i].tokens, sl::generate(m, {prompts[i]}, g)[0].tokens) << "exit " << batched[e].exit;
      tokens += (int64_t)batched[e].gens[i].tokens.size();
    }
  EXPECT_GT(tokens, 100);
  o.decode = sl::DecodeMode::kFull;
  auto full = sl::eval_generate(m, prompts, {1, 3}, o);
  ASSERT_EQ(full.size(), 1u);
  EXPECT_EQ(full[0].exit, 5);
  EXPECT_EQ(full[0].gens[2].tokens, batched[2].gens[2].tokens);
  // The speculative and dynamic decoders reproduce the full model's greedy output; the full model is their baseline row.
  o.decode = sl::DecodeMode::kSpeculative;
  auto spec = sl::eval_generate(m, prompts, {1, 3}, o);
  ASSERT_EQ(spec.size(), 3u);
  EXPECT_EQ(spec[0].name, "5");
  EXPECT_EQ(spec[1].name, "spec1");
  for (const auto& r : spec) {
    EXPECT_EQ(r.versus_full.value().agree_full, 1.0) << r.name;
    for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(r.gens[i].tokens, full[0].gens[i].tokens) << r.name;
  }
  EXPECT_GT(spec[2].stats.acceptance_rate(), 0.0);
  o.decode = sl::DecodeMode::kDynamic;
  o.dynamic.thresholds = sl::parse_thresholds("1:1.5,3:1.5", 5);  // never sure enough to leave early
  auto dyn = sl::eval_generate(m, prompts, {}, o);
  ASSERT_EQ(dyn.size(), 2u);
  EXPECT_EQ(dyn[1].name, "dynamic");
  EXPECT_EQ(dyn[1].versus_full.value().agree_full, 1.0);
  EXPECT_GT(dyn[1].stats.mean_layers_per_token(), 4.0);
  expect_error([&] { sl::parse_decode_mode("nope"); }, "--decode nope: unknown mode");
}

TEST(EvalAnalysis, LastExitAgainstItselfIsZeroKlAndUnitCosine) {
  std::string dir = sl_test::stories_model_dir();
  sl::Llama m = sl::load_model(dir);
  sl::Tokenizer tok(dir + "/tokenizer.model");
  std::vector<sl::Instruction> items = {{"0", "Tell a story about a cat.", "", ""}, {"1", "Say hi.", "to Tom", ""}};
  sl::TaskResult r = sl::eval_analysis(m, tok, items, {1, 5}, 6, 2, &m);
  ASSERT_EQ(r.rows.size(), 2u);
  const auto& first = r.rows[0].metrics;
  const auto& last = r.rows[1].metrics;
  EXPECT_NEAR(last["kl"].get<double>(), 0.0, 1e-6);
  EXPECT_NEAR(last["kl_reference"].get<double>(), 0.0, 1e-6);
  EXPECT_NEAR(last["cosine"].get<double>(), 1.0, 1e-5);
  EXPECT_GT(last["positions_scored"].get<int64_t>(), 2);  // up to 2 x 6; fewer when EOS comes early
  EXPECT_LE(last["positions_scored"].get<int64_t>(), 12);
  EXPECT_GT(first["kl"].get<double>(), 0.1);
  EXPECT_LT(first["cosine"].get<double>(), 0.99);
  EXPECT_EQ(first["kl_by_position"].size(), 6u);
  for (const auto& v : last["cosine_by_position"]) EXPECT_NEAR(v.get<double>(), 1.0, 1e-5);
}

// ---- instruction sets, results, plots ----

TEST(EvalInstruct, LoadsEveryInstructionSetFormat) {
  auto vicuna = sl::load_instructions(shared("data/instruct_eval/vicuna_question.jsonl"));
  EXPECT_EQ(vicuna.size(), 80u);
  EXPECT_EQ(vicuna[0].id, "1");
  EXPECT_EQ(vicuna[0].instruction, "How can I improve my time management skills?");
  auto koala = sl::load_instructions(shared("data/instruct_eval/koala_test_set.jsonl"));
  EXPECT_EQ(koala.size(), 180u);
  EXPECT_EQ(koala[0].id, "koala_0");
  auto self = sl::load_instructions(shared("data/instruct_eval/user_oriented_instructions.jsonl"));
  EXPECT_EQ(self.size(), 252u);
  EXPECT_FALSE(self[0].input.empty());
  EXPECT_FALSE(self[0].reference.empty());
  auto panda = sl::load_instructions(shared("data/pandalm/testset-inference-v1.json"));
  EXPECT_EQ(panda.size(), 170u);
  EXPECT_EQ(panda[0].id, "0");
  EXPECT_EQ(panda[0].input.substr(0, 5), "Rose:");
  std::string d = sl_test::temp_dir("eval-instr");
  sl_test::write_file(d + "/bad.jsonl", "{\"instruction\": \"ok\"}\n{\"instruction\": [1]}\n");
  expect_error([&] { sl::load_instructions(d + "/bad.jsonl"); }, "bad.jsonl:2: field \"instruction\" is array");
  sl_test::write_file(d + "/none.jsonl", "{\"question\": \"q\"}\n");
  expect_error([&] { sl::load_instructions(d + "/none.jsonl"); }, "none.jsonl:1: missing field \"instruction\"");
}

TEST(EvalResults, JsonTableAndFiles) {
  sl::TaskResult r("triviaqa", 10, 2);
  r.rows.emplace_back("3", 3, sl::ojson{{"exact_match", 0.5}, {"n", 2}});
  r.rows.back().samples_file = "samples_exit3.jsonl";
  r.rows.back().samples = {sl::ojson{{"question_id", "a"}}};
  r.rows.emplace_back("5", 5, sl::ojson{{"exact_match", 1.0}, {"n", 2}});
  sl::RunInfo run{"/m", {{"task", "triviaqa"}}, 1.5};
  sl::ojson j = sl::results_json(r, run);
  EXPECT_EQ(j["results"]["triviaqa"]["exact_match"], 1.0);
  EXPECT_EQ(j["results"]["triviaqa"]["exit"], "5");
  EXPECT_EQ(j["exits"]["3"]["exact_match"], 0.5);
  EXPECT_EQ(j["n-samples"]["triviaqa"]["original"], 10);
  EXPECT_EQ(j["samples"].size(), 1u);
  EXPECT_EQ(sl::results_table(r, false), "  exit  exact_match  n\n     3       0.5000  2\n     5       1.0000  2\n");
  EXPECT_EQ(sl::results_table(r, true).rfind("| exit | exact_match | n |\n", 0), 0u);
  std::string d = sl_test::temp_dir("eval-results") + "/out";
  EXPECT_EQ(sl::write_results(d, r, run), d);
  EXPECT_EQ(sl_test::read_file(d + "/samples_exit3.jsonl"), "{\"question_id\":\"a\"}\n");
  EXPECT_EQ(sl::ojson::parse(sl_test::read_file(d + "/results.json"))["model"], "/m");
  EXPECT_NE(sl_test::read_file(d + "/results.md").find("| 3 | 0.5000 | 2 |"), std::string::npos);
}

TEST(EvalPlot, SvgHasOneLinePerRunAndEscapesNames) {
  std::string svg = sl::svg_line_chart("triviaqa: f1", "exit layer", "f1",
                                       {{"SoFT <ours>", {1, 2, 3}, {0.1, 0.2, 0.4}}, {"SFT", {1, 2, 3}, {0.0, 0.05, 0.3}}});
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  size_t lines = 0;
  for (size_t p = svg.find("<polyline"); p != std::string::npos; p = svg.find("<polyline", p + 1)) ++lines;
  EXPECT_EQ(lines, 2u);
  EXPECT_NE(svg.find("SoFT &lt;ours&gt;"), std::string::npos);
  EXPECT_EQ(svg.find("nan"), std::string::npos);
  EXPECT_NO_THROW(sl::svg_line_chart("empty", "x", "y", {}));
}

}  // namespace
