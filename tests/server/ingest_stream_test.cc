// Tests of server/core/ingest_stream without gRPC: text buffered until something ends it, a
// character split by a flush carried to the next message, the buffer's limit, malformed UTF-8
// where the text ends, the ingest rate charged per submission, the bos of a stream that starts
// the context, and the running loss. The tokenizer is the byte-level test tokenizer (one id per
// ASCII byte, "é" one id by a merge).
#include "server/core/ingest_stream.h"

#include <cmath>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/testing/byte_level_tokenizer.h"

namespace ttt::server::core {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ttt::testing::ByteLevelId;

constexpr int kEAcute = 96;  // "é" in the test tokenizer

class IngestStreamTest : public ::testing::Test {
 protected:
  // A stream over the test tokenizer whose charges are recorded in charged_.
  // `bos`: the stream starts the session's context with this bos.
  std::unique_ptr<IngestStream> Stream(int64_t max_buffered = 1 << 20, bool sync = false,
                                       std::optional<int32_t> bos = std::nullopt) {
    IngestStream::Options options;
    options.bos = bos;
    options.starts_context = bos.has_value();
    return StreamWith(options, max_buffered, sync);
  }
  std::unique_ptr<IngestStream> StreamWith(IngestStream::Options options,
                                           int64_t max_buffered = 1 << 20, bool sync = false) {
    options.tokenizer = tokenizer_.get();
    options.max_buffered_text_bytes = max_buffered;
    options.sync_durability = sync;
    return std::make_unique<IngestStream>(options, [this](int64_t n) {
      charged_.push_back(n);
      return refuse_charge_ ? absl::ResourceExhaustedError("ingest rate exceeded")
                            : absl::OkStatus();
    });
  }

  static IngestMessage Text(std::string_view text, bool flush = false) {
    IngestMessage m;
    m.text = text;
    m.flush = flush;
    return m;
  }
  static IngestMessage DocumentEnd(std::string_view text) {
    IngestMessage m;
    m.text = text;
    m.end_of_document = true;
    return m;
  }
  // The tokens each message submits, in order (an error fails the test and gives {-1}).
  static std::vector<std::vector<int32_t>> Submit(IngestStream& stream,
                                                  const std::vector<IngestMessage>& msgs) {
    std::vector<std::vector<int32_t>> out;
    for (const IngestMessage& m : msgs) {
      auto got = stream.Accept(m, "m");
      EXPECT_TRUE(got.ok()) << got.status();
      out.push_back(got.ok() ? got->tokens : std::vector<int32_t>{-1});
    }
    return out;
  }

  const std::unique_ptr<tokenizer::Tokenizer> tokenizer_ = ttt::testing::LoadByteLevelTokenizer();
  std::vector<int64_t> charged_;
  bool refuse_charge_ = false;
};

TEST_F(IngestStreamTest, BuffersTextUntilAFlush) {
  auto stream = Stream();
  auto first = stream->Accept(Text("ab"), "Ingest message 0");
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_THAT(first->tokens, IsEmpty());
  EXPECT_EQ(first->buffered_text_bytes, 2);

  auto second = stream->Accept(Text("c", /*flush=*/true), "Ingest message 1");
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_THAT(second->tokens, ElementsAre(ByteLevelId('a'), ByteLevelId('b'), ByteLevelId('c')));
  EXPECT_EQ(second->buffered_text_bytes, 0);
  EXPECT_FALSE(second->durable);
  EXPECT_THAT(charged_, ElementsAre(0, 3));  // each submission charges what it carries
}

TEST_F(IngestStreamTest, TokenIdsEndTheTextAndFollowIt) {
  auto stream = Stream();
  ASSERT_TRUE(stream->Accept(Text("x"), "m0").ok());
  IngestMessage ids;
  const std::vector<int32_t> own = {7, 8};
  ids.token_ids = own;
  auto got = stream->Accept(ids, "m1");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_THAT(got->tokens, ElementsAre(ByteLevelId('x'), 7, 8));
}

TEST_F(IngestStreamTest, FlushInsideACharacterCarriesItsFirstBytes) {
  auto stream = Stream();
  auto first = stream->Accept(Text("caf\xC3", /*flush=*/true), "m0");
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_THAT(first->tokens, ElementsAre(ByteLevelId('c'), ByteLevelId('a'), ByteLevelId('f')));
  EXPECT_EQ(first->buffered_text_bytes, 1);  // the character's first byte waits

  auto second = stream->Accept(Text("\xA9!", /*flush=*/true), "m1");
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_THAT(second->tokens, ElementsAre(kEAcute, ByteLevelId('!')));
}

TEST_F(IngestStreamTest, EndOfDocumentInsideACharacterIsMalformed) {
  auto stream = Stream(1 << 20, /*sync=*/true);
  IngestMessage m = Text("caf\xC3");
  m.end_of_document = true;
  auto got = stream->Accept(m, "Ingest message 4");
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(got.status().message(), HasSubstr("Ingest message 4: text is not valid UTF-8"));
}

TEST_F(IngestStreamTest, EndOfDocumentIsDurableUnderSyncDurability) {
  auto stream = Stream(1 << 20, /*sync=*/true);
  IngestMessage m = Text("hi");
  m.end_of_document = true;
  auto got = stream->Accept(m, "m0");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(got->end_of_document);
  EXPECT_TRUE(got->durable);
  auto plain = stream->Accept(Text("more"), "m1");
  ASSERT_TRUE(plain.ok());
  EXPECT_FALSE(plain->durable);  // buffered text applies nothing: nothing to commit
  const std::vector<int32_t> x = {ByteLevelId('x')};
  IngestMessage ids;
  ids.token_ids = x;
  auto tokens = stream->Accept(ids, "m2");  // no flush: committed all the same (issue 23)
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  EXPECT_TRUE(tokens->durable);
}

TEST_F(IngestStreamTest, RefusesTextBeyondTheBufferLimit) {
  auto stream = Stream(/*max_buffered=*/4);
  ASSERT_TRUE(stream->Accept(Text("abc"), "m0").ok());
  auto got = stream->Accept(Text("de"), "Ingest message 1");
  EXPECT_EQ(got.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(got.status().message(),
              HasSubstr("Ingest message 1: more than 4 bytes of text buffered; send flush"));
}

TEST_F(IngestStreamTest, RefusesTextWithoutATokenizer) {
  IngestStream stream({/*tokenizer=*/nullptr}, [](int64_t) { return absl::OkStatus(); });
  auto got = stream.Accept(Text("a"), "Ingest message 0");
  EXPECT_EQ(got.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(got.status().message(), HasSubstr("the model has no tokenizer; send token_ids"));
}

TEST_F(IngestStreamTest, ARefusedChargeRefusesTheSubmission) {
  auto stream = Stream();
  refuse_charge_ = true;
  auto got = stream->Accept(Text("ab", /*flush=*/true), "m0");
  EXPECT_EQ(got.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(got.status().message(), HasSubstr("ingest rate exceeded"));
  EXPECT_THAT(charged_, ElementsAre(2));
}

// A stream that starts the session's context puts the bos before its first text tokens, once.
TEST_F(IngestStreamTest, BosGoesBeforeTheFirstTextOnly) {
  constexpr int32_t kBos = 7;
  auto stream = Stream(1 << 20, /*sync=*/false, kBos);
  auto first = stream->Accept(Text("ab", /*flush=*/true), "m0");
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_THAT(first->tokens, ElementsAre(kBos, ByteLevelId('a'), ByteLevelId('b')));
  auto second = stream->Accept(Text("c", /*flush=*/true), "m1");
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_THAT(second->tokens, ElementsAre(ByteLevelId('c')));
}

// Token ids chosen by the client begin the context themselves: no bos before later text.
TEST_F(IngestStreamTest, TokenIdsFirstTakeNoBos) {
  auto stream = Stream(1 << 20, /*sync=*/false, /*bos=*/7);
  const int32_t ids[] = {3};
  IngestMessage m;
  m.token_ids = ids;
  auto first = stream->Accept(m, "m0");
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_THAT(first->tokens, ElementsAre(3));
  auto second = stream->Accept(Text("a", /*flush=*/true), "m1");
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_THAT(second->tokens, ElementsAre(ByteLevelId('a')));
}

// In a session that resets at each document end, the text after an end_of_document starts a new
// context and gets the bos exactly as at position 0: once, before its first tokens.
TEST_F(IngestStreamTest, BosStartsEachContextAfterAResettingDocumentEnd) {
  constexpr int32_t kBos = 7;
  const int32_t a = ByteLevelId('a'), b = ByteLevelId('b'), c = ByteLevelId('c');
  IngestStream::Options options;
  options.bos = kBos;
  options.starts_context = true;
  options.resets_at_document_end = true;
  auto stream = StreamWith(options);
  EXPECT_THAT(Submit(*stream, {DocumentEnd("ab"), Text("c"), DocumentEnd("a"), DocumentEnd(""),
                               Text("b", /*flush=*/true), Text("c", /*flush=*/true)}),
              ElementsAre(ElementsAre(kBos, a, b), IsEmpty(), ElementsAre(kBos, c, a), IsEmpty(),
                          ElementsAre(kBos, b), ElementsAre(c)));
  // The rest at the end of the stream, after a document end, starts a context too.
  ASSERT_TRUE(stream->Accept(DocumentEnd(""), "m").ok());
  ASSERT_TRUE(stream->Accept(Text("a"), "m").ok());
  auto rest = stream->TakeRest();
  ASSERT_TRUE(rest.ok() && rest->has_value()) << rest.status();
  EXPECT_THAT((*rest)->tokens, ElementsAre(kBos, a));
}

// A stream that opens inside a context gets no bos until a resetting document end; token ids
// after one begin the next context themselves.
TEST_F(IngestStreamTest, BosAfterAResetOnlyWhereTextStartsTheContext) {
  constexpr int32_t kBos = 7;
  const int32_t a = ByteLevelId('a'), b = ByteLevelId('b');
  IngestStream::Options options;
  options.bos = kBos;
  options.starts_context = false;
  options.resets_at_document_end = true;
  auto stream = StreamWith(options);
  const int32_t ids[] = {3};
  IngestMessage tokens;
  tokens.token_ids = ids;
  EXPECT_THAT(
      Submit(*stream, {DocumentEnd("a"), Text("b", /*flush=*/true), DocumentEnd(""), tokens,
                       Text("a", /*flush=*/true)}),
      ElementsAre(ElementsAre(a), ElementsAre(kBos, b), IsEmpty(), ElementsAre(3), ElementsAre(a)));
}

// Without a reset the document end continues the context: no bos; nor without a bos id at all.
TEST_F(IngestStreamTest, NoBosAfterADocumentEndThatKeepsTheContext) {
  const int32_t a = ByteLevelId('a'), b = ByteLevelId('b');
  auto kept = Stream(1 << 20, /*sync=*/false, /*bos=*/7);
  EXPECT_THAT(Submit(*kept, {DocumentEnd("a"), Text("b", /*flush=*/true)}),
              ElementsAre(ElementsAre(7, a), ElementsAre(b)));
  IngestStream::Options no_bos;
  no_bos.starts_context = true;
  no_bos.resets_at_document_end = true;
  auto none = StreamWith(no_bos);
  EXPECT_THAT(Submit(*none, {DocumentEnd("a"), Text("b", /*flush=*/true)}),
              ElementsAre(ElementsAre(a), ElementsAre(b)));
}

TEST_F(IngestStreamTest, TakeRestFlushesWhatIsBufferedOnce) {
  auto stream = Stream(1 << 20, /*sync=*/true);
  ASSERT_TRUE(stream->Accept(Text("ok"), "m0").ok());
  auto rest = stream->TakeRest();
  ASSERT_TRUE(rest.ok()) << rest.status();
  ASSERT_TRUE(rest->has_value());
  EXPECT_THAT((*rest)->tokens, ElementsAre(ByteLevelId('o'), ByteLevelId('k')));
  EXPECT_TRUE((*rest)->durable);  // an implicit flush
  auto none = stream->TakeRest();
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
}

TEST_F(IngestStreamTest, TakeRestNamesACutCharacter) {
  auto stream = Stream();
  ASSERT_TRUE(stream->Accept(Text("x\xC3"), "m0").ok());
  auto rest = stream->TakeRest();
  EXPECT_EQ(rest.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(rest.status().message(), HasSubstr("text buffered at the end of the stream"));
}

TEST_F(IngestStreamTest, LossIsReportedOnceAskedAndPredicted) {
  auto stream = Stream();
  stream->Applied(3, 0.0, 0);
  EXPECT_FALSE(stream->loss().has_value());
  IngestMessage ask;
  ask.flush = true;
  ask.report_loss = true;
  ASSERT_TRUE(stream->Accept(ask, "m0").ok());
  EXPECT_FALSE(stream->loss().has_value());  // no token had a prediction yet
  stream->Applied(4, 6.0, 4);
  stream->Applied(2, 2.0, 2);
  EXPECT_EQ(stream->stream_tokens(), 9);
  ASSERT_TRUE(stream->loss().has_value());
  EXPECT_DOUBLE_EQ(stream->loss()->loss, 8.0 / 6.0);
  EXPECT_DOUBLE_EQ(stream->loss()->perplexity, std::exp(8.0 / 6.0));
  EXPECT_EQ(stream->loss()->tokens, 6);
}

}  // namespace
}  // namespace ttt::server::core
