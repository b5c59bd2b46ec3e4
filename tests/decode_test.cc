// engine/decode.h against the golden llama fixture (TTT_GOLDEN_DIR): the decode step and the
// vocabulary rule that the session layer calls instead of touching tensors.
#include "engine/decode.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>

#include "engine/model.h"

namespace ttt::engine {
namespace {

std::unique_ptr<Model> Golden() {
  const char* dir = std::getenv("TTT_GOLDEN_DIR");
  auto model = Model::Load(std::filesystem::path(dir ? dir : "golden") / "llama");
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? std::move(*model) : nullptr;
}

TEST(DecodeTest, NothingToContinueOnAFreshState) {
  auto model = Golden();
  ASSERT_NE(model, nullptr);
  SequenceState state = model->NewSequence();
  Sampler sampler(SamplingParams{});
  EXPECT_FALSE(HasNextTokenLogits(state));
  auto next = DecodeNext(state, sampler);
  EXPECT_EQ(next.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(next.status().message().find("no context"), std::string::npos) << next.status();
}

TEST(DecodeTest, GreedyTakesTheArgmaxWithItsLogProbability) {
  auto model = Golden();
  ASSERT_NE(model, nullptr);
  SequenceState state = model->NewSequence();
  IngestItem item{&state, {5, 9, 17, 4}};
  ASSERT_TRUE(model->Ingest(absl::MakeSpan(&item, 1)).ok());
  ASSERT_TRUE(HasNextTokenLogits(state));
  SamplingParams greedy;
  greedy.temperature = 0;
  Sampler sampler(greedy);
  auto next = DecodeNext(state, sampler);
  ASSERT_TRUE(next.ok()) << next.status();
  at::Tensor logp = at::log_softmax(state.last_logits.to(at::kFloat), 0);
  EXPECT_EQ(next->token, logp.argmax().item<int64_t>());
  EXPECT_FLOAT_EQ(next->logprob, logp[next->token].item<float>());
  EXPECT_LE(next->logprob, 0.0f);
  // The state is unchanged by a decode step.
  EXPECT_EQ(state.position, 4);
}

TEST(DecodeTest, ValidateTokensNamesTheFirstTokenOutsideTheVocabulary) {
  ModelConfig config;
  config.vocab_size = 10;
  EXPECT_TRUE(ValidateTokens(config, {0, 9}).ok());
  absl::Status bad = ValidateTokens(config, std::vector<int32_t>{1, 10, -1});
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.message().find("token id 10 at index 1 is outside the vocabulary [0, 10)"),
            std::string::npos)
      << bad;
}

}  // namespace
}  // namespace ttt::engine
