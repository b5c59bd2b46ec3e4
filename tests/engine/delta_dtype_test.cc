// ModelConfig::ttt_delta_dtype = bfloat16 (engine/internal/fast_weight.h): each active session's
// dense delta stored in bf16, every update accumulated in fp32 and rounded once as it is stored,
// every read widened to fp32. Held against an independent reference: the fp32 model with its
// deltas rounded to bf16 by plain LibTorch ops after every Ingest call (every chunk, for decode
// steps and short pieces), to the bit; the splits, sequential and parallel ingest agree to bf16
// rounding; checkpoints restore the bits; compaction leaves the deltas alone; bad values are
// refused naming the key.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "engine/compact.h"
#include "engine/config.h"
#include "engine/internal/chunk_scan.h"
#include "engine/internal/model_tensors.h"
#include "engine/internal/sequence_tensors.h"
#include "engine/model.h"
#include "engine/sequence.h"
#include "engine/testing/random_weights.h"
#include "engine/testing/tiny_config.h"

namespace ttt::engine {
namespace {

// The clip and cap biting (both roundings' paths: the cap's factor comes from the fp32 sum).
ModelConfig Config() { return testing::TinyCappedConfig(); }

std::unique_ptr<Model> MakeModel(const std::string& delta_dtype) {
  const ModelConfig config = Config();
  auto model =
      ModelFromWeights(config, testing::RandomWeights(config), {.ttt_delta_dtype = delta_dtype});
  EXPECT_TRUE(model.ok()) << model.status();
  return std::move(model).value();
}

std::vector<int32_t> RandomTokens(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> tokens(n);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % Config().vocab_size);
  return tokens;
}

// Ingests `tokens` in pieces of the given sizes (cycled), calling `after_call` after each.
template <typename AfterCall>
IngestLogProbs IngestInPieces(const Model& model, SequenceState& state,
                              const std::vector<int32_t>& tokens, const std::vector<int>& pieces,
                              AfterCall after_call) {
  IngestLogProbs all;
  size_t at = 0;
  for (size_t p = 0; at < tokens.size(); ++p) {
    const size_t n = std::min<size_t>(pieces[p % pieces.size()], tokens.size() - at);
    std::vector<IngestItem> items{{&state, {tokens.begin() + at, tokens.begin() + at + n}}};
    auto result = model.Ingest(absl::MakeSpan(items));
    EXPECT_TRUE(result.ok()) << result.status();
    all.insert(all.end(), result.value()[0].begin(), result.value()[0].end());
    after_call(state);
    at += n;
  }
  return all;
}

void RoundDeltasToBf16(SequenceState& state) {
  for (TttLayerState& slot : TensorsOf(state).ttt) {
    slot.delta = slot.delta.to(at::kBFloat16).to(at::kFloat);
  }
}

double MaxDiff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kFloat) - b.to(at::kFloat)).abs().max().item<double>();
}

// The piece patterns: decode steps, short pieces (inside a chunk or across its end), long pieces
// that complete several chunks (the chunk scan), and a mix. The chunk is 6.
const std::vector<std::vector<int>> kPatterns = {{1}, {4}, {13}, {1, 4, 13, 2, 31}};

TEST(DeltaDtypeTest, Bf16DeltasAreTheFloatPathRoundedAfterEachCallToTheBit) {
  auto bf16 = MakeModel("bfloat16");
  auto f32 = MakeModel("float32");
  const std::vector<int32_t> tokens = RandomTokens(60, 1);
  for (const std::vector<int>& pieces : kPatterns) {
    SequenceState got = bf16->NewSequence(), reference = f32->NewSequence();
    const IngestLogProbs lp = IngestInPieces(*bf16, got, tokens, pieces, [](SequenceState&) {});
    const IngestLogProbs expected =
        IngestInPieces(*f32, reference, tokens, pieces, RoundDeltasToBf16);
    ASSERT_EQ(lp.size(), expected.size());
    for (size_t i = 1; i < lp.size(); ++i) {
      ASSERT_EQ(lp[i], expected[i]) << "token " << i << ", first piece " << pieces[0];
    }
    EXPECT_EQ(got.chunks_applied(), 10);
    for (size_t k = 0; k < TensorsOf(got).ttt.size(); ++k) {
      const at::Tensor& delta = TensorsOf(got).ttt[k].delta;
      EXPECT_EQ(delta.scalar_type(), at::kBFloat16);
      EXPECT_TRUE(at::equal(delta.to(at::kFloat), TensorsOf(reference).ttt[k].delta))
          << "layer slot " << k << ", first piece " << pieces[0];
      EXPECT_GT(delta.to(at::kFloat).norm().item<double>(), 0.1) << "the chunks were folded";
    }
    EXPECT_EQ(MaxDiff(TensorsOf(got).last_logits, TensorsOf(reference).last_logits), 0.0);
  }
}

TEST(DeltaDtypeTest, SplitsAndSequentialAgreeWithParallelToBf16Rounding) {
  auto model = MakeModel("bfloat16");
  const std::vector<int32_t> tokens = RandomTokens(45, 2);
  SequenceState whole = model->NewSequence();
  std::vector<IngestItem> items{{&whole, tokens}};
  const IngestLogProbs expected = model->Ingest(absl::MakeSpan(items)).value()[0];

  std::vector<SequenceState> states;
  std::vector<IngestLogProbs> results;
  for (const std::vector<int>& pieces : kPatterns) {
    states.push_back(model->NewSequence());
    results.push_back(IngestInPieces(*model, states.back(), tokens, pieces, [](SequenceState&) {}));
  }
  states.push_back(model->NewSequence());
  items = {{&states.back(), tokens}};
  results.push_back(model->Ingest(absl::MakeSpan(items), IngestMode::kSequential).value()[0]);

  for (size_t s = 0; s < states.size(); ++s) {
    ASSERT_EQ(results[s].size(), expected.size());
    for (size_t i = 1; i < expected.size(); ++i) {
      EXPECT_NEAR(results[s][i], expected[i], 2e-3) << "split " << s << ", token " << i;
    }
    EXPECT_EQ(states[s].chunks_applied(), 7);
    for (size_t k = 0; k < TensorsOf(whole).ttt.size(); ++k) {
      const at::Tensor& a = TensorsOf(states[s]).ttt[k].delta;
      const at::Tensor& b = TensorsOf(whole).ttt[k].delta;
      EXPECT_EQ(a.scalar_type(), at::kBFloat16);
      // A few bf16 steps (2^-8 relative each) of the delta's largest entries: the roundings
      // differ (per chunk for decode steps, once per call for the whole).
      EXPECT_LT(MaxDiff(a, b), 0.02 * b.to(at::kFloat).abs().max().item<double>())
          << "split " << s << ", layer slot " << k;
    }
  }
}

TEST(DeltaDtypeTest, TheChunkScanRoundsABf16DeltaOnceAtTheEnd) {
  at::manual_seed(3);
  const int64_t d = 8, f = 12, chunk = 4, pending = 2, complete = 3;
  const at::Tensor z = at::randn({pending + complete * chunk + 1, f});
  const at::Tensor targets = at::randn({complete, chunk, d});
  const internal::FoldParams params{.eta = 0.3, .clip = 2.0, .cap = 1.5};
  const at::Tensor start = (at::randn({d, f}) * 0.2).to(at::kBFloat16);
  for (const bool in_place : {true, false}) {
    at::Tensor delta = start.clone(), reference = start.to(at::kFloat);
    const at::Tensor term =
        internal::DenseSegmentTerms(delta, z, targets, pending, chunk, params, in_place, 8);
    const at::Tensor expected =
        internal::DenseSegmentTerms(reference, z, targets, pending, chunk, params, true, 8);
    EXPECT_TRUE(at::equal(term, expected));
    EXPECT_EQ(delta.scalar_type(), at::kBFloat16);
    EXPECT_TRUE(at::equal(delta, reference.to(at::kBFloat16)));
    EXPECT_FALSE(at::equal(delta, start)) << "the chunks were folded";
  }
}

TEST(DeltaDtypeTest, CheckpointsRestoreTheBitsAndCompactionLeavesTheDeltas) {
  auto model = MakeModel("bfloat16");
  SequenceState state = model->NewSequence();
  IngestInPieces(*model, state, RandomTokens(20, 4), {7}, [](SequenceState&) {});
  auto bytes = EncodeSequence(state, state.Metadata());
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  auto restored = model->RestoreSequence(*bytes, "test");
  ASSERT_TRUE(restored.ok()) << restored.status();
  for (size_t k = 0; k < TensorsOf(state).ttt.size(); ++k) {
    const at::Tensor& back = TensorsOf(*restored).ttt[k].delta;
    EXPECT_EQ(back.scalar_type(), at::kBFloat16);
    EXPECT_TRUE(at::equal(back, TensorsOf(state).ttt[k].delta));
  }

  std::vector<const void*> before;
  for (const TttLayerState& slot : TensorsOf(state).ttt) before.push_back(slot.delta.data_ptr());
  SequenceState* states[] = {&state};
  CompactStates(states, {});
  EXPECT_FALSE(TensorsOf(state).compact_deltas) << "nothing to compact: the deltas are bf16";
  for (size_t k = 0; k < before.size(); ++k) {
    EXPECT_EQ(TensorsOf(state).ttt[k].delta.data_ptr(), before[k]);
  }
}

TEST(DeltaDtypeTest, Float32IsTheDefault) {
  const ModelConfig config = Config();
  auto model = ModelFromWeights(config, testing::RandomWeights(config), {});
  ASSERT_TRUE(model.ok());
  SequenceState state = (*model)->NewSequence();
  EXPECT_EQ(TensorsOf(state).ttt[0].delta.scalar_type(), at::kFloat);
  EXPECT_EQ(ParseModelConfig(ModelConfigToJson(config))->ttt_delta_dtype, TttDeltaDtype::kFloat32);
  EXPECT_EQ(ModelConfigToJson(config).find("ttt_delta_dtype"), std::string::npos)
      << "an fp32 config's text (and fingerprint) is unchanged";
}

TEST(DeltaDtypeTest, TheConfigKeyRoundTripsAndSetsTheStorage) {
  ModelConfig config = Config();
  config.ttt_delta_dtype = TttDeltaDtype::kBFloat16;
  auto parsed = ParseModelConfig(ModelConfigToJson(config));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->ttt_delta_dtype, TttDeltaDtype::kBFloat16);
  auto model = ModelFromWeights(*parsed, testing::RandomWeights(*parsed), {});
  ASSERT_TRUE(model.ok());
  EXPECT_EQ(TensorsOf((*model)->NewSequence()).ttt[0].delta.scalar_type(), at::kBFloat16);
  auto overridden =
      ModelFromWeights(*parsed, testing::RandomWeights(*parsed), {.ttt_delta_dtype = "float32"});
  ASSERT_TRUE(overridden.ok());
  EXPECT_EQ(TensorsOf((*overridden)->NewSequence()).ttt[0].delta.scalar_type(), at::kFloat);
}

TEST(DeltaDtypeTest, BadValuesAreRefusedNamingTheKey) {
  std::string json = ModelConfigToJson(Config());
  json.insert(json.find('{') + 1, "\"ttt_delta_dtype\": \"float16\",");
  auto bad = ParseModelConfig(json, "cfg.json");
  ASSERT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("cfg.json: \"ttt_delta_dtype\" \"float16\""),
            std::string::npos)
      << bad.status();
  EXPECT_NE(bad.status().message().find("\"bfloat16\""), std::string::npos) << bad.status();

  std::string number = ModelConfigToJson(Config());
  number.insert(number.find('{') + 1, "\"ttt_delta_dtype\": 16,");
  auto not_string = ParseModelConfig(number);
  ASSERT_EQ(not_string.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(not_string.status().message().find("ttt_delta_dtype"), std::string::npos)
      << not_string.status();

  const ModelConfig config = Config();
  auto model =
      ModelFromWeights(config, testing::RandomWeights(config), {.ttt_delta_dtype = "bf16"});
  ASSERT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(model.status().message().find("ttt_delta_dtype \"bf16\" is not a delta dtype"),
            std::string::npos)
      << model.status();
}

}  // namespace
}  // namespace ttt::engine
