// Compact idle states (engine/compact.h): compact then expand rounds each value to bf16 (a cache:
// or int8 with a scale per row) once and nothing more, a compacted state then scores within the
// bound that rounding allows (int8: exactly as a cache quantized by hand), forks never see each
// other's compaction (a buffer shared with a state outside the set stays), and the bytes held
// show the saving.
#include "engine/compact.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <set>
#include <tuple>

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
constexpr KvCompaction kCompactCaches[] = {KvCompaction::kBf16, KvCompaction::kInt8};

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
  for (KvCompaction kv_cache : {KvCompaction::kOff, KvCompaction::kBf16}) {
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
      const bool rounded = name.find(".delta") != std::string::npos ||
                           (kv_cache == KvCompaction::kBf16 && name.rfind("cache.", 0) == 0);
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
// rounding of the deltas (and caches; or int8's of the caches) moves a log-probability on this
// random model (measured: 3e-4 with the deltas alone, 9e-3 with bf16 caches too, 1.1e-2 with
// int8 caches; the bounds leave room for other seeds).
TEST(CompactTest, ACompactedThenExpandedStateScoresWithinTheBound) {
  auto model = MakeModel();
  for (KvCompaction kv_cache : {KvCompaction::kOff, KvCompaction::kBf16, KvCompaction::kInt8}) {
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
    EXPECT_LT(worst, kv_cache == KvCompaction::kOff ? 5e-3 : 5e-2)
        << "kv_cache " << static_cast<int>(kv_cache);
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
    for (KvCompaction kv_cache : kCompactCaches) {
      const CompactResult done = CompactStates(set, {.kv_cache = kv_cache});
      EXPECT_EQ(done.states, 0);
      EXPECT_EQ(done.bytes_before, 0);
      EXPECT_FALSE(IsCompact(fork));
      EXPECT_EQ(DistinctBytes({&parent, &fork}), together);
      ExpectBitIdentical(parent, parent_before);
      ExpectBitIdentical(fork, parent_before);
    }
  }

  SetForkIncrements(false);  // the fork's first write copies the delta: one of its own
  SequenceState writer = parent.Fork();
  Ingest(*model, writer, Tokens(12, 7));  // two chunks
  const CompactResult done = CompactStates({&writer}, {.kv_cache = KvCompaction::kInt8});
  SetForkIncrements(true);
  EXPECT_EQ(done.states, 1);
  EXPECT_GE(done.bytes_before - done.bytes_after, DeltaBytes(model->config()) / 2);
  EXPECT_FALSE(IsCompact(parent));
  ExpectBitIdentical(parent, parent_before);
  ExpandState(writer);
  Ingest(*model, writer, Tokens(12, 8));
  ExpectBitIdentical(parent, parent_before);
}

// A fork of a compact state holds the same int8 rows and scales; expanding it puts fresh fp32
// buffers in the fork alone, and its parent's compact copy (then its expansion) stays the same.
TEST(CompactTest, AForkOfAnInt8CompactStateExpandsAlone) {
  auto model = MakeModel();
  SequenceState parent = model->NewSequence();
  Ingest(*model, parent, Tokens(40, 12));
  CompactStates({&parent}, {.kv_cache = KvCompaction::kInt8});
  const SequenceState compact_before = parent.Clone();
  SequenceState fork = parent.Fork();
  ASSERT_TRUE(ExpandState(fork));
  EXPECT_TRUE(IsCompact(parent));
  const LayerCache& c = TensorsOf(parent).cache[0];
  EXPECT_EQ(c.keys.scalar_type(), at::kChar);
  EXPECT_TRUE(at::equal(c.keys, TensorsOf(compact_before).cache[0].keys));
  EXPECT_TRUE(at::equal(c.keys_scale, TensorsOf(compact_before).cache[0].keys_scale));
  Ingest(*model, fork, Tokens(9, 13));
  EXPECT_TRUE(at::equal(c.values, TensorsOf(compact_before).cache[0].values));
  ASSERT_TRUE(ExpandState(parent));
  SequenceState expanded_before = compact_before.Clone();
  ExpandState(expanded_before);
  ExpectBitIdentical(parent, expanded_before);
}

TEST(CompactTest, AFactoredForksIncrementsAndSharedBaseStay) {
  SetForkIncrements(true);
  auto model = MakeModel();
  SequenceState parent = model->NewSequence();
  Ingest(*model, parent, Tokens(36, 8));
  SequenceState fork = parent.Fork();
  Ingest(*model, fork, Tokens(12, 9));  // two increments on the shared base
  const SequenceState fork_before = fork.Clone();
  EXPECT_EQ(CompactStates({&fork}, {.kv_cache = KvCompaction::kOff}).states, 0);
  ExpectBitIdentical(fork, fork_before);
}

// A state encoded while compact restores as the fp32 state it stands for.
TEST(CompactTest, ACompactStatesEncodingRestoresTheExpandedState) {
  auto model = MakeModel();
  for (KvCompaction kv_cache : kCompactCaches) {
    SequenceState state = model->NewSequence();
    Ingest(*model, state, Tokens(40, 10));
    CompactStates({&state}, {.kv_cache = kv_cache});
    auto bytes = EncodeSequence(state, state.Metadata());
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    auto restored = model->RestoreSequence(*bytes, "compact");
    ASSERT_TRUE(restored.ok()) << restored.status();
    ExpandState(state);
    ExpectBitIdentical(*restored, state);
    const std::vector<int32_t> probe = Tokens(9, 11);
    EXPECT_EQ(Ingest(*model, *restored, probe), Ingest(*model, state, probe));
  }
}

// The int8 rows of a cache as this test computes them, apart from engine/compact.cc: per row of
// head_dim values, s = max |x| / 127 and x -> round(x / s) * s (half to even, as the CPU's
// default rounding; an all-zero row stays zero).
at::Tensor QuantizedByHand(const at::Tensor& rows) {
  const at::Tensor in = rows.contiguous();
  at::Tensor out = at::empty_like(in);
  const int64_t width = in.size(-1), count = in.numel() / width;
  const float* x = in.data_ptr<float>();
  float* y = out.data_ptr<float>();
  for (int64_t r = 0; r < count; ++r, x += width, y += width) {
    float absmax = 0;
    for (int64_t i = 0; i < width; ++i) absmax = std::max(absmax, std::fabs(x[i]));
    const float scale = absmax / 127.0f;
    for (int64_t i = 0; i < width; ++i) {
      y[i] = scale == 0 ? 0.0f : std::nearbyint(x[i] / scale) * scale;
    }
  }
  return out;
}

// int8 with a scale per row: each value comes back within half its row's scale (and fp32's
// rounding of the product), the cache bytes are about a quarter, the deltas go to bf16 as with
// bf16 caches, a second round trip loses nothing more, and the state then scores exactly as one
// whose cache was quantized by hand.
TEST(CompactTest, Int8CachesRoundEachRowToItsScaleOnce) {
  auto model = MakeModel();
  SequenceState state = model->NewSequence();
  Ingest(*model, state, Tokens(40, 14));
  const SequenceState original = state.Clone();
  const int64_t held = state.HeldBytes();
  const CompactResult done = CompactStates({&state}, {.kv_cache = KvCompaction::kInt8});
  EXPECT_EQ(done.states, 1);
  EXPECT_EQ(state.HeldBytes(), held - (done.bytes_before - done.bytes_after));
  for (size_t l = 0; l < TensorsOf(state).cache.size(); ++l) {
    const LayerCache& c = TensorsOf(state).cache[l];
    const LayerCache& want = TensorsOf(original).cache[l];
    ASSERT_EQ(c.keys.scalar_type(), at::kChar);
    ASSERT_EQ(c.values_scale.sizes(),
              (std::vector<int64_t>{want.values.size(0), want.values.size(1), 1}));
    EXPECT_LE(c.keys.abs().max().item<int>(), 127);
    for (const auto& [q, scale, fp32] : {std::tuple{c.keys, c.keys_scale, want.keys},
                                         std::tuple{c.values, c.values_scale, want.values}}) {
      const at::Tensor error = (q.to(at::kFloat) * scale - fp32).abs();
      const at::Tensor excess = error - scale * 0.5 - fp32.abs() * std::ldexp(1.0, -23);
      EXPECT_LE(excess.max().item<double>(), 0.0) << "layer " << l;
      EXPECT_GT(error.max().item<double>(), 0.0) << "layer " << l;  // it did round
      // The scale is the row's absmax / 127: the largest value is exact.
      EXPECT_TRUE(at::allclose(scale * 127, fp32.abs().amax(-1, true), 1e-6, 0)) << "layer " << l;
    }
  }
  SequenceState reference = original.Clone();
  for (LayerCache& c : TensorsOf(reference).cache) {
    c.keys = QuantizedByHand(c.keys);
    c.values = QuantizedByHand(c.values);
  }
  for (TttLayerState& t : TensorsOf(reference).ttt) {
    t.delta = t.delta.to(at::kBFloat16).to(at::kFloat);
  }
  ASSERT_TRUE(ExpandState(state));
  ExpectBitIdentical(state, reference);
  const SequenceState once = state.Clone();
  CompactStates({&state}, {.kv_cache = KvCompaction::kInt8});
  ExpandState(state);
  ExpectBitIdentical(state, once);
  const std::vector<int32_t> probe = Tokens(17, 15);
  EXPECT_EQ(Ingest(*model, state, probe), Ingest(*model, reference, probe));
}

// An all-zero row has scale 0 and stays zero (no division by it).
TEST(CompactTest, Int8KeepsAnAllZeroRowZero) {
  auto model = MakeModel();
  SequenceState state = model->NewSequence();
  Ingest(*model, state, Tokens(10, 16));
  LayerCache& c = TensorsOf(state).cache[0];
  c.values = c.values.clone();
  c.values.select(1, 3).zero_();
  const at::Tensor want = c.values.clone();
  CompactStates({&state}, {.kv_cache = KvCompaction::kInt8});
  EXPECT_EQ(c.values_scale.select(1, 3).abs().max().item<float>(), 0.0f);
  ExpandState(state);
  EXPECT_TRUE(c.values.select(1, 3).eq(0).all().item<bool>());
  EXPECT_TRUE(c.values.isfinite().all().item<bool>());
  EXPECT_LE((c.values - want).abs().max().item<float>(), want.abs().max().item<float>() / 127);
}

TEST(CompactTest, KvCompactionNames) {
  EXPECT_EQ(KvCompactionNamed("off"), KvCompaction::kOff);
  EXPECT_EQ(KvCompactionNamed("bf16"), KvCompaction::kBf16);
  EXPECT_EQ(KvCompactionNamed("int8"), KvCompaction::kInt8);
  EXPECT_EQ(KvCompactionNamed("fp8"), std::nullopt);
  EXPECT_EQ(KvCompactionNamed("true"), std::nullopt);
}

}  // namespace
}  // namespace ttt::engine
