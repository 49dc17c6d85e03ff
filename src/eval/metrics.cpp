#include "sortedllama/eval/metrics.h"

#include <algorithm>
#include <map>
#include <stdexcept>

namespace sl {
namespace {

// Text is processed as code points. A byte that is not part of a valid UTF-8 sequence becomes
// U+DC80-U+DCFF (Python's surrogateescape) so that encoding gives the same byte back.
std::u32string decode(const std::string& s) {
  std::u32string out;
  for (size_t i = 0; i < s.size();) {
    const unsigned char b = s[i];
    size_t len = b < 0x80 ? 1 : (b >> 5) == 0x6 ? 2 : (b >> 4) == 0xE ? 3 : (b >> 3) == 0x1E ? 4 : 0;
    char32_t cp = len == 1 ? b : len == 2 ? (b & 0x1F) : len == 3 ? (b & 0x0F) : (b & 0x07);
    for (size_t k = 1; k < len; k++) {
      const unsigned char c = i + k < s.size() ? s[i + k] : 0;
      if ((c & 0xC0) != 0x80) { len = 0; break; }
      cp = (cp << 6) | (c & 0x3F);
    }
    // Overlong forms, surrogates and values past U+10FFFF are invalid too.
    const char32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (len == 0 || cp < min_cp[len] || (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) {
      out.push_back(0xDC00 + b);
      i += 1;
    } else {
      out.push_back(cp);
      i += len;
    }
  }
  return out;
}

std::string encode(const std::u32string& u) {
  std::string out;
  for (char32_t c : u) {
    if (c < 0x80) {
      out += char(c);
    } else if (c >= 0xDC80 && c <= 0xDCFF) {
      out += char(c - 0xDC00);  // an escaped invalid byte
    } else if (c < 0x800) {
      out += char(0xC0 | (c >> 6));
      out += char(0x80 | (c & 0x3F));
    } else if (c < 0x10000) {
      out += char(0xE0 | (c >> 12));
      out += char(0x80 | ((c >> 6) & 0x3F));
      out += char(0x80 | (c & 0x3F));
    } else {
      out += char(0xF0 | (c >> 18));
      out += char(0x80 | ((c >> 12) & 0x3F));
      out += char(0x80 | ((c >> 6) & 0x3F));
      out += char(0x80 | (c & 0x3F));
    }
  }
  return out;
}

// Python's str.isspace.
bool is_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
         c == 0x202F || c == 0x205F || c == 0x3000;
}

// Python's string.punctuation: !"#$%&'()*+,-./:;<=>?@[\]^_`{|}~
bool is_ascii_punct(char32_t c) {
  return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) ||
         (c >= 0x7B && c <= 0x7E);
}

struct LowerEntry {
  char32_t code, lower[3];
};
struct CasedRange {
  char32_t first, last;
};
#include "unicode_lower.inc"

bool is_cased(char32_t c) {
  auto it = std::upper_bound(std::begin(kCased), std::end(kCased), c,
                             [](char32_t x, const CasedRange& r) { return x < r.first; });
  return it != std::begin(kCased) && c <= std::prev(it)->last;
}

// Python's str.lower: the full Unicode lowercase mapping (lm-evaluation-harness lowercases with
// it), including the final-sigma rule for U+03A3.
std::u32string lower(const std::u32string& u) {
  std::u32string out;
  for (size_t i = 0; i < u.size(); ++i) {
    const char32_t c = u[i];
    if (c == 0x3A3) {  // final when a cased letter precedes it and none follows
      const bool final = i > 0 && is_cased(u[i - 1]) && (i + 1 == u.size() || !is_cased(u[i + 1]));
      out.push_back(final ? 0x3C2 : 0x3C3);
      continue;
    }
    auto it = std::lower_bound(std::begin(kLower), std::end(kLower), c,
                               [](const LowerEntry& e, char32_t x) { return e.code < x; });
    if (it == std::end(kLower) || it->code != c) {
      out.push_back(c);
      continue;
    }
    for (char32_t l : it->lower)
      if (l) out.push_back(l);
  }
  return out;
}

std::u32string strip(const std::u32string& u) {
  size_t b = 0, e = u.size();
  while (b < e && is_space(u[b])) b++;
  while (e > b && is_space(u[e - 1])) e--;
  return u.substr(b, e - b);
}

std::string strip(const std::string& s) { return encode(strip(decode(s))); }

// Python's str.split(): runs of non-whitespace.
std::vector<std::u32string> split_ws(const std::u32string& u) {
  std::vector<std::u32string> words;
  std::u32string cur;
  for (char32_t c : u) {
    if (!is_space(c)) {
      cur.push_back(c);
    } else if (!cur.empty()) {
      words.push_back(cur);
      cur.clear();
    }
  }
  if (!cur.empty()) words.push_back(cur);
  return words;
}

// A character of Python's regex \w (approximated outside ASCII, see metrics.h).
bool is_word(char32_t c) {
  if (c < 0x80)
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
  if (is_space(c)) return false;
  if (c <= 0xBF) {
    return c == 0xAA || c == 0xB2 || c == 0xB3 || c == 0xB5 || c == 0xB9 || c == 0xBA ||
           (c >= 0xBC && c <= 0xBE);
  }
  return c != 0xD7 && c != 0xF7 && !(c >= 0x300 && c <= 0x36F) &&
         !(c >= 0x2000 && c <= 0x206F) && !(c >= 0x20A0 && c <= 0x20CF);
}

// Token multiset overlap F1 (SQuAD), with both-empty counting as a match.
double overlap_f1(const std::vector<std::u32string>& cand, const std::vector<std::u32string>& ref) {
  if (cand.empty() || ref.empty()) return 0.0;  // as the official script: no common token, F1 0
  std::map<std::u32string, int64_t> left;
  for (const auto& t : ref) left[t]++;
  int64_t common = 0;
  for (const auto& t : cand) {
    auto it = left.find(t);
    if (it != left.end() && it->second > 0) {
      it->second--;
      common++;
    }
  }
  if (common == 0) return 0.0;
  const double p = double(common) / double(cand.size()), r = double(common) / double(ref.size());
  return 2 * p * r / (p + r);
}

// rouge-score's default tokenizer without stemming.
std::vector<std::u32string> rouge_tokens(const std::string& s) {
  std::vector<std::u32string> tokens;
  std::u32string cur;
  for (char32_t c : lower(decode(s))) {
    if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) {
      cur.push_back(c);
    } else if (!cur.empty()) {
      tokens.push_back(cur);
      cur.clear();
    }
  }
  if (!cur.empty()) tokens.push_back(cur);
  return tokens;
}

size_t lcs_length(const std::vector<std::u32string>& a, const std::vector<std::u32string>& b) {
  std::vector<size_t> prev(b.size() + 1, 0), cur(b.size() + 1, 0);
  for (size_t i = 1; i <= a.size(); i++) {
    for (size_t j = 1; j <= b.size(); j++)
      cur[j] = a[i - 1] == b[j - 1] ? prev[j - 1] + 1 : std::max(prev[j], cur[j - 1]);
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

}  // namespace

std::string triviaqa_cut(const std::string& continuation) {
  return strip(continuation.substr(0, continuation.find_first_of("\n.,")));
}

bool triviaqa_should_stop(const std::string& continuation) {
  return continuation.find_first_of("\n.,") != std::string::npos;
}

std::string normalize_lm_eval(const std::string& s) {
  std::u32string out;
  for (char32_t c : lower(decode(s)))
    if (!is_ascii_punct(c)) out.push_back(c);
  return encode(out);
}

std::string normalize_official(const std::string& s) {
  std::u32string u = decode(s);
  std::replace(u.begin(), u.end(), U'_', U' ');
  u = lower(u);
  for (char32_t& c : u)
    if (is_ascii_punct(c) || c == 0x2018 || c == 0x2019 || c == 0xB4) c = U' ';
  // Articles go only as whole words, so walk maximal runs of word characters.
  std::u32string no_articles;
  for (size_t i = 0; i < u.size();) {
    size_t j = i;
    while (j < u.size() && is_word(u[j])) j++;
    if (j == i) {
      no_articles.push_back(u[i++]);
      continue;
    }
    const std::u32string word = u.substr(i, j - i);
    no_articles += word == U"a" || word == U"an" || word == U"the" ? U" " : word;
    i = j;
  }
  std::u32string out;
  for (const auto& w : split_ws(no_articles)) out += (out.empty() ? U"" : U" ") + w;
  return encode(out);
}

double token_f1(const std::string& candidate, const std::string& reference) {
  return overlap_f1(split_ws(decode(normalize_official(candidate))),
                    split_ws(decode(normalize_official(reference))));
}

double rouge_l(const std::string& candidate, const std::string& reference) {
  const auto cand = rouge_tokens(candidate), ref = rouge_tokens(reference);
  if (cand.empty() || ref.empty()) return 0.0;
  const size_t lcs = lcs_length(cand, ref);
  if (lcs == 0) return 0.0;
  const double p = double(lcs) / double(cand.size()), r = double(lcs) / double(ref.size());
  return 2 * p * r / (p + r);
}

QAScore score_triviaqa(const std::string& prediction, const std::vector<std::string>& aliases) {
  QAScore s{false, false, false, 0.0};
  const std::string lm = normalize_lm_eval(prediction), off = normalize_official(prediction);
  const std::string stripped = strip(prediction);
  for (const auto& a : aliases) {
    s.exact_match |= lm == normalize_lm_eval(a);
    s.exact_match_case_sensitive |= stripped == strip(a);
    s.exact_match_official |= off == normalize_official(a);
    s.f1 = std::max(s.f1, token_f1(prediction, a));
  }
  return s;
}

std::string pandalm_prompt(const std::string& instruction, const std::string& input,
                           const std::string& response1, const std::string& response2) {
  std::string p = "Below are two responses for a given task. The task is defined by the Instruction";
  p += input.empty() ? "." : " with an Input that provides further context.";
  p += " Evaluate the responses and generate a reference answer for the task.\n\n### Instruction:\n";
  p += instruction;
  if (!input.empty()) p += "\n\n### Input:\n" + input;
  p += "\n\n### Response 1:\n" + response1 + "\n\n### Response 2:\n" + response2;
  p += "\n\n### Evaluation:\n";
  return p;
}

std::string strip_special_tokens(const std::string& s) {
  static const char* const kSpecial[] = {"<unk>", "<pad>", "<s>", "</s>", "[PAD]", "<|endoftext|>",
                                         "[UNK]", "[CLS]", "[MASK]", "<|startofpiece|>",
                                         "<|endofpiece|>", "[gMASK]", "[sMASK]"};
  const std::string t = strip(s);
  std::string out;
  for (size_t i = 0; i < t.size();) {
    size_t skip = 0;
    for (const char* tok : kSpecial) {
      const std::string k = tok;
      if (t.compare(i, k.size(), k) == 0) {
        skip = k.size();
        break;
      }
    }
    if (skip) i += skip;
    else out += t[i++];
  }
  return strip(out);
}

int pandalm_verdict(const std::string& continuation) {
  const std::string t = strip_special_tokens(continuation);
  const std::string first = t.substr(0, t.find('\n'));
  return first == "1" ? 1 : first == "2" ? 2 : 0;
}

PairwiseScore pairwise_score(const std::vector<int>& verdict_ab, const std::vector<int>& verdict_ba) {
  if (verdict_ab.size() != verdict_ba.size())
    throw std::invalid_argument("pairwise_score: verdict_ab and verdict_ba differ in length");
  PairwiseScore r;
  r.n = int64_t(verdict_ab.size());
  // A's outcome is the verdict naming A's position: 1 when A is response 1, 2 when it is response 2.
  auto count = [&r](int verdict, int a_position) {
    if (verdict < 0 || verdict > 2)
      throw std::invalid_argument("pairwise_score: verdict must be 0, 1 or 2");
    if (verdict == 0) r.ties++;
    else if (verdict == a_position) r.wins++;
    else r.losses++;
  };
  for (size_t i = 0; i < verdict_ab.size(); i++) {
    count(verdict_ab[i], 1);
    count(verdict_ba[i], 2);
  }
  if (r.n > 0) r.score = double(r.wins - r.losses) / double(2 * r.n);
  return r;
}

}  // namespace sl
