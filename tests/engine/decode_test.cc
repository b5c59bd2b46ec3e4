// engine/decode.h against the golden llama fixture (TTT_GOLDEN_DIR): the decode step and the
// vocabulary rule that the session layer calls instead of touching tensors.
#include "engine/decode.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <vector>

#include "engine/internal/sequence_tensors.h"
#include "engine/model.h"
#include "tests/testing/dirs.h"

namespace ttt::engine {
namespace {

std::unique_ptr<Model> Golden() {
  auto model = Model::Load(ttt::testing::GoldenLlama());
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
  at::Tensor logp = at::log_softmax(TensorsOf(state).last_logits.to(at::kFloat), 0);
  EXPECT_EQ(next->token, logp.argmax().item<int64_t>());
  EXPECT_FLOAT_EQ(next->logprob, logp[next->token].item<float>());
  EXPECT_LE(next->logprob, 0.0f);
  // The state is unchanged by a decode step.
  EXPECT_EQ(state.position(), 4);
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

// Sampler (engine/sampler.h): the drawn frequencies follow the distribution each setting
// defines. Seeded, so these counts are the same on every run.
std::vector<int64_t> Counts(const SamplingParams& params, const std::vector<float>& logits,
                            int draws) {
  Sampler sampler(params);
  const at::Tensor tensor = at::tensor(logits, at::kFloat);
  const absl::Span<const float> t(tensor.data_ptr<float>(), tensor.numel());
  std::vector<int64_t> counts(logits.size(), 0);
  for (int i = 0; i < draws; ++i) ++counts.at(sampler.Sample(t));
  return counts;
}

// softmax(logits / temperature) over `ids` (the others 0).
std::vector<double> Softmax(const std::vector<float>& logits, double temperature,
                            const std::vector<int>& ids) {
  std::vector<double> p(logits.size(), 0.0);
  double total = 0;
  for (int id : ids) total += p[id] = std::exp(logits[id] / temperature);
  for (double& x : p) x /= total;
  return p;
}

constexpr int kDraws = 40000;  // 4 standard deviations of a frequency: <= 0.01

void ExpectFrequencies(const std::vector<int64_t>& counts, const std::vector<double>& p) {
  for (size_t id = 0; id < p.size(); ++id) {
    if (p[id] == 0) {
      EXPECT_EQ(counts[id], 0) << "id " << id << " is outside the candidates";
    } else {
      EXPECT_NEAR(static_cast<double>(counts[id]) / kDraws, p[id], 0.01) << "id " << id;
    }
  }
}

const std::vector<float> kLogits = {2.0f, 1.0f, 0.0f, -1.0f, 3.0f, 0.5f, -2.0f, 1.5f};

TEST(SamplerTest, TemperatureDrawsFollowTheSoftmax) {
  SamplingParams params;
  params.temperature = 0.7;
  params.seed = 11;
  ExpectFrequencies(Counts(params, kLogits, kDraws),
                    Softmax(kLogits, 0.7, {0, 1, 2, 3, 4, 5, 6, 7}));
}

TEST(SamplerTest, TopKDrawsOnlyTheKBest) {
  SamplingParams params;
  params.top_k = 3;  // ids 4 (3.0), 0 (2.0), 7 (1.5)
  params.seed = 12;
  ExpectFrequencies(Counts(params, kLogits, kDraws), Softmax(kLogits, 1.0, {4, 0, 7}));
}

TEST(SamplerTest, TopPKeepsTheSmallestPrefixThatReachesItsMass) {
  // Masses 0.4, 0.3, 0.2, 0.1 (ids 2, 0, 3, 1): top_p 0.65 keeps ids 2 and 0 (0.7).
  const std::vector<float> logits = {std::log(0.3f), std::log(0.1f), std::log(0.4f),
                                     std::log(0.2f)};
  SamplingParams params;
  params.top_p = 0.65;
  params.seed = 13;
  ExpectFrequencies(Counts(params, logits, kDraws), Softmax(logits, 1.0, {2, 0}));
}

// A nucleus wider than the first sorted prefix (64): 300 equal leaders in a vocabulary of 5000.
TEST(SamplerTest, ANucleusWiderThanTheFirstPrefixIsFound) {
  std::vector<float> logits(5000, -20.0f);
  for (int i = 0; i < 300; ++i) logits[7 + 16 * i] = 5.0f;
  SamplingParams params;
  params.top_p = 0.495;  // 148.5 leaders' mass: 149 of the 300, the lowest ids first (ties by id)
  params.seed = 14;
  constexpr int kFewer = 4000;
  const std::vector<int64_t> counts = Counts(params, logits, kFewer);
  int64_t inside = 0;
  for (int i = 0; i < 300; ++i) {
    const int64_t c = counts[7 + 16 * i];
    if (i < 149) {
      EXPECT_GT(c, 0) << "leader " << i;
      inside += c;
    } else {
      EXPECT_EQ(c, 0) << "leader " << i << " is past the nucleus";
    }
  }
  EXPECT_EQ(inside, kFewer);
}

TEST(SamplerTest, TheSameSeedDrawsTheSameTokens) {
  SamplingParams params;
  params.seed = 99;
  Sampler a(params), b(params);
  const at::Tensor tensor = at::tensor(kLogits, at::kFloat);
  const absl::Span<const float> t(tensor.data_ptr<float>(), tensor.numel());
  for (int i = 0; i < 200; ++i) EXPECT_EQ(a.Sample(t), b.Sample(t)) << "draw " << i;
}

}  // namespace
}  // namespace ttt::engine
