// Self-speculative decoding: greedy output equals plain greedy decoding token for token (every draft
// layer, draft length, batch size, EOS / max-new-tokens inside a round, rejected-slot holes and cache
// compaction, the crop at 0 and all accepted); sampling follows the verifier's distribution.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <map>

#include "sortedllama/io/checkpoint.h"
#include "sortedllama/decode/generate.h"
#include "sortedllama/io/tokenizer.h"
#include "test_util.h"

namespace {
std::vector<std::vector<int>> story_prompts(const sl::Tokenizer& tok) {
  std::vector<std::vector<int>> p;
  for (const char* s : {"", "Once upon a time, a cat", "Tom had a red ball", "The sun",
                        "One day, a little bird flew over the big tree and", "Lily and Ben went to the park. They saw",
                        "The dog was sad because"})
    p.push_back(tok.encode(s, true));
  return p;
}

sl::DecodeOptions plain(int64_t max_new, int exit = 0, int64_t eos = 2) {
  sl::DecodeOptions o;
  o.max_new_tokens = max_new;
  o.exit_layer = exit;
  o.eos_id = eos;
  return o;
}

sl::DecodeOptions spec(int64_t max_new, int draft_layer, int draft_tokens, int64_t eos = 2) {
  sl::DecodeOptions o;
  o.strategy = sl::Strategy::kSpeculative;
  o.max_new_tokens = max_new;
  o.speculative.draft_layer = draft_layer;
  o.speculative.draft_tokens = draft_tokens;
  o.eos_id = eos;
  return o;
}

void expect_same(const std::vector<sl::Generation>& got, const std::vector<sl::Generation>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].tokens, want[i].tokens) << what << ", prompt " << i;
    EXPECT_EQ(got[i].finish_reason, want[i].finish_reason) << what << ", prompt " << i;
  }
}
}  // namespace

// Draft layers 1, 3 (middle) and 4 (L-1); 1, 3, 12 draft tokens and adaptive; batched and alone;
// a model whose drafts are nearly always rejected and one whose drafts are mostly accepted.
// EOS inside a round: "." (id 426) serves as EOS with 9 new tokens, so stories end mid-sentence
// ("eos") or at the limit ("length"), both usually in the middle of a round.
TEST(SpeculativeGreedy, EqualsFullGreedyForEveryDraftLayerLengthAndBatch) {
  std::string dir = sl_test::stories_model_dir();
  sl::Tokenizer tok(dir + "/tokenizer.model");
  auto prompts = story_prompts(tok);
  const int64_t dot = tok.encode("a tree.", false).back();
  ASSERT_EQ(tok.decode({(int)dot}), ".");
  std::map<std::string, int> finish;  // over both models
  for (bool damped : {false, true}) {
    sl::Llama m = damped ? sl_test::damped_stories_model(dir) : sl::load_model(dir);
    double best_rate = 0;
    for (auto [max_new, eos] : {std::pair<int64_t, int64_t>{9, dot}, {60, 2}}) {
      std::vector<sl::Generation> want;  // unbatched plain decoding
      for (const auto& p : prompts) want.push_back(sl::generate(m, {p}, plain(max_new, 0, eos))[0]);
      for (const auto& g : want) ++finish[g.finish_reason];
      for (int k : {1, 3, 4}) {
        for (int n : {1, 3, 12, 0}) {
          if (!damped && max_new == 60 && n == 12) continue;  // 13 draft steps per token: slow, nothing new
          const std::string what = std::string(damped ? "damped" : "stories") + ", max_new " + std::to_string(max_new) +
                                   ", draft layer " + std::to_string(k) + ", draft tokens " + std::to_string(n);
          sl::DecodeStats st;
          expect_same(sl::generate(m, prompts, spec(max_new, k, n, eos), &st), want, what + ", batched");
          EXPECT_GT(st.rounds, 0);
          EXPECT_LE(st.accepted, st.drafted);
          best_rate = std::max(best_rate, st.acceptance_rate());
          if (k == 3 || n == 0) {  // batch size 1 too
            for (size_t i = 0; i < prompts.size(); i += 3)
              expect_same(sl::generate(m, {prompts[i]}, spec(max_new, k, n, eos)), {want[i]}, what + ", alone");
          }
        }
      }
    }
    if (damped) {
      EXPECT_GT(best_rate, 0.5) << "the damped model should accept most drafts";
    }
  }
  EXPECT_GT(finish["eos"], 0) << "no generation exercises EOS";
  EXPECT_GT(finish["length"], 0) << "no generation exercises the length limit";
}

TEST(SpeculativeGreedy, RejectedSlotsBecomeHolesAndTheCacheIsCompacted) {
  std::string dir = sl_test::stories_model_dir();
  sl::Llama m = sl_test::damped_stories_model(dir);
  sl::Tokenizer tok(dir + "/tokenizer.model");
  auto prompts = story_prompts(tok);
  auto want = sl::generate(m, prompts, plain(100));
  // Rows accept different counts (holes); with long drafts the holes fill the cache.
  sl::DecodeStats st;
  expect_same(sl::generate(m, prompts, spec(100, 2, 8), &st), want, "draft layer 2, 8 tokens");
  EXPECT_GT(st.compactions, 0) << "the test no longer exercises cache compaction";
  EXPECT_GT(st.accepted, 0);
  EXPECT_LT(st.accepted, st.drafted);
}

// The statistics add up: the per-position histogram sums to drafted / accepted and is a prefix
// count (position j+1 accepted only after j), the draft and verify times fit in the decoding time,
// and the JSON carries the speculative keys.
TEST(SpeculativeStats, HistogramAndTimeSplitAddUp) {
  std::string dir = sl_test::stories_model_dir();
  sl::Llama m = sl_test::damped_stories_model(dir);
  sl::Tokenizer tok(dir + "/tokenizer.model");
  auto prompts = story_prompts(tok);
  for (int n : {3, 0}) {
    sl::DecodeStats st;
    expect_same(sl::generate(m, prompts, spec(60, 2, n), &st), sl::generate(m, prompts, plain(60)), "stats run");
    const std::string what = "draft tokens " + std::to_string(n);
    EXPECT_EQ(st.strategy, sl::Strategy::kSpeculative);
    ASSERT_EQ(st.proposed_at.size(), st.accepted_at.size());
    if (n > 0) {
      EXPECT_EQ(st.proposed_at.size(), (size_t)n) << what;
    } else {
      EXPECT_GT(st.proposed_at.size(), 4u) << what << ": the adaptive length never grew";
    }
    int64_t proposed = 0, accepted = 0;
    for (size_t j = 0; j < st.proposed_at.size(); ++j) {
      proposed += st.proposed_at[j];
      accepted += st.accepted_at[j];
      EXPECT_LE(st.accepted_at[j], st.proposed_at[j]) << what << ", position " << j;
      if (j > 0) {
        EXPECT_LE(st.proposed_at[j], st.proposed_at[j - 1]) << what << ", position " << j;
        EXPECT_LE(st.accepted_at[j], st.accepted_at[j - 1]) << what << ", position " << j;
      }
    }
    EXPECT_EQ(proposed, st.drafted) << what;
    EXPECT_EQ(accepted, st.accepted) << what;
    EXPECT_LE(st.proposed_at[0], st.rounds) << what << ": a round drafts at position 0 at most once per row";
    EXPECT_GT(st.draft_ms, 0) << what;
    EXPECT_GT(st.verify_ms, 0) << what;
    EXPECT_LE(st.draft_ms + st.verify_ms, st.decode_ms) << what;
    const nlohmann::json j = st.to_json();
    EXPECT_EQ(j["mode"], "speculative");
    EXPECT_EQ(j["drafted"], st.drafted);
    EXPECT_EQ(j["accepted_at"].size(), st.accepted_at.size());
    EXPECT_DOUBLE_EQ(j["mean_tokens_per_round"].get<double>(), st.mean_accepted_per_round() + 1);
  }
}

// Drafting stops once every row has drafted EOS: with EOS set to the token the full model emits
// second, which the draft also proposes first, the first round drafts 1 token (not 12) and ends.
TEST(SpeculativeGreedy, DraftingStopsAtEos) {
  std::string dir = sl_test::stories_model_dir();
  sl::Llama m = sl::load_model(dir);
  sl::Tokenizer tok(dir + "/tokenizer.model");
  int found = 0;
  for (const auto& p : story_prompts(tok)) {
    const auto full = sl::generate(m, {p}, plain(2, 0, -1))[0].tokens;  // EOS -1: never stops
    std::vector<int> q = p;
    q.push_back(full[0]);
    if (sl::generate(m, {q}, plain(1, 4, -1))[0].tokens[0] != full[1]) continue;
    ++found;
    sl::DecodeStats st;
    expect_same(sl::generate(m, {p}, spec(60, 4, 12, full[1]), &st), sl::generate(m, {p}, plain(60, 0, full[1])),
                "EOS drafted first");
    EXPECT_EQ(st.rounds, 1);
    EXPECT_EQ(st.drafted, 1) << "drafting went on past EOS";
  }
  EXPECT_GT(found, 0) << "no prompt where the draft's first token is the full model's second";
}

TEST(SpeculativeGreedy, VerifierCanBeASubModel) {
  std::string dir = sl_test::stories_model_dir();
  sl::Llama m = sl::load_model(dir);
  sl::Tokenizer tok(dir + "/tokenizer.model");
  auto prompts = story_prompts(tok);
  auto o = spec(50, 2, 4);
  o.exit_layer = 4;
  expect_same(sl::generate(m, prompts, o), sl::generate(m, prompts, plain(50, 4)), "verifier 4, draft 2");
  o.speculative.draft_layer = 4;
  EXPECT_THROW(sl::generate(m, prompts, o), std::invalid_argument);  // the draft must be shallower
}

TEST(SpeculativeGreedy, StopCallbackEndsARowInsideARound) {
  std::string dir = sl_test::stories_model_dir();
  sl::Llama m = sl::load_model(dir);
  sl::Tokenizer tok(dir + "/tokenizer.model");
  auto prompts = story_prompts(tok);
  auto want = sl::generate(m, prompts, plain(40));
  auto o = spec(40, 3, 8);
  std::vector<std::vector<int>> seen(prompts.size());
  o.on_token = [&](size_t row, const std::vector<int>& toks) {
    seen[row] = toks;
    return row == 2 && toks.size() == 5;
  };
  auto got = sl::generate(m, prompts, o);
  EXPECT_EQ(got[2].finish_reason, "stop");
  EXPECT_EQ(got[2].tokens, std::vector<int>(want[2].tokens.begin(), want[2].tokens.begin() + 5));
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(seen[i], got[i].tokens) << "on_token saw every emitted token, in order";
    if (i != 2) {
      EXPECT_EQ(got[i].tokens, want[i].tokens);
    }
  }
}

// All drafts accepted: with layers K+1..L made the identity (zero attention and MLP outputs), the
// verifier equals the draft; nothing is ever cropped.
TEST(SpeculativeCrop, AllAccepted) {
  std::string dir = sl_test::stories_model_dir();
  sl::Llama m = sl::load_model(dir);
  sl::Tokenizer tok(dir + "/tokenizer.model");
  {
    torch::NoGradGuard g;
    for (auto& p : m->named_parameters())
      for (int i = 2; i < 5; ++i)
        if (p.key().rfind("model.layers." + std::to_string(i) + ".", 0) == 0 &&
            (p.key().find("o_proj") != std::string::npos || p.key().find("down_proj") != std::string::npos))
          p.value().zero_();
  }
  auto prompts = story_prompts(tok);
  auto want = sl::generate(m, prompts, plain(37));
  sl::DecodeStats st;
  expect_same(sl::generate(m, prompts, spec(37, 2, 5), &st), want, "identity layers 3..5");
  EXPECT_EQ(st.accepted, st.drafted);
  EXPECT_EQ(st.compactions, 0);
  // One batch size-1 run: 1 prefill token, then rounds of 5 drafts + 1 bonus until 37 (or EOS).
  sl::DecodeStats one;
  auto g = sl::generate(m, {prompts[1]}, spec(37, 2, 5), &one);
  EXPECT_EQ(g[0].tokens, want[1].tokens);
  if (g[0].finish_reason == "length") {
    EXPECT_EQ(one.rounds, 6);  // 1 + 6 * 6 = 37
  }
}

// Nothing accepted: the draft's own (ICT) head is the shared head negated, so it proposes its least
// likely token; every round keeps only the pending slot and emits the verifier's token.
TEST(SpeculativeCrop, NoneAccepted) {
  std::string dir = sl_test::stories_model_dir();
  sl::Llama m = sl::load_model(dir);
  sl::Tokenizer tok(dir + "/tokenizer.model");
  m->add_ict_heads({2});
  {
    torch::NoGradGuard g;
    m->head_weight(2).neg_();
  }
  auto prompts = story_prompts(tok);
  auto want = sl::generate(m, prompts, plain(30));
  sl::DecodeStats st;
  expect_same(sl::generate(m, prompts, spec(30, 2, 4), &st), want, "negated draft head");
  EXPECT_EQ(st.accepted, 0);
  EXPECT_GT(st.drafted, 0);
  int64_t tokens = 0;
  for (const auto& g : want) tokens += (int64_t)g.tokens.size() + (g.finish_reason == "eos");
  EXPECT_EQ(st.rounds, tokens - (int64_t)prompts.size());  // one token per round after the prefill's
}

// Speculative sampling must sample from the verifier's distribution. Prompt + 4 sampled tokens
// (top-k 3 each; EOS ends an outcome early): the first comes from the prefill, the next from a round of 2
// drafts (accept/accept/bonus, accept/resample, resample) and later rounds. 3000 independent rows
// in one batch; every outcome's frequency must be within 5 standard errors (+1/M) of its exact
// probability (seeded: deterministic; measured worst 2.3 standard errors, total variation 0.058,
// against 127 standard errors and total variation 0.84 for the draft's distribution). The same bound must reject
// the draft's own distribution by far, so the test can fail.
TEST(SpeculativeSampling, MatchesTheVerifierDistribution) {
  std::string dir = sl_test::stories_model_dir();
  sl::Llama m = sl_test::damped_stories_model(dir);
  sl::Tokenizer tok(dir + "/tokenizer.model");
  const std::vector<int> prompt = tok.encode("Lily and Ben", true);
  const sl::SamplingParams sp{1.5, 1.0, 3};
  const int K = 2, L = 5, M = 3000, n_new = 4;

  // Exact outcome probabilities (the tokens after the prompt; EOS ends an outcome) for the verifier
  // and, for the sensitivity check, for the draft sub-model after the first (prefill) token.
  std::map<std::vector<int>, double> exact, draft;
  std::function<void(const std::vector<int>&, double, double)> expand = [&](const std::vector<int>& seq, double pe, double pd) {
    const std::vector<int> outcome(seq.begin() + (long)prompt.size(), seq.end());
    if ((int)outcome.size() == n_new) {
      exact[outcome] += pe;
      draft[outcome] += pd;
      return;
    }
    torch::NoGradGuard g;
    auto h = m->forward(torch::tensor(std::vector<int64_t>(seq.begin(), seq.end())).unsqueeze(0), {K, L});
    torch::Tensor p = sl::sampling_probs(m->head(h[1].select(1, -1), L), sp)[0];  // [V]
    torch::Tensor q = outcome.empty() ? p : sl::sampling_probs(m->head(h[0].select(1, -1), K), sp)[0];
    torch::Tensor support = (p + q).nonzero().squeeze(1);
    for (int64_t i = 0; i < support.size(0); ++i) {
      const int v = (int)support[i].item<int64_t>();
      const double a = pe * p[v].item<double>(), b = pd * q[v].item<double>();
      if (v == 2) {  // EOS
        exact[outcome] += a;
        draft[outcome] += b;
        continue;
      }
      std::vector<int> next = seq;
      next.push_back(v);
      expand(next, a, b);
    }
  };
  expand(prompt, 1.0, 1.0);

  sl::DecodeOptions o = spec(n_new, K, 2);
  o.sampling = sp;
  o.seed = 1234;
  sl::DecodeStats st;
  auto gens = sl::generate(m, std::vector<std::vector<int>>(M, prompt), o, &st);
  std::map<std::vector<int>, double> freq;
  for (const auto& g : gens) freq[g.tokens] += 1.0 / M;
  EXPECT_GT(st.acceptance_rate(), 0.1);
  EXPECT_LT(st.acceptance_rate(), 0.9);

  auto worst_z = [&](const std::map<std::vector<int>, double>& want) {  // largest |freq - p| in standard errors
    double worst = 0;
    std::map<std::vector<int>, double> all = want;
    for (const auto& kv : freq) all[kv.first] += 0;
    for (const auto& [k, p] : all) {
      const double f = freq.count(k) ? freq.at(k) : 0.0;
      const double pv = std::max(p, 1.0 / M);  // an outcome with p = 0 may still not appear more than ~once
      worst = std::max(worst, (std::abs(f - p) - 1.0 / M) / std::sqrt(pv * (1 - pv) / M));
    }
    return worst;
  };
  double tv = 0, tv_draft = 0;
  for (const auto& [k, p] : exact) {
    tv += 0.5 * std::abs((freq.count(k) ? freq.at(k) : 0.0) - p);
    tv_draft += 0.5 * std::abs(draft.at(k) - p);
  }
  EXPECT_LT(worst_z(exact), 5.0) << "total variation " << tv;
  EXPECT_GT(worst_z(draft), 15.0) << "the draft's distribution is too close for this test to fail";
}

// Confidence-stopped drafting: output stays the full model's greedy output for any threshold and
// batch size; a higher threshold drafts shorter rounds; 0 keeps the adaptive length.
TEST(SpeculativeGreedy, ConfidenceStoppedDraftingEqualsFullGreedy) {
  std::string dir = sl_test::stories_model_dir();
  sl::Tokenizer tok(dir + "/tokenizer.model");
  auto prompts = story_prompts(tok);
  sl::Llama m = sl_test::damped_stories_model(dir);
  std::vector<sl::Generation> want;
  for (const auto& p : prompts) want.push_back(sl::generate(m, {p}, plain(40))[0]);
  std::map<double, double> drafts_per_round;
  for (double c : {0.2, 0.5, 0.8, 0.95, 1.0}) {
    for (size_t batch : {(size_t)1, (size_t)3, prompts.size()}) {
      const std::string what = "draft confidence " + std::to_string(c) + ", batch " + std::to_string(batch);
      auto o = spec(40, 2, 0);
      o.speculative.draft_confidence = c;
      sl::DecodeStats st;
      for (size_t s = 0; s < prompts.size(); s += batch) {
        const std::vector<std::vector<int>> part(prompts.begin() + (std::ptrdiff_t)s,
                                                 prompts.begin() + (std::ptrdiff_t)std::min(prompts.size(), s + batch));
        expect_same(sl::generate(m, part, o, &st), std::vector<sl::Generation>(want.begin() + (std::ptrdiff_t)s,
                                                                               want.begin() + (std::ptrdiff_t)(s + part.size())),
                    what);
      }
      EXPECT_GT(st.rounds, 0) << what;
      EXPECT_LE(st.proposed_at.size(), 16u) << what << ": at most max_draft_tokens per round";
      if (batch == 1) drafts_per_round[c] = (double)st.drafted / (double)st.rounds;
    }
  }
  // A lower threshold lets rounds run longer.
  EXPECT_GT(drafts_per_round[0.2], drafts_per_round[0.95]);
  EXPECT_GT(drafts_per_round[0.2], drafts_per_round[1.0]);
  auto bad = spec(10, 2, 0);
  bad.speculative.draft_confidence = 1.5;
  EXPECT_THROW(sl::generate(m, {prompts[1]}, bad), std::invalid_argument);
}

namespace {
sl::DecodeOptions tree(int64_t max_new, int draft_layer, int draft_tokens, int nodes, int64_t eos = 2) {
  sl::DecodeOptions o = spec(max_new, draft_layer, draft_tokens, eos);
  o.speculative.tree_nodes = nodes;
  return o;
}

// A random 5-layer model (GQA) whose shallow sub-models are poor drafts, so chains are short and
// the tree's alternatives decide how much a round gives.
sl::Llama random_model() {
  sl::ModelConfig c;
  c.dim = 32, c.hidden_dim = 64, c.n_layers = 5, c.n_heads = 4, c.n_kv_heads = 2, c.vocab_size = 40, c.max_seq_len = 256;
  sl::Llama m(c);
  m->init_weights(0.5, 11);
  return m;
}

// 12 prompts of 1..12 random tokens (BOS first).
std::vector<std::vector<int>> random_prompts() {
  torch::manual_seed(5);
  std::vector<std::vector<int>> p;
  for (int64_t n = 1; n <= 12; ++n) {
    torch::Tensor t = torch::randint(3, 40, {n - 1}, torch::kInt64);
    std::vector<int> q{1};
    for (int64_t i = 0; i < n - 1; ++i) q.push_back((int)t[i].item<int64_t>());
    p.push_back(q);
  }
  return p;
}

std::vector<sl::Generation> in_batches(sl::Llama& m, const std::vector<std::vector<int>>& prompts, size_t batch,
                                       const sl::DecodeOptions& o, sl::DecodeStats* st) {
  std::vector<sl::Generation> out;
  for (size_t s = 0; s < prompts.size(); s += batch) {
    const std::vector<std::vector<int>> part(prompts.begin() + (std::ptrdiff_t)s,
                                             prompts.begin() + (std::ptrdiff_t)std::min(prompts.size(), s + batch));
    for (auto& g : sl::generate(m, part, o, st)) out.push_back(g);
  }
  return out;
}
}  // namespace

// Draft trees change which drafts are verified, never the output: tree greedy == chain greedy ==
// plain greedy for draft layers 1, 2 and 4, draft lengths 1, 3, 6 and adaptive, 1, 2 and 5 tree
// nodes, batches of 1..4 and all 12 prompts (these take the general layer path, smaller rounds the
// fast one), EOS and the length limit inside rounds. The random model's drafts are weak, so the
// alternatives are accepted often (rows keep slots after their chain).
TEST(SpeculativeTree, EqualsChainAndPlainGreedyOnARandomModel) {
  sl::Llama m = random_model();
  const auto prompts = random_prompts();
  // EOS: the token plain decoding of prompt 3 emits 7th, so some rows end at it and others reach 24.
  const int64_t eos = sl::generate(m, {prompts[3]}, plain(24, 0, -1))[0].tokens[6];
  std::vector<sl::Generation> want;
  for (const auto& p : prompts) want.push_back(sl::generate(m, {p}, plain(24, 0, eos))[0]);
  std::map<std::string, int> finish;
  for (const auto& g : want) ++finish[g.finish_reason];
  EXPECT_GT(finish["eos"], 0) << "no generation exercises EOS";
  EXPECT_GT(finish["length"], 0) << "no generation exercises the length limit";
  int64_t tree_accepted = 0, chain_accepted = 0;
  for (int k : {1, 2, 4}) {
    for (int n : {1, 3, 6, 0}) {
      const std::string chain_what = "draft layer " + std::to_string(k) + ", draft tokens " + std::to_string(n);
      expect_same(sl::generate(m, prompts, spec(24, k, n, eos)), want, chain_what + ", chain");
      for (int nodes : {1, 2, 5}) {
        const std::string what = chain_what + ", tree " + std::to_string(nodes);
        sl::DecodeStats st;
        expect_same(sl::generate(m, prompts, tree(24, k, n, nodes, eos), &st), want, what + ", batched");
        EXPECT_GT(st.tree_nodes, 0) << what;
        EXPECT_LE(st.tree_accepted, st.tree_nodes) << what;
        EXPECT_LE(st.tree_accepted, st.rounds) << what << ": one alternative per row and round at most";
        EXPECT_DOUBLE_EQ(st.mean_tokens_per_round(), (double)(st.accepted + st.tree_accepted + st.rounds) / (double)st.rounds);
        tree_accepted += st.tree_accepted;
        chain_accepted += st.accepted;
        for (size_t batch : {(size_t)1, (size_t)2, (size_t)3, (size_t)4}) {
          if ((size_t)nodes != batch && !(batch == 1 && n == 0)) continue;  // each size with a few settings
          expect_same(in_batches(m, prompts, batch, tree(24, k, n, nodes, eos), nullptr), want,
                      what + ", batch " + std::to_string(batch));
        }
      }
    }
  }
  EXPECT_GT(tree_accepted, 0) << "no alternative was ever accepted: the tree is silently a chain";
  EXPECT_GT(chain_accepted, 0);
}

// Every alternative that is not kept becomes a hole, so a tree round leaves up to N+M holes: with
// long drafts and many nodes they fill the cache; output stays exact through the compactions, a
// kept alternative's position included. A verifier below the full model too.
TEST(SpeculativeTree, HolesAreCompactedAndOutputStaysExact) {
  std::string dir = sl_test::stories_model_dir();
  sl::Tokenizer tok(dir + "/tokenizer.model");
  auto prompts = story_prompts(tok);
  for (bool damped : {false, true}) {
    sl::Llama m = damped ? sl_test::damped_stories_model(dir) : sl::load_model(dir);
    const std::string what = damped ? "damped" : "stories";
    auto want = sl::generate(m, prompts, plain(100));
    sl::DecodeStats st;
    expect_same(sl::generate(m, prompts, tree(100, 2, 8, 6), &st), want, what + ", draft layer 2, 8 tokens, tree 6");
    EXPECT_GT(st.compactions, 0) << what << ": the test no longer exercises cache compaction";
    EXPECT_GT(st.tree_accepted, 0) << what << ": no alternative was accepted";
    auto sub = tree(60, 1, 3, 3);
    sub.exit_layer = 4;
    expect_same(sl::generate(m, prompts, sub), sl::generate(m, prompts, plain(60, 4)), what + ", verifier 4, draft 1");
  }
}

// Alternatives are verified only where a chain drafted: `tree_nodes` counts M per row of every round
// with drafts; with M nodes at one draft position (N = 1) the round is a pure fan-out.
TEST(SpeculativeTree, StatsCountTheNodesVerified) {
  std::string dir = sl_test::stories_model_dir();
  sl::Llama m = sl::load_model(dir);
  sl::Tokenizer tok(dir + "/tokenizer.model");
  auto prompts = story_prompts(tok);
  sl::DecodeStats st;
  expect_same(sl::generate(m, prompts, tree(30, 1, 1, 4), &st), sl::generate(m, prompts, plain(30)), "draft layer 1, fan-out 4");
  EXPECT_EQ(st.tree_nodes, 4 * st.drafted);  // one draft per round: every round with a draft has 4 alternatives
  EXPECT_GT(st.tree_accepted, 0);
  const nlohmann::json j = st.to_json();
  EXPECT_EQ(j["tree_nodes"], st.tree_nodes);
  EXPECT_EQ(j["tree_accepted"], st.tree_accepted);
  sl::DecodeStats chain;
  sl::generate(m, prompts, spec(30, 1, 1), &chain);
  EXPECT_EQ(chain.tree_nodes, 0);
  EXPECT_EQ(chain.to_json()["tree_accepted"], 0);
  EXPECT_LT(st.rounds, chain.rounds) << "accepted alternatives should save rounds";
}

TEST(SpeculativeTree, SamplingAndNegativeNodesAreRefused) {
  std::string dir = sl_test::stories_model_dir();
  sl::Llama m = sl::load_model(dir);
  auto sampled = tree(10, 2, 3, 2);
  sampled.sampling.temperature = 0.8;
  try {
    sl::generate(m, {{1}}, sampled);
    ADD_FAILURE() << "sampling with a draft tree was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("draft trees are greedy only: --draft-tree needs --temperature 0"), std::string::npos)
        << e.what();
  }
  auto negative = tree(10, 2, 3, -1);
  try {
    sl::generate(m, {{1}}, negative);
    ADD_FAILURE() << "a negative node budget was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("tree_nodes -1"), std::string::npos) << e.what();
  }
}
