#include <gtest/gtest.h>

#include "sortedllama/model/exits.h"

using sl::parse_exits;

TEST(Exits, AutoFor40LayersIsThePapersSet) {
  EXPECT_EQ(parse_exits("auto", 40), (std::vector<int>{12, 16, 20, 24, 28, 32, 36, 40}));
}

TEST(Exits, AutoFor32LayersIsEightSpreadExits) {
  auto e = parse_exits("auto", 32);
  EXPECT_EQ(e.size(), 8u);
  EXPECT_EQ(e.front(), 10);  // round(0.3 * 32)
  EXPECT_EQ(e.back(), 32);
}

TEST(Exits, AutoBelowEightLayersIsEveryLayer) {
  EXPECT_EQ(parse_exits("auto", 5), (std::vector<int>{1, 2, 3, 4, 5}));
}

TEST(Exits, AllAndListsAreSortedAndUnique) {
  EXPECT_EQ(parse_exits("all", 3), (std::vector<int>{1, 2, 3}));
  EXPECT_EQ(parse_exits("8,4,4,12", 12), (std::vector<int>{4, 8, 12}));
}

TEST(Exits, BadSpecsNameTheValue) {
  try {
    parse_exits("4,13", 12);
    FAIL();
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("layer 13"), std::string::npos) << e.what();
  }
  EXPECT_THROW(parse_exits("0", 12), std::runtime_error);
  EXPECT_THROW(parse_exits("4,x", 12), std::runtime_error);
  EXPECT_THROW(parse_exits("4.5", 12), std::runtime_error);
  EXPECT_THROW(parse_exits("", 12), std::runtime_error);
}
