// Compact idle states (engine/compact.h): compact then expand rounds each value to bf16 once and
// nothing more, a compacted state then scores within the bound that rounding allows, forks never
// see each other's compaction (a buffer shared with a state outside the set stays), and the bytes
// held show the saving.
#include "engine/compact.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <set>

#include "engine/internal/fast_weight.h"
#include "engine/internal/model_tensors.h"
#include "engine/internal/sequence_tensors.h"
#include "engine/model.h"
#include "engine/testing/random_weights.h"
#include "engine/testing/tiny_config.h"

namespace ttt::engine {
namespace {

// bf16 keeps 8 significant bits: round to nearest is off by at most 2^-8 of the value.
constexpr double kBf16RelativeBound = 1.0 / 256;

std::unique_ptr<Model> MakeModel() {
  const ModelConfig config = testing::TinyCappedConfig();
  auto model = ModelFromWeights(config, testing::RandomWeights(config, {}), {});
  EXPECT_TRUE(model.ok()) << model.status();
  return std::move(model).value();
}

std::vector<int32_t> Tokens(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> tokens(n);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % 53);
  return tokens;
}

IngestLogProbs Ingest(const Model& model, SequenceState& state,
                      const std::vector<int32_t>& tokens) {
  std::vector<IngestItem> items{{&state, tokens}};
  auto got = model.Ingest(absl::MakeSpan(items));
  EXPECT_TRUE(got.ok()) << got.status();
  return got.ok() ? (*got)[0] : IngestLogProbs{};
}

void ExpectBitIdentical(const SequenceState& a, const SequenceState& b) {
  const NamedTensors ta = StateTensors(a), tb = StateTensors(b);
  ASSERT_EQ(ta.size(), tb.size());
  for (size_t i = 0; i < ta.size(); ++i) {
    EXPECT_TRUE(at::equal(ta[i].second, tb[i].second)) << ta[i].first;
  }
}

// Every element of `got` is within bf16's rounding of `want`'s (and not further).
void ExpectWithinBf16Rounding(const at::Tensor& got, const at::Tensor& want,
                              const std::string& what) {
  ASSERT_EQ(got.scalar_type(), at::kFloat) << what;
  const at::Tensor excess = (got - want).abs() - want.abs() * kBf16RelativeBound;
  EXPECT_LE(excess.max().item<double>(), 0.0) << what;
  // Rounded, not kept: some element moved (else the test would pass on a no-op).
  EXPECT_FALSE(at::equal(got, want)) << what;
}

int64_t DistinctBytes(const std::vector<const SequenceState*>& states) {
  std::set<uintptr_t> seen;
  int64_t bytes = 0;
  for (const SequenceState* s : states) {
    for (const HeldBuffer& b : s->HeldBuffers()) {
      if (seen.insert(b.identity).second) bytes += b.bytes;
    }
  }
  return bytes;
}

int64_t DeltaBytes(const ModelConfig& c) {
  return static_cast<int64_t>(c.ttt_layers.size()) * c.hidden_size * c.intermediate_size * 4;
}

TEST(CompactTest, CompactThenExpandRoundsEachValueToBf16Once) {
  auto model = MakeModel();
  for (bool kv_cache : {false, true}) {
    SequenceState state = model->NewSequence();
    Ingest(*model, state, Tokens(40, 1));  // mid-chunk: pending rows stay fp32
    const SequenceState original = state.Clone();
    const int64_t held = state.HeldBytes();
    const CompactResult done = CompactStates({&state}, {.kv_cache = kv_cache});
    EXPECT_EQ(done.states, 1);
    EXPECT_TRUE(IsCompact(state));
    EXPECT_GE(done.bytes_before - done.bytes_after, DeltaBytes(model->config()) / 2);
    EXPECT_EQ(state.HeldBytes(), held - (done.bytes_before - done.bytes_after));
    // What a checkpoint of it holds is fp32 already.
    const NamedTensors compact_tensors = StateTensors(state);
    ASSERT_TRUE(ExpandState(state));
    EXPECT_FALSE(IsCompact(state));
    EXPECT_FALSE(ExpandState(state));
    const NamedTensors got = StateTensors(state), want = StateTensors(original);
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) {
      const std::string& name = got[i].first;
      EXPECT_TRUE(at::equal(compact_tensors[i].second, got[i].second)) << name;
      const bool rounded =
          name.find(".delta") != std::string::npos || (kv_cache && name.rfind("cache.", 0) == 0);
      if (rounded) {
        ExpectWithinBf16Rounding(got[i].second, want[i].second, name);
      } else {
        EXPECT_TRUE(at::equal(got[i].second, want[i].second)) << name;
      }
    }
    // A second round trip loses nothing more: the bf16 values are exact in fp32.
    const SequenceState once = state.Clone();
    CompactStates({&state}, {.kv_cache = kv_cache});
    ExpandState(state);
    ExpectBitIdentical(state, once);
  }
}

// The scores after compact + expand, against the state never compacted: within what bf16's
// rounding of the deltas (and caches) moves a log-probability on this random model (measured:
// 3e-4 with the deltas alone, 9e-3 with the caches too; the bounds leave room for other seeds).
TEST(CompactTest, ACompactedThenExpandedStateScoresWithinTheBound) {
  auto model = MakeModel();
  for (bool kv_cache : {false, true}) {
    SequenceState state = model->NewSequence(), reference = model->NewSequence();
    const std::vector<int32_t> prefix = Tokens(36, 2), probe = Tokens(25, 3);
    Ingest(*model, state, prefix);
    Ingest(*model, reference, prefix);
    CompactStates({&state}, {.kv_cache = kv_cache});
    ExpandState(state);
    const IngestLogProbs got = Ingest(*model, state, probe);
    const IngestLogProbs want = Ingest(*model, reference, probe);
    ASSERT_EQ(got.size(), want.size());
    double worst = 0;
    for (size_t i = 0; i < got.size(); ++i)
      worst = std::max(worst, std::fabs(double(got[i]) - want[i]));
    EXPECT_LT(worst, kv_cache ? 5e-2 : 5e-3) << "kv_cache " << kv_cache;
    EXPECT_GT(worst, 0.0);  // it did round
  }
}

// A buffer states share is paid once: compacting it would cost a copy per holder used again,
// so it stays, whether the sharing states are compacted alone or together; a fork with a delta
// of its own is compacted alone while its parent, active, keeps its fp32 delta.
TEST(CompactTest, SharedBuffersStayAndAForkNeverSeesItsSiblingsCompaction) {
  auto model = MakeModel();
  SequenceState parent = model->NewSequence();
  Ingest(*model, parent, Tokens(36, 4));
  const SequenceState parent_before = parent.Clone();
  SequenceState fork = parent.Fork();
  const int64_t together = DistinctBytes({&parent, &fork});
  for (const std::vector<SequenceState*>& set :
       {std::vector<SequenceState*>{&fork}, std::vector<SequenceState*>{&parent, &fork}}) {
    const CompactResult done = CompactStates(set, {.kv_cache = true});
    EXPECT_EQ(done.states, 0);
    EXPECT_EQ(done.bytes_before, 0);
    EXPECT_FALSE(IsCompact(fork));
    EXPECT_EQ(DistinctBytes({&parent, &fork}), together);
    ExpectBitIdentical(parent, parent_before);
    ExpectBitIdentical(fork, parent_before);
  }

  SetForkIncrements(false);  // the fork's first write copies the delta: one of its own
  SequenceState writer = parent.Fork();
  Ingest(*model, writer, Tokens(12, 7));  // two chunks
  const CompactResult done = CompactStates({&writer}, {.kv_cache = false});
  SetForkIncrements(true);
  EXPECT_EQ(done.states, 1);
  EXPECT_GE(done.bytes_before - done.bytes_after, DeltaBytes(model->config()) / 2);
  EXPECT_FALSE(IsCompact(parent));
  ExpectBitIdentical(parent, parent_before);
  ExpandState(writer);
  Ingest(*model, writer, Tokens(12, 8));
  ExpectBitIdentical(parent, parent_before);
}

TEST(CompactTest, AFactoredForksIncrementsAndSharedBaseStay) {
  SetForkIncrements(true);
  auto model = MakeModel();
  SequenceState parent = model->NewSequence();
  Ingest(*model, parent, Tokens(36, 8));
  SequenceState fork = parent.Fork();
  Ingest(*model, fork, Tokens(12, 9));  // two increments on the shared base
  const SequenceState fork_before = fork.Clone();
  EXPECT_EQ(CompactStates({&fork}, {.kv_cache = false}).states, 0);
  ExpectBitIdentical(fork, fork_before);
}

// A state encoded while compact restores as the fp32 state it stands for.
TEST(CompactTest, ACompactStatesEncodingRestoresTheExpandedState) {
  auto model = MakeModel();
  SequenceState state = model->NewSequence();
  Ingest(*model, state, Tokens(40, 10));
  CompactStates({&state}, {.kv_cache = true});
  auto bytes = EncodeSequence(state, state.Metadata());
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  auto restored = model->RestoreSequence(*bytes, "compact");
  ASSERT_TRUE(restored.ok()) << restored.status();
  ExpandState(state);
  ExpectBitIdentical(*restored, state);
  const std::vector<int32_t> probe = Tokens(9, 11);
  EXPECT_EQ(Ingest(*model, *restored, probe), Ingest(*model, state, probe));
}

}  // namespace
}  // namespace ttt::engine
