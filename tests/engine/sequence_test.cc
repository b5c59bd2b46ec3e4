// engine::SequenceState accounting against the golden llama fixture (TTT_GOLDEN_DIR): what a
// state holds is what it needs, so the session memory budget counts real memory.
#include "engine/sequence.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <random>

#include "engine/internal/sequence_tensors.h"
#include "engine/model.h"
#include "tests/testing/dirs.h"

namespace ttt::engine {
namespace {

TEST(SequenceTest, AStateHoldsOnlyTheBuffersItNeeds) {
  auto model = Model::Load(ttt::testing::GoldenLlama());
  ASSERT_TRUE(model.ok()) << model.status();
  const int64_t chunk = (*model)->config().ttt_chunk;
  ASSERT_GT(chunk, 0);
  std::mt19937 rng(1);
  std::vector<int32_t> tokens;
  for (int64_t i = 0; i < 3 * chunk + 5; ++i) {
    tokens.push_back(3 + static_cast<int32_t>(rng() % ((*model)->config().vocab_size - 3)));
  }
  SequenceState state = (*model)->NewSequence();
  IngestItem item{&state, tokens};  // three chunks complete in one call
  ASSERT_TRUE((*model)->Ingest(absl::MakeSpan(&item, 1)).ok());
  ASSERT_EQ(state.chunks_applied(), 3);
  // No delta is a view into a larger buffer of the call (each was once a slice of every
  // chunk's running sum: three times its size held per TTT layer).
  for (const TttLayerState& t : TensorsOf(state).ttt) {
    EXPECT_EQ(static_cast<int64_t>(t.delta.storage().nbytes()), t.delta.nbytes());
  }
  // Caches grown in place hold spare rows (at most about half again); a copy holds none.
  EXPECT_GE(state.HeldBytes(), state.MemoryBytes());
  EXPECT_LE(state.HeldBytes(), 2 * state.MemoryBytes());
  EXPECT_EQ(state.Clone().HeldBytes(), state.MemoryBytes());
  EXPECT_GT(state.MemoryBytes(), 0);
}

}  // namespace
}  // namespace ttt::engine
