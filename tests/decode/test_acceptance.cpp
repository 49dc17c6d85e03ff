// Speculative acceptance rules and the adaptive draft length, without a model.
#include <gtest/gtest.h>

#include "sortedllama/decode/acceptance.h"
#include "sortedllama/decode/sampling.h"

namespace {
torch::Tensor ids(std::vector<std::vector<int64_t>> rows, int64_t cols) {
  torch::Tensor t = torch::zeros({(int64_t)rows.size(), cols}, torch::kInt64);
  for (size_t r = 0; r < rows.size(); ++r)
    for (int64_t j = 0; j < cols; ++j) t[(int64_t)r][j] = rows[r][j];
  return t;
}

// Probabilities [R,n,V] that put all mass on one token per row and position.
torch::Tensor certain(const torch::Tensor& tokens, int64_t V) {
  return torch::one_hot(tokens, V).to(torch::kFloat32);
}
}  // namespace

TEST(AcceptGreedy, NoDraftsGiveTheVerifiersToken) {
  const auto a = sl::accept_greedy(torch::zeros({2, 0}, torch::kInt64), ids({{7}, {9}}, 1));
  EXPECT_EQ(a.accepted, (std::vector<int64_t>{0, 0}));
  EXPECT_EQ(a.next, (std::vector<int64_t>{7, 9}));
}

TEST(AcceptGreedy, PrefixUpToTheFirstDisagreementThenTheVerifiersToken) {
  const torch::Tensor drafts = ids({{4, 5, 6}, {4, 5, 6}, {4, 5, 6}, {4, 0, 6}}, 3);
  const torch::Tensor verifier = ids({{4, 5, 6, 8}, {1, 5, 6, 8}, {4, 5, 2, 8}, {4, 5, 6, 8}}, 4);
  const auto a = sl::accept_greedy(drafts, verifier);
  // All accepted -> the last position's token is the bonus; first rejected -> the verifier's first
  // token; a later agreement after a rejection does not count.
  EXPECT_EQ(a.accepted, (std::vector<int64_t>{3, 0, 2, 1}));
  EXPECT_EQ(a.next, (std::vector<int64_t>{8, 1, 2, 5}));
}

TEST(AcceptGreedy, RejectsMismatchedShapes) {
  EXPECT_THROW(sl::accept_greedy(ids({{1, 2}}, 2), ids({{1, 2}}, 2)), c10::Error);
}

TEST(AcceptSampled, NoDraftsDrawTheBonusFromP) {
  at::Generator gen = sl::make_generator(1);
  const torch::Tensor p = certain(ids({{3}}, 1), 6);  // [1,1,6]
  const auto a = sl::accept_sampled(p, torch::zeros({1, 0, 6}), torch::zeros({1, 0}, torch::kInt64),
                                    torch::zeros({1, 0}), gen);
  EXPECT_EQ(a.accepted, (std::vector<int64_t>{0}));
  EXPECT_EQ(a.next, (std::vector<int64_t>{3}));
}

TEST(AcceptSampled, PEqualToQAcceptsEveryDraftAndAddsTheBonus) {
  at::Generator gen = sl::make_generator(2);
  const torch::Tensor q = torch::full({1, 2, 4}, 0.25f);
  const torch::Tensor p = torch::cat({q, certain(ids({{2}}, 1), 4)}, 1);  // bonus position: token 2 for sure
  const auto a = sl::accept_sampled(p, q, ids({{0, 3}}, 2), torch::full({1, 2}, 0.999f), gen);
  EXPECT_EQ(a.accepted, (std::vector<int64_t>{2}));
  EXPECT_EQ(a.next, (std::vector<int64_t>{2}));
}

// u * q(d) < p(d): with p(d)/q(d) = 0.5 a draw below 0.5 accepts, one above rejects and the token
// comes from max(0, p - q), normalised (here all of it on token 1).
TEST(AcceptSampled, AcceptsWithProbabilityPOverQAndResamplesFromTheResidual) {
  at::Generator gen = sl::make_generator(3);
  const torch::Tensor q = torch::tensor({0.8f, 0.2f, 0.0f}).view({1, 1, 3});
  const torch::Tensor p_draft = torch::tensor({0.4f, 0.6f, 0.0f}).view({1, 1, 3});
  const torch::Tensor p = torch::cat({p_draft, torch::tensor({0.0f, 0.0f, 1.0f}).view({1, 1, 3})}, 1);  // [1,2,3]
  const torch::Tensor d = ids({{0}}, 1);
  const auto take = sl::accept_sampled(p, q, d, torch::full({1, 1}, 0.4f), gen);
  EXPECT_EQ(take.accepted, (std::vector<int64_t>{1}));
  EXPECT_EQ(take.next, (std::vector<int64_t>{2}));  // the bonus, from p at position 1
  for (int i = 0; i < 20; ++i) {
    const auto reject = sl::accept_sampled(p, q, d, torch::full({1, 1}, 0.6f), gen);
    EXPECT_EQ(reject.accepted, (std::vector<int64_t>{0}));
    EXPECT_EQ(reject.next, (std::vector<int64_t>{1}));  // residual max(0, p - q) = [0, 0.4, 0]
  }
}

// A rejection where p == q (possible only at u's boundary, or by rounding) leaves no residual mass:
// the token then comes from p itself, never from an all-zero distribution.
TEST(AcceptSampled, PEqualToQLeavesNoResidualAndFallsBackToP) {
  at::Generator gen = sl::make_generator(4);
  const torch::Tensor q = torch::tensor({0.0f, 0.5f, 0.5f, 0.0f}).view({1, 1, 4});
  const torch::Tensor p = torch::cat({q, q}, 1);
  for (int i = 0; i < 20; ++i) {
    const auto a = sl::accept_sampled(p, q, ids({{1}}, 1), torch::ones({1, 1}), gen);
    EXPECT_EQ(a.accepted, (std::vector<int64_t>{0}));
    EXPECT_TRUE(a.next[0] == 1 || a.next[0] == 2) << a.next[0];
  }
}

TEST(AcceptSampled, RowsAreIndependent) {
  at::Generator gen = sl::make_generator(5);
  const torch::Tensor q = certain(ids({{0, 1}, {0, 1}}, 2), 3);        // drafts 0 then 1, for sure
  const torch::Tensor p = certain(ids({{0, 1, 2}, {0, 2, 2}}, 3), 3);  // row 1 disagrees at position 1
  const auto a = sl::accept_sampled(p, q, ids({{0, 1}, {0, 1}}, 2), torch::full({2, 2}, 0.5f), gen);
  EXPECT_EQ(a.accepted, (std::vector<int64_t>{2, 1}));
  EXPECT_EQ(a.next, (std::vector<int64_t>{2, 2}));
}

TEST(NextDraftLength, GrowsByTwoAfterAFullAcceptanceElseShrinksByOne) {
  EXPECT_EQ(sl::next_draft_length(4, 4, 4, 16), 6);
  EXPECT_EQ(sl::next_draft_length(15, 15, 15, 16), 16);  // capped
  EXPECT_EQ(sl::next_draft_length(4, 4, 3, 16), 3);
  EXPECT_EQ(sl::next_draft_length(1, 1, 0, 16), 1);  // never below 1
  // A round shortened (by EOS or the length limit) counts as full when every drafted token was accepted.
  EXPECT_EQ(sl::next_draft_length(6, 2, 2, 16), 8);
}

namespace {
sl::DraftSiblings siblings(std::vector<std::vector<int64_t>> at, std::vector<std::vector<int64_t>> tokens, int64_t M) {
  return {ids(std::move(at), M), ids(std::move(tokens), M)};
}
}  // namespace

// Positions by increasing top probability get their best alternative first, then their second.
TEST(ChooseSiblings, LeastSurePositionsFirstThenTheirNextAlternatives) {
  const torch::Tensor top = torch::tensor({{0.9f, 0.2f, 0.5f}, {0.3f, 0.3f, 0.1f}});  // [2,3]
  torch::Tensor ranked = torch::zeros({2, 3, 2}, torch::kInt64);                      // token 10*r + 100*j + rank
  for (int64_t r = 0; r < 2; ++r)
    for (int64_t j = 0; j < 3; ++j)
      for (int64_t k = 0; k < 2; ++k) ranked[r][j][k] = 10 * r + 100 * j + k;
  const sl::DraftSiblings one = sl::choose_siblings(top, ranked, 1);
  EXPECT_TRUE(one.at.equal(ids({{1}, {2}}, 1)));
  EXPECT_TRUE(one.tokens.equal(ids({{100}, {210}}, 1)));
  // Five nodes over three positions: every position's best alternative, then the two least sure
  // positions' second (ties: the earlier position first).
  const sl::DraftSiblings five = sl::choose_siblings(top, ranked, 5);
  EXPECT_TRUE(five.at.equal(ids({{1, 2, 0, 1, 2}, {2, 0, 1, 2, 0}}, 5)));
  EXPECT_TRUE(five.tokens.equal(ids({{100, 200, 0, 101, 201}, {210, 10, 110, 211, 11}}, 5)));
  EXPECT_THROW(sl::choose_siblings(top, ranked, 7), c10::Error);  // 3 positions x 2 alternatives
}

TEST(AcceptGreedyTree, WithoutSiblingsItIsTheChainRule) {
  const torch::Tensor drafts = ids({{4, 5, 6}, {4, 5, 6}, {4, 0, 6}}, 3);
  const torch::Tensor verifier = ids({{4, 5, 6, 8}, {1, 5, 6, 8}, {4, 5, 6, 8}}, 4);
  const auto chain = sl::accept_greedy(drafts, verifier);
  const auto tree = sl::accept_greedy_tree(drafts, verifier, siblings({{}, {}, {}}, {{}, {}, {}}, 0));
  EXPECT_EQ(tree.accepted, chain.accepted);
  EXPECT_EQ(tree.next, chain.next);
  EXPECT_EQ(tree.sibling, (std::vector<int64_t>{-1, -1, -1}));
}

// Verifier nodes: chain 0..3, then the two siblings. Rows: (0) every draft accepted, a sibling
// agreeing too is ignored; (1) draft 0 rejected, the sibling at 0 equals the verifier's token: it
// is accepted and the verifier's token at the sibling's node follows; (2) draft 1 rejected, the
// matching sibling sits at position 2, not 1: nothing more; (3) draft 2 rejected, the second
// sibling at 2 matches; (4) draft 1 rejected, the sibling at 1 is another token.
TEST(AcceptGreedyTree, AnAlternativeAtTheFirstRejectionThatTheVerifierChose) {
  const torch::Tensor drafts = ids({{4, 5, 6}, {4, 5, 6}, {4, 5, 6}, {4, 5, 6}, {4, 5, 6}}, 3);
  const torch::Tensor verifier = ids({{4, 5, 6, 8, 9, 9},
                                      {7, 5, 6, 8, 3, 9},
                                      {4, 7, 6, 8, 9, 9},
                                      {4, 5, 7, 8, 9, 1},
                                      {4, 7, 6, 8, 9, 9}},
                                     6);
  const auto a = sl::accept_greedy_tree(drafts, verifier,
                                        siblings({{2, 1}, {0, 2}, {0, 2}, {2, 2}, {1, 0}},
                                                 {{8, 9}, {7, 1}, {1, 7}, {3, 7}, {2, 4}}, 2));
  EXPECT_EQ(a.accepted, (std::vector<int64_t>{3, 0, 1, 2, 1}));
  EXPECT_EQ(a.sibling, (std::vector<int64_t>{-1, 0, -1, 1, -1}));
  EXPECT_EQ(a.next, (std::vector<int64_t>{8, 3, 7, 1, 7}));
}

TEST(AcceptGreedyTree, RejectsMismatchedShapes) {
  // Two siblings need 3 + 1 + 2 verifier nodes.
  EXPECT_THROW(sl::accept_greedy_tree(ids({{1, 2, 3}}, 3), ids({{1, 2, 3, 4, 5}}, 5), siblings({{0, 1}}, {{5, 6}}, 2)),
               c10::Error);
}
