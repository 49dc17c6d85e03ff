// Text metrics: TriviaQA answer scoring (lm-eval and official), token F1, ROUGE-L, and the PandaLM
// pairwise judge (prompt, verdict, score). Standard library only; see /work/shared/FORMATS.md.
//
// Strings are UTF-8. "Whitespace" is Python's str.isspace set (ASCII \t\n\v\f\r, \x1c-\x1f and
// space, plus U+0085, U+00A0, U+1680, U+2000-U+200A, U+2028, U+2029, U+202F, U+205F, U+3000),
// because every reference implementation strips and splits with Python's str methods.
// Lowercasing is Python's str.lower over all of Unicode (a table generated from Python's Unicode
// database by scripts/gen_unicode_lower.py; U+0130 'İ' becomes "i" + U+0307, final sigma 'ς').
// Valid multi-byte sequences are never split; invalid bytes pass through unchanged.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace sl {

// ---- TriviaQA (lm-evaluation-harness task `triviaqa`, version 3) ----

// The scored prediction: the continuation up to the first "\n", "." or ",", whitespace-stripped.
std::string triviaqa_cut(const std::string& continuation);
// True once `continuation` holds a stop string ("\n", "." or ","), so generation can end early.
bool triviaqa_should_stop(const std::string& continuation);

// lm-eval exact_match with ignore_case and ignore_punctuation: lowercase, then delete every ASCII
// punctuation character (Python's string.punctuation). No article removal; whitespace kept as is.
std::string normalize_lm_eval(const std::string& s);

// Official TriviaQA normalize_answer (triviaqa evaluation/triviaqa_evaluation.py, same as
// utils/dataset_utils.py), applied in its order:
//   1. '_' -> ' '
//   2. lowercase
//   3. every ASCII punctuation character and U+2018 ‘, U+2019 ’, U+00B4 ´ (and `) -> ' '
//      (replaced by a space, not deleted as SQuAD does: "o'neil" -> "o neil")
//   4. whole words "a", "an", "the" -> ' ' (Python regex \b(a|an|the)\b: a word is a maximal run
//      of word characters; ASCII letters, digits and '_' are word characters, and so is every
//      non-ASCII character except whitespace, Latin-1 punctuation/symbols (U+0080-U+00BF other
//      than ª ² ³ µ ¹ º ¼ ½ ¾, plus × ÷), combining marks U+0300-U+036F, General Punctuation
//      U+2000-U+206F and currency symbols U+20A0-U+20CF — an approximation of Python's
//      str.isalnum)
//   5. collapse whitespace runs to one space and strip the ends.
std::string normalize_official(const std::string& s);

struct QAScore {
  bool exact_match;                 // lm-eval: normalize_lm_eval equality with some alias
  bool exact_match_case_sensitive;  // whitespace-stripped prediction == whitespace-stripped alias
  bool exact_match_official;        // normalize_official equality with some alias
  double f1;                        // max over aliases of token_f1(prediction, alias)
};
// `prediction` is already cut (triviaqa_cut). A prediction is right when it matches ANY alias;
// with no aliases everything is false / 0.
QAScore score_triviaqa(const std::string& prediction, const std::vector<std::string>& aliases);

// ---- Overlap metrics ----

// SQuAD-style token F1 over the space-separated tokens of normalize_official: multiset overlap,
// P = common/|candidate|, R = common/|reference|, F = 2PR/(P+R). An empty side or no overlap -> 0
// (both empty too, as in the official SQuAD/TriviaQA script).
double token_f1(const std::string& candidate, const std::string& reference);

// ROUGE-L F-measure as rouge-score computes it (no stemming): tokens are the maximal runs of
// [a-z0-9] in the lowercased text; P = LCS/|candidate|, R = LCS/|reference|, F = 2PR/(P+R).
// Either side without tokens -> 0.
double rouge_l(const std::string& candidate, const std::string& reference);

// ---- PandaLM pairwise judge ----

// The PandaLM-7B prompt, byte-exact; the Input section appears only when `input` is non-empty.
// Pass responses through strip_special_tokens first (PandaLM does so before formatting).
std::string pandalm_prompt(const std::string& instruction, const std::string& input,
                           const std::string& response1, const std::string& response2);

// PandaLM's filter_special_token: strip whitespace, delete every occurrence of its special-token
// strings ("<unk>", "<pad>", "<s>", "</s>", and the other-model ones "[PAD]", "<|endoftext|>",
// "[UNK]", "[CLS]", "[MASK]", "<|startofpiece|>", "<|endofpiece|>", "[gMASK]", "[sMASK]") in one
// left-to-right pass, strip whitespace again.
std::string strip_special_tokens(const std::string& s);

// Verdict from the judge's continuation, as PandaLM parses it: strip special tokens and
// whitespace from the whole text, then its first line is "1" -> 1, "2" -> 2, anything else
// (including "Tie", "" or "1 " followed by more lines) -> 0 (tie).
int pandalm_verdict(const std::string& continuation);

// System A against system B over N instructions, each judged twice: verdict_ab[i] with A as
// response 1 (1 = A wins, 2 = B wins), verdict_ba[i] with B as response 1 (2 = A wins,
// 1 = B wins); 0 is a tie. wins/ties/losses count A's outcomes over all 2N judgements, n = N.
// Each instruction scores the mean of its two outcomes (+1 win, 0 tie, -1 loss), and
//   score = mean over instructions = (wins - losses) / (2N), in [-1, 1]
// which is the paper's (wins - losses) / N with wins and losses counted per instruction after
// averaging the two orders. N = 0 gives score 0. Throws std::invalid_argument when the vectors
// differ in length or hold a verdict other than 0, 1, 2.
struct PairwiseScore {
  int64_t wins = 0, ties = 0, losses = 0, n = 0;
  double score = 0;
};
PairwiseScore pairwise_score(const std::vector<int>& verdict_ab, const std::vector<int>& verdict_ba);

}  // namespace sl
