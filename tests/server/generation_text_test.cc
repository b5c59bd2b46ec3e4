// Tests of server/core/generation_text without gRPC or a model: generated ids of the byte-level
// test tokenizer decoded as they come, a character split across tokens sent once whole, text
// held back while it could still start a stop string, and cut at the first stop string.
#include "server/core/generation_text.h"

#include <memory>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/testing/byte_level_tokenizer.h"

namespace ttt::server::core {
namespace {

using ::testing::HasSubstr;
using ttt::testing::ByteLevelId;

class GenerationTextTest : public ::testing::Test {
 protected:
  std::unique_ptr<GenerationText> Text(std::vector<std::string> stops = {}) {
    auto text = GenerationText::Create(tokenizer_.get(), std::move(stops));
    EXPECT_TRUE(text.ok()) << text.status();
    return text.ok() ? std::move(*text) : nullptr;
  }
  // What each Push of `s`'s characters (one id per ASCII byte) returns.
  static std::vector<std::string> PushAll(GenerationText& text, const std::string& s) {
    std::vector<std::string> out;
    for (char c : s) out.push_back(text.Push(ByteLevelId(c)));
    return out;
  }

  const std::unique_ptr<tokenizer::Tokenizer> tokenizer_ = ttt::testing::LoadByteLevelTokenizer();
};

TEST_F(GenerationTextTest, WithoutStopsSendsEachTokensText) {
  auto text = Text();
  EXPECT_THAT(PushAll(*text, "ab c"), ::testing::ElementsAre("a", "b", " ", "c"));
  EXPECT_EQ(text->Finish(), "");
  EXPECT_FALSE(text->stopped());
}

TEST_F(GenerationTextTest, ACharacterSplitAcrossTokensIsSentWhole) {
  auto text = Text();
  const int c3 = ByteLevelId('\xC3'), a9 = ByteLevelId('\xA9');  // "é" byte by byte
  EXPECT_EQ(text->Push(c3), "");
  EXPECT_EQ(text->Push(a9), "\xC3\xA9");
  EXPECT_EQ(text->Push(c3), "");
  EXPECT_EQ(text->Finish(), "\xEF\xBF\xBD");  // left incomplete: U+FFFD
}

TEST_F(GenerationTextTest, HoldsBackAPossibleStopStringStart) {
  auto text = Text({"xyz"});
  // The last two bytes (the stop's length less one) wait: they could begin "xyz".
  EXPECT_THAT(PushAll(*text, "abxy"), ::testing::ElementsAre("", "", "a", "b"));
  EXPECT_EQ(text->Push(ByteLevelId('q')), "x");
  EXPECT_EQ(text->Finish(), "yq");
  EXPECT_FALSE(text->stopped());
}

TEST_F(GenerationTextTest, CutsAtTheFirstStopString) {
  auto text = Text({"de", "c"});
  // One byte waits (the longest stop's length less one) until "c" matches.
  EXPECT_THAT(PushAll(*text, "abc"), ::testing::ElementsAre("", "a", "b"));
  EXPECT_TRUE(text->stopped());
  EXPECT_EQ(text->Push(ByteLevelId('d')), "");  // nothing more after a stop
  EXPECT_EQ(text->Finish(), "");
}

TEST_F(GenerationTextTest, AStopStringAcrossTokensMatches) {
  auto text = Text({"lo w"});
  std::string sent;
  for (const std::string& piece : PushAll(*text, "hello world")) sent += piece;
  EXPECT_TRUE(text->stopped());
  EXPECT_EQ(sent + text->Finish(), "hel");
}

TEST_F(GenerationTextTest, HeldBackTextNeverSplitsACharacter) {
  auto text = Text({"zz"});
  const int e_acute = 96;  // "é" by the merge
  EXPECT_EQ(text->Push(ByteLevelId('a')), "");
  EXPECT_EQ(text->Push(e_acute), "a");  // "é" held back whole (one byte held would split it)
  EXPECT_EQ(text->Push(ByteLevelId('b')), "\xC3\xA9");
  EXPECT_EQ(text->Finish(), "b");
}

TEST_F(GenerationTextTest, StopsNeedATokenizer) {
  auto text = GenerationText::Create(nullptr, {"x"});
  EXPECT_EQ(text.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(text.status().message(), HasSubstr("stop strings need text"));

  auto plain = GenerationText::Create(nullptr, {});
  ASSERT_TRUE(plain.ok());
  EXPECT_FALSE((*plain)->has_text());
  EXPECT_EQ((*plain)->Push(5), "");
  EXPECT_EQ((*plain)->Finish(), "");
}

}  // namespace
}  // namespace ttt::server::core
