// session/checkpoint_format.h: the one scanner of the checkpoint header's limits, shared by the
// checkpoint reader and ImportSession. Results must not depend on how the bytes are split.
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "session/checkpoint_format.h"

namespace ttt::session {
namespace {

using ::testing::HasSubstr;

std::string Le64(uint64_t n) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out;
}

// A file: the length, `header`, then `data`.
std::string File(const std::string& header, const std::string& data = "") {
  return Le64(header.size()) + header + data;
}

// Feeds `bytes` in pieces of `piece` bytes; the first error, or OK.
absl::Status FeedInPieces(const std::string& bytes, size_t piece) {
  CheckpointHeaderScanner scanner;
  for (size_t at = 0; at < bytes.size(); at += piece) {
    absl::Status st = scanner.Feed(std::string_view(bytes).substr(at, piece));
    if (!st.ok()) return st;
  }
  return absl::OkStatus();
}

// The status for `bytes`, checked to be the same for every split.
absl::Status Scan(const std::string& bytes) {
  const absl::Status whole = FeedInPieces(bytes, bytes.size() + 1);
  for (size_t piece : {1, 2, 3, 7, 8, 9, 64}) {
    const absl::Status split = FeedInPieces(bytes, piece);
    EXPECT_EQ(split.code(), whole.code()) << "pieces of " << piece;
    EXPECT_EQ(split.message(), whole.message()) << "pieces of " << piece;
  }
  return whole;
}

TEST(CheckpointFormatTest, ACheckpointShapedHeaderPasses) {
  const std::string header = R"({"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
                             R"("__metadata__":{"tttserve.format":"tttserve-checkpoint-2"}})";
  EXPECT_TRUE(Scan(File(header, std::string(24, '['))).ok());  // data is not JSON
  CheckpointHeaderScanner scanner;
  ASSERT_TRUE(scanner.Feed(File(header)).ok());
  EXPECT_EQ(scanner.header_bytes(), header.size());
}

TEST(CheckpointFormatTest, NestingBeyondTheLimitIsInvalidArgument) {
  auto nested = [](int depth) {
    return File("{\"a\":" + std::string(depth - 1, '[') + std::string(depth - 1, ']') + "}");
  };
  EXPECT_TRUE(Scan(nested(kMaxCheckpointHeaderDepth)).ok());
  const absl::Status deeper = Scan(nested(kMaxCheckpointHeaderDepth + 1));
  EXPECT_EQ(deeper.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(deeper.message()), HasSubstr("nests objects or arrays more than 4 deep"));
  EXPECT_EQ(Scan(nested(50000)).code(), absl::StatusCode::kInvalidArgument);
}

TEST(CheckpointFormatTest, BracketsInsideStringsDoNotNest) {
  const std::string header = R"({"__metadata__":{"k":"[[[[{{{{ \" [[[[ \\"}})";
  EXPECT_TRUE(Scan(File(header)).ok());
  // An escaped quote does not end the string; the brackets after it are still inside.
  EXPECT_TRUE(Scan(File(R"({"a\"[[[[[":"x"})")).ok());
}

TEST(CheckpointFormatTest, AnOversizeHeaderIsRefusedAfterEightBytes) {
  CheckpointHeaderScanner scanner;
  const absl::Status st = scanner.Feed(Le64(kMaxCheckpointHeaderBytes + 1));
  EXPECT_EQ(st.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(st.message()), HasSubstr("header of 1048577 bytes; the limit is"));
  EXPECT_TRUE(Scan(Le64(kMaxCheckpointHeaderBytes) + "{").ok());  // at the limit: so far so good
}

TEST(CheckpointFormatTest, BytesThatAreNoSafetensorsFileAreDataLoss) {
  const absl::Status st = Scan(File("[1,2]"));
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(st.message()), HasSubstr("not a ttt-serve checkpoint"));
  EXPECT_TRUE(Scan(std::string("\x05\0\0", 3)).ok());  // too short to judge yet
  // Text is not read as a huge header length when its ninth byte came with the first eight.
  CheckpointHeaderScanner scanner;
  EXPECT_EQ(scanner.Feed("this is no checkpoint").code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace ttt::session
