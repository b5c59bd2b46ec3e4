// The reason the tokenizer reads SentencePiece models natively: a process that links the
// server's libprotobuf (3.21) must be able to load the shipped default model's tokenizer. With
// Debian's libsentencepiece (which carries its own protobuf 3.14) this process died at static
// initialization or in protobuf's version check. This binary links both the tokenizer and
// libprotobuf and uses both.
#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>

#include <filesystem>
#include <memory>

#include "gtest/gtest.h"
#include "tokenizer/tokenizer.h"

namespace ttt::tokenizer {
namespace {

TEST(TokenizerProtobufCoexistTest, LoadsDefaultModelAlongsideLibprotobuf) {
  // Exercise libprotobuf: a descriptor round trip through the generated descriptor.proto code.
  google::protobuf::FileDescriptorProto file;
  google::protobuf::FileDescriptorProto::descriptor()->file()->CopyTo(&file);
  EXPECT_EQ(file.name(), "google/protobuf/descriptor.proto");
  EXPECT_FALSE(file.SerializeAsString().empty());

  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer =
      Tokenizer::Load(std::filesystem::path(TTT_SOURCE_DIR) / "models/ttt-brown");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  absl::StatusOr<std::vector<int32_t>> ids = (*tokenizer)->Encode("The jury said it was fine.");
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_FALSE(ids->empty());
  EXPECT_EQ((*tokenizer)->Decode(*ids), "The jury said it was fine.");
  EXPECT_EQ((*tokenizer)->bos_id(), 1);
  EXPECT_EQ((*tokenizer)->eos_id(), 2);
}

}  // namespace
}  // namespace ttt::tokenizer
