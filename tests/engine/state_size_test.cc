// engine/state_size: the bound on a model's SequenceState holds for real states of the golden
// fixtures (the windowed Qwen3 one at its largest, the full-attention Llama one per cached
// token), and counts the tensors a state serialises to.
#include "engine/state_size.h"
#include "engine/internal/model_tensors.h"

#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <vector>

#include "absl/types/span.h"
#include "tests/testing/dirs.h"

namespace ttt::engine {
namespace {

std::filesystem::path Fixture(const char* name) { return ttt::testing::GoldenDir() / name; }

std::unique_ptr<Model> LoadFixture(const char* name) {
  auto model = Model::Load(Fixture(name));
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? std::move(*model) : nullptr;
}

// Ingests `n` tokens in pieces of 7 (so the unfinished chunk is mostly non-empty).
SequenceState Ingested(const Model& model, int n) {
  c10::InferenceMode guard;
  SequenceState state = model.NewSequence();
  for (int done = 0; done < n; done += 7) {
    IngestItem item{&state, {}};
    for (int i = done; i < std::min(n, done + 7); ++i) {
      item.tokens.push_back(3 + i % static_cast<int>(model.config().vocab_size - 3));
    }
    auto r = model.Ingest(absl::MakeSpan(&item, 1));
    EXPECT_TRUE(r.ok()) << r.status();
  }
  return state;
}

TEST(StateSizeTest, WindowedModelStateNeverExceedsTheBound) {
  auto model = LoadFixture("qwen3");
  ASSERT_NE(model, nullptr);
  const StateSizeBound bound = MaxStateSize(*model);
  ASSERT_TRUE(bound.max_cached_tokens.has_value());
  const int64_t largest = bound.BytesWith(*bound.max_cached_tokens);
  int64_t seen = 0;
  for (int n : {1, 11, 12, 13, 40, 101}) {
    const SequenceState state = Ingested(*model, n);
    EXPECT_LE(state.MemoryBytes(), largest) << n << " tokens";
    seen = std::max(seen, state.MemoryBytes());
    // Dense: a factored state adds three tensors per TTT layer (its increments).
    EXPECT_EQ(static_cast<int64_t>(StateTensors(state).size() + 3 * state.TttLayers().size()),
              bound.tensor_count);
  }
  // The bound is tight up to the unfinished chunk's rows (a full window is reached).
  EXPECT_GE(seen, largest - bound.fixed_bytes);
}

TEST(StateSizeTest, FullAttentionBoundGrowsPerCachedToken) {
  auto model = LoadFixture("llama");
  ASSERT_NE(model, nullptr);
  const StateSizeBound bound = MaxStateSize(*model);
  EXPECT_FALSE(bound.max_cached_tokens.has_value());
  const auto& c = model->config();
  EXPECT_EQ(bound.bytes_per_cached_token,
            c.num_hidden_layers * 2 * c.num_key_value_heads * c.head_dim * 4);
  for (int n : {1, 8, 45, 200}) {
    const SequenceState state = Ingested(*model, n);
    EXPECT_LE(state.MemoryBytes(), bound.BytesWith(n)) << n << " tokens";
    EXPECT_GT(state.MemoryBytes(), bound.BytesWith(n) - bound.fixed_bytes) << n << " tokens";
  }
}

// With bf16 deltas a state holds 2 bytes a delta value but its encoding (an export, a checkpoint)
// holds them widened to 4: the bound, which an import checks encoded bytes against, stays the
// fp32 model's, and the encodings of the two models' states are the same size.
TEST(StateSizeTest, BoundCountsTheEncodedF32DeltaOfABf16DeltaModel) {
  auto fp32 = LoadFixture("qwen3");
  auto bf16 = Model::Load(Fixture("qwen3"), {.ttt_delta_dtype = "bfloat16"});
  ASSERT_NE(fp32, nullptr);
  ASSERT_TRUE(bf16.ok()) << bf16.status();
  const StateSizeBound bound = MaxStateSize(**bf16);
  EXPECT_EQ(bound.fixed_bytes, MaxStateSize(*fp32).fixed_bytes);
  const auto& c = fp32->config();
  const int n = 40;  // past a chunk, so the deltas are live
  const SequenceState wide = Ingested(*fp32, n), narrow = Ingested(**bf16, n);
  const int64_t delta_values =
      static_cast<int64_t>(narrow.TttLayers().size()) * c.hidden_size * c.intermediate_size;
  ASSERT_GT(delta_values, 0);
  EXPECT_EQ(wide.MemoryBytes() - narrow.MemoryBytes(), 2 * delta_values);  // resident: 2 bytes
  auto wide_bytes = EncodeSequence(wide, wide.Metadata());
  auto narrow_bytes = EncodeSequence(narrow, narrow.Metadata());
  ASSERT_TRUE(wide_bytes.ok() && narrow_bytes.ok());
  EXPECT_EQ(narrow_bytes->size(), wide_bytes->size());  // encoded: 4 bytes, as the bound counts
  EXPECT_LE(narrow.MemoryBytes(), bound.BytesWith(*bound.max_cached_tokens));
}

}  // namespace
}  // namespace ttt::engine
