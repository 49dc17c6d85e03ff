// Hand-worked cases for the TriviaQA, overlap and PandaLM metrics.
#include "sortedllama/eval/metrics.h"

#include <gtest/gtest.h>

#include <stdexcept>

using namespace sl;

// ---- TriviaQA post-processing ----

TEST(TriviaQACut, CutsAtFirstStopAndStrips) {
  EXPECT_EQ(triviaqa_cut(" Paris\nThe capital of France."), "Paris");
  EXPECT_EQ(triviaqa_cut(" George Washington. He was the first"), "George Washington");
  EXPECT_EQ(triviaqa_cut(" Smith, John"), "Smith");
  EXPECT_EQ(triviaqa_cut(" 3.14"), "3");  // lm-eval cuts numbers at the period too
  EXPECT_EQ(triviaqa_cut("\nParis"), "");
  EXPECT_EQ(triviaqa_cut(""), "");
}

TEST(TriviaQACut, StripsPythonWhitespaceAndKeepsUtf8) {
  EXPECT_EQ(triviaqa_cut("   spaced  out \t"), "spaced  out");
  EXPECT_EQ(triviaqa_cut(" S\xC3\xA3o Paulo\xC2\xA0, Brazil"), "S\xC3\xA3o Paulo");  // NBSP stripped
  EXPECT_EQ(triviaqa_cut("\xE2\x80\x83Z\xC3\xBCrich"), "Z\xC3\xBCrich");             // U+2003 em space
}

TEST(TriviaQACut, ShouldStop) {
  EXPECT_FALSE(triviaqa_should_stop(""));
  EXPECT_FALSE(triviaqa_should_stop(" Paris is"));
  EXPECT_TRUE(triviaqa_should_stop(" Paris."));
  EXPECT_TRUE(triviaqa_should_stop(" Paris, France"));
  EXPECT_TRUE(triviaqa_should_stop(" Paris\n"));
}

// ---- Normalisations ----

TEST(NormalizeLmEval, LowercasesAndDeletesAsciiPunctuation) {
  EXPECT_EQ(normalize_lm_eval("The Beatles!"), "the beatles");  // articles stay
  EXPECT_EQ(normalize_lm_eval("  O'Neil  , Jr. "), "  oneil   jr ");  // whitespace untouched
  EXPECT_EQ(normalize_lm_eval("A_B-C/D"), "abcd");
  EXPECT_EQ(normalize_lm_eval("\xE2\x80\x98" "Allo\xE2\x80\x99"), "\xE2\x80\x98" "allo\xE2\x80\x99");  // ‘’ are not ASCII
  EXPECT_EQ(normalize_lm_eval(""), "");
}

TEST(NormalizeLmEval, LowercasesLatin1AndLatinExtendedA) {
  EXPECT_EQ(normalize_lm_eval("ÉCOLE"), "école");
  EXPECT_EQ(normalize_lm_eval("ÀÖØÞ×"), "àöøþ×");  // × (U+00D7) is not a letter
  EXPECT_EQ(normalize_lm_eval("ĀĲĹŁŊŒŹŽŸ"), "āĳĺłŋœźžÿ");
  EXPECT_EQ(normalize_lm_eval("ßıĸŉſ"), "ßıĸŉſ");  // already lowercase
  EXPECT_EQ(normalize_lm_eval("İ"), "i\xCC\x87");  // Python: 'i' + U+0307
  EXPECT_EQ(normalize_lm_eval("ΩЖ"), "ωж");        // every script, as Python's str.lower
}

// Expected values from Python 3.11's str.lower (lm-evaluation-harness lowercases with it).
TEST(NormalizeLmEval, LowercasesLikePythonInEveryScript) {
  EXPECT_EQ(normalize_lm_eval("Pɛsaħ"), "pɛsaħ");
  EXPECT_EQ(normalize_lm_eval("ⒶⒷⒸ"), "ⓐⓑⓒ");  // circled letters
  EXPECT_EQ(normalize_lm_eval("ΟΔΥΣΣΕΥΣ"), "οδυσσευς");  // final sigma at the end of a word
  EXPECT_EQ(normalize_lm_eval("ΣΑΣ Σ"), "σας σ");
  EXPECT_EQ(normalize_lm_eval("ДОМ"), "дом");
  EXPECT_EQ(normalize_lm_eval("Ǆemal"), "ǆemal");
  EXPECT_EQ(normalize_lm_eval("ᾈ"), "ᾀ");
  EXPECT_TRUE(sl::score_triviaqa("pesah", {"Pesah"}).exact_match);
  EXPECT_TRUE(sl::score_triviaqa("pɛsaħ", {"Pɛsaħ"}).exact_match);
}

TEST(NormalizeLmEval, KeepsInvalidBytes) {
  EXPECT_EQ(normalize_lm_eval("A\xFF" "B\xC3"), "a\xFF" "b\xC3");
  EXPECT_EQ(normalize_lm_eval("\xC0\xAF!"), "\xC0\xAF");  // overlong '/' is not punctuation
}

TEST(NormalizeOfficial, ArticlesPunctuationWhitespace) {
  EXPECT_EQ(normalize_official("The Beatles"), "beatles");
  EXPECT_EQ(normalize_official("  A   tale of  two\tcities "), "tale of two cities");
  EXPECT_EQ(normalize_official("an apple a day"), "apple day");
  EXPECT_EQ(normalize_official("Theatre anthem Ann"), "theatre anthem ann");  // not whole words
  EXPECT_EQ(normalize_official("The A-Team"), "team");  // '-' becomes a space, freeing "a"
  EXPECT_EQ(normalize_official("The"), "");
  EXPECT_EQ(normalize_official(""), "");
}

TEST(NormalizeOfficial, PunctuationBecomesSpace) {
  EXPECT_EQ(normalize_official("O'Neil"), "o neil");
  EXPECT_EQ(normalize_official("Rock_and_roll"), "rock and roll");
  EXPECT_EQ(normalize_official("Guns N' Roses!"), "guns n roses");
  EXPECT_EQ(normalize_official("\xE2\x80\x98" "Allo \xE2\x80\x98" "Allo\xE2\x80\x99"), "allo allo");  // ‘ ’
  EXPECT_EQ(normalize_official("Café´s `x`"), "café s x");  // ´ U+00B4 and `
  EXPECT_EQ(normalize_official("“Quoted”"), "“quoted”");     // other unicode punctuation stays
}

TEST(NormalizeOfficial, UnicodeWordBoundaries) {
  EXPECT_EQ(normalize_official("ÉCOLE"), "école");
  EXPECT_EQ(normalize_official("aé the"), "aé");        // é is a word character: "aé" is one word
  EXPECT_EQ(normalize_official("the—end"), "—end");     // em dash is not: "the" is a whole word
  EXPECT_EQ(normalize_official("a\xC2\xA0" "b"), "b");  // NBSP is whitespace
  EXPECT_EQ(normalize_official("İThe"), "i\xCC\x87");   // "i" + U+0307, a mark, then the word "the"
}

// ---- TriviaQA scoring ----

TEST(ScoreTriviaQA, CaseAndAliases) {
  QAScore s = score_triviaqa("Paris", {"paris", "Paris, France"});
  EXPECT_TRUE(s.exact_match);
  EXPECT_FALSE(s.exact_match_case_sensitive);
  EXPECT_TRUE(s.exact_match_official);
  EXPECT_DOUBLE_EQ(s.f1, 1.0);

  s = score_triviaqa("Paris", {"PARIS", " Paris "});  // second alias matches after stripping
  EXPECT_TRUE(s.exact_match);
  EXPECT_TRUE(s.exact_match_case_sensitive);
  EXPECT_TRUE(s.exact_match_official);
}

TEST(ScoreTriviaQA, ArticlesOnlyOfficial) {
  QAScore s = score_triviaqa("the beatles", {"The Beatles"});
  EXPECT_TRUE(s.exact_match);
  EXPECT_FALSE(s.exact_match_case_sensitive);
  EXPECT_TRUE(s.exact_match_official);

  s = score_triviaqa("Beatles", {"The Beatles"});
  EXPECT_FALSE(s.exact_match);  // lm-eval keeps "the"
  EXPECT_FALSE(s.exact_match_case_sensitive);
  EXPECT_TRUE(s.exact_match_official);
  EXPECT_DOUBLE_EQ(s.f1, 1.0);
}

TEST(ScoreTriviaQA, PunctuationDeletedVersusSpaced) {
  QAScore s = score_triviaqa("ONeil", {"O'Neil"});
  EXPECT_TRUE(s.exact_match);            // "oneil" == "oneil"
  EXPECT_FALSE(s.exact_match_official);  // "oneil" != "o neil"
  EXPECT_DOUBLE_EQ(s.f1, 0.0);           // [oneil] vs [o, neil]

  s = score_triviaqa("Guns N Roses", {"Guns N' Roses"});
  EXPECT_TRUE(s.exact_match);
  EXPECT_FALSE(s.exact_match_case_sensitive);
  EXPECT_TRUE(s.exact_match_official);
}

TEST(ScoreTriviaQA, Unicode) {
  QAScore s = score_triviaqa("école", {"École"});
  EXPECT_TRUE(s.exact_match);
  EXPECT_FALSE(s.exact_match_case_sensitive);
  EXPECT_TRUE(s.exact_match_official);
}

TEST(ScoreTriviaQA, F1IsMaxOverAliases) {
  // [john, smith, jr] vs [john, smith]: P=2/3, R=1, F=4/5; vs [smith]: P=1/3, R=1, F=1/2.
  QAScore s = score_triviaqa("John Smith Jr", {"Smith", "John Smith"});
  EXPECT_FALSE(s.exact_match);
  EXPECT_FALSE(s.exact_match_case_sensitive);
  EXPECT_FALSE(s.exact_match_official);
  EXPECT_DOUBLE_EQ(s.f1, 4.0 / 5.0);
}

TEST(ScoreTriviaQA, EmptyPredictionAndNoAliases) {
  QAScore s = score_triviaqa("", {"Paris", "City of Light"});
  EXPECT_FALSE(s.exact_match);
  EXPECT_FALSE(s.exact_match_case_sensitive);
  EXPECT_FALSE(s.exact_match_official);
  EXPECT_DOUBLE_EQ(s.f1, 0.0);

  s = score_triviaqa("Paris", {});
  EXPECT_FALSE(s.exact_match);
  EXPECT_FALSE(s.exact_match_case_sensitive);
  EXPECT_FALSE(s.exact_match_official);
  EXPECT_DOUBLE_EQ(s.f1, 0.0);
}

// ---- Overlap metrics ----

TEST(TokenF1, WorkedExamples) {
  // Articles dropped: [cat, sat, on, mat] vs [cat, on, mat]: P=3/4, R=1, F=6/7.
  EXPECT_DOUBLE_EQ(token_f1("the cat sat on the mat", "the cat on the mat"), 6.0 / 7.0);
  // Multiset overlap: dog x1, cat x1 -> 2 common; P=R=2/3.
  EXPECT_DOUBLE_EQ(token_f1("dog dog cat", "dog cat cat"), 2.0 / 3.0);
  EXPECT_DOUBLE_EQ(token_f1("cat the sat", "The cat, sat!"), 1.0);  // order does not matter
  EXPECT_DOUBLE_EQ(token_f1("x", "y"), 0.0);
}

TEST(TokenF1, Empty) {
  EXPECT_DOUBLE_EQ(token_f1("", ""), 0.0);      // as the official script: no common token
  EXPECT_DOUBLE_EQ(token_f1("The", "!"), 0.0);  // both normalise to nothing
  EXPECT_DOUBLE_EQ(token_f1("", "x"), 0.0);
  EXPECT_DOUBLE_EQ(token_f1("x", ""), 0.0);
}

TEST(RougeL, WorkedExamples) {
  // LCS = the cat on the mat = 5; P=5/6, R=5/5, F=2PR/(P+R)=10/11.
  EXPECT_DOUBLE_EQ(rouge_l("the cat sat on the mat", "the cat on the mat"), 10.0 / 11.0);
  // LCS = 2 (e.g. "cat sat"); P=R=2/3. Token F1 would be 1: ROUGE-L sees order.
  EXPECT_DOUBLE_EQ(rouge_l("cat the sat", "the cat sat"), 2.0 / 3.0);
  // Reversed: LCS = 1; P=R=1/4.
  EXPECT_DOUBLE_EQ(rouge_l("a b c d", "d c b a"), 1.0 / 4.0);
  // Unequal lengths: LCS "b d" = 2; P=2/2, R=2/5, F=2*(2/5)/(7/5)=4/7.
  EXPECT_DOUBLE_EQ(rouge_l("b d", "a b c d e"), 4.0 / 7.0);
}

TEST(RougeL, Tokenizer) {
  EXPECT_DOUBLE_EQ(rouge_l("Hello, World!", "hello world"), 1.0);
  EXPECT_DOUBLE_EQ(rouge_l("A1-b2", "a1 b2"), 1.0);
  // Non-ASCII letters separate tokens: [caf, au, lait] vs [cafe, au, lait], LCS 2, P=R=2/3.
  EXPECT_DOUBLE_EQ(rouge_l("café au lait", "cafe au lait"), 2.0 / 3.0);
}

TEST(RougeL, Empty) {
  EXPECT_DOUBLE_EQ(rouge_l("", ""), 0.0);
  EXPECT_DOUBLE_EQ(rouge_l("x y", ""), 0.0);
  EXPECT_DOUBLE_EQ(rouge_l("!!!", "..."), 0.0);
  EXPECT_DOUBLE_EQ(rouge_l("x", "y"), 0.0);
}

// ---- PandaLM ----

TEST(PandaLMPrompt, WithInput) {
  EXPECT_EQ(pandalm_prompt("Translate.", "Bonjour", "Hello", "Hi there"),
            "Below are two responses for a given task. The task is defined by the Instruction with an "
            "Input that provides further context. Evaluate the responses and generate a reference "
            "answer for the task.\n\n### Instruction:\nTranslate.\n\n### Input:\nBonjour\n\n"
            "### Response 1:\nHello\n\n### Response 2:\nHi there\n\n### Evaluation:\n");
}

TEST(PandaLMPrompt, WithoutInput) {
  EXPECT_EQ(pandalm_prompt("Name a color.", "", "Red", "Blue"),
            "Below are two responses for a given task. The task is defined by the Instruction. "
            "Evaluate the responses and generate a reference answer for the task.\n\n"
            "### Instruction:\nName a color.\n\n"
            "### Response 1:\nRed\n\n### Response 2:\nBlue\n\n### Evaluation:\n");
}

TEST(StripSpecialTokens, RemovesAndTrims) {
  EXPECT_EQ(strip_special_tokens("<s> Hello</s>"), "Hello");
  EXPECT_EQ(strip_special_tokens("a<unk>b<pad>c"), "abc");
  EXPECT_EQ(strip_special_tokens("  <s>x y</s>\n"), "x y");
  EXPECT_EQ(strip_special_tokens("[PAD]ok<|endoftext|>"), "ok");
  EXPECT_EQ(strip_special_tokens("<<s>s>"), "<s>");  // one pass, like re.sub
  EXPECT_EQ(strip_special_tokens("h\xC3\xA9llo</s>"), "h\xC3\xA9llo");
  EXPECT_EQ(strip_special_tokens(""), "");
}

TEST(PandaLMVerdict, Parsing) {
  EXPECT_EQ(pandalm_verdict("1\n\n### Reason: Response 1 is correct."), 1);
  EXPECT_EQ(pandalm_verdict("2"), 2);
  EXPECT_EQ(pandalm_verdict("Tie"), 0);
  EXPECT_EQ(pandalm_verdict("Tie\n\n### Reason: both fine"), 0);
  EXPECT_EQ(pandalm_verdict(" 1 "), 1);
  EXPECT_EQ(pandalm_verdict(""), 0);
  EXPECT_EQ(pandalm_verdict("garbage"), 0);
  EXPECT_EQ(pandalm_verdict("12"), 0);
  EXPECT_EQ(pandalm_verdict("\n2\nreason"), 2);  // whole text stripped before the first line
  EXPECT_EQ(pandalm_verdict("1</s>"), 1);
  EXPECT_EQ(pandalm_verdict("1 \nreason"), 0);   // PandaLM compares the line unstripped
}

TEST(PairwiseScore, TiesAndBothOrders) {
  // ab (A is response 1): 1 = A win, 2 = A loss, 0 = tie.
  // ba (B is response 1): 2 = A win, 2 = A win, 1 = A loss.
  // Per instruction: (1+1)/2 = 1, (-1+1)/2 = 0, (0-1)/2 = -1/2; mean = (1/2)/3 = 1/6
  //                = (wins 3 - losses 2) / (2*3).
  PairwiseScore p = pairwise_score({1, 2, 0}, {2, 2, 1});
  EXPECT_EQ(p.wins, 3);
  EXPECT_EQ(p.losses, 2);
  EXPECT_EQ(p.ties, 1);
  EXPECT_EQ(p.n, 3);
  EXPECT_DOUBLE_EQ(p.score, 1.0 / 6.0);
}

TEST(PairwiseScore, Extremes) {
  PairwiseScore p = pairwise_score({1, 1}, {2, 2});  // A preferred in both orders
  EXPECT_EQ(p.wins, 4);
  EXPECT_DOUBLE_EQ(p.score, 1.0);

  p = pairwise_score({2}, {1});  // B preferred in both orders
  EXPECT_EQ(p.losses, 2);
  EXPECT_DOUBLE_EQ(p.score, -1.0);

  p = pairwise_score({1, 1}, {1, 1});  // judge always picks response 1: position bias cancels
  EXPECT_EQ(p.wins, 2);
  EXPECT_EQ(p.losses, 2);
  EXPECT_EQ(p.ties, 0);
  EXPECT_DOUBLE_EQ(p.score, 0.0);

  p = pairwise_score({0, 0}, {0, 0});
  EXPECT_EQ(p.ties, 4);
  EXPECT_DOUBLE_EQ(p.score, 0.0);

  p = pairwise_score({}, {});
  EXPECT_EQ(p.n, 0);
  EXPECT_DOUBLE_EQ(p.score, 0.0);
}

TEST(PairwiseScore, RejectsBadInput) {
  EXPECT_THROW(pairwise_score({1, 2}, {1}), std::invalid_argument);
  EXPECT_THROW(pairwise_score({3}, {1}), std::invalid_argument);
  EXPECT_THROW(pairwise_score({1}, {-1}), std::invalid_argument);
}
