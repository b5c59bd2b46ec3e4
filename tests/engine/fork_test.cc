// Copy-on-write forks (SequenceState::Fork, engine/internal/fast_weight.h): a fork shares its
// parent's buffers until one writes, neither ever sees the other's writes, a fork whose fast
// weights learn keeps low-rank increments on the shared base (and goes dense once they would cost
// more), and its results agree with a deep copy's within the contract's float tolerance.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <set>

#include "engine/internal/fast_weight.h"
#include "engine/internal/model_tensors.h"
#include "engine/internal/sequence_tensors.h"
#include "engine/internal/state_buffer.h"
#include "engine/model.h"
#include "engine/testing/random_weights.h"
#include "engine/testing/tiny_config.h"

namespace ttt::engine {
namespace {

// The factored increments are the default (SetForkIncrements, ttt-serve --fork_increments); most
// of these tests are about them, and a test that turns them off turns them on again.
class ForkIncrementsOn : public ::testing::Environment {
  void SetUp() override { SetForkIncrements(true); }
};
::testing::Environment* const kForkIncrementsOn =
    ::testing::AddGlobalTestEnvironment(new ForkIncrementsOn);

std::unique_ptr<Model> MakeModel(const ModelOptions& options = {}) {
  const ModelConfig config = testing::TinyCappedConfig();
  auto model = ModelFromWeights(config, testing::RandomWeights(config, {}), options);
  EXPECT_TRUE(model.ok()) << model.status();
  return std::move(model).value();
}

std::vector<int32_t> Tokens(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> tokens(n);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % 53);
  return tokens;
}

// Ingests `tokens` in pieces of `piece` (1: decode steps, the batched short-step path; more than
// 16: the long path) and returns their log-probabilities.
IngestLogProbs Ingest(const Model& model, SequenceState& state, const std::vector<int32_t>& tokens,
                      size_t piece) {
  IngestLogProbs all;
  for (size_t i = 0; i < tokens.size(); i += piece) {
    std::vector<IngestItem> items{
        {&state, std::vector<int32_t>(tokens.begin() + i,
                                      tokens.begin() + std::min(tokens.size(), i + piece))}};
    auto got = model.Ingest(absl::MakeSpan(items));
    EXPECT_TRUE(got.ok()) << got.status();
    if (got.ok()) all.insert(all.end(), (*got)[0].begin(), (*got)[0].end());
  }
  return all;
}

// Every state tensor (factored deltas materialised) equals the other state's, to the bit.
void ExpectBitIdentical(const SequenceState& a, const SequenceState& b) {
  const NamedTensors ta = StateTensors(a), tb = StateTensors(b);
  ASSERT_EQ(ta.size(), tb.size());
  EXPECT_EQ(a.position(), b.position());
  for (size_t i = 0; i < ta.size(); ++i) {
    EXPECT_TRUE(at::equal(ta[i].second, tb[i].second)) << ta[i].first;
  }
}

double MaxRelativeDiff(const at::Tensor& a, const at::Tensor& b) {
  return ((a - b).abs().max() / (b.abs().max() + 1e-30)).item<double>();
}

// Bytes of the buffers `state` holds that `other` does not.
int64_t OwnBytes(const SequenceState& state, const SequenceState& other) {
  std::set<uintptr_t> theirs;
  for (const HeldBuffer& b : other.HeldBuffers()) theirs.insert(b.identity);
  int64_t bytes = 0;
  for (const HeldBuffer& b : state.HeldBuffers()) {
    if (!theirs.count(b.identity)) bytes += b.bytes;
  }
  return bytes;
}

TEST(ForkTest, AThousandForksHoldTheParentsBuffersOnce) {
  auto model = MakeModel();
  SequenceState parent = model->NewSequence();
  Ingest(*model, parent, Tokens(40, 1), 40);
  std::vector<SequenceState> forks;
  for (int i = 0; i < 1000; ++i) forks.push_back(parent.Fork());
  std::set<uintptr_t> distinct;
  int64_t bytes = 0;
  for (const SequenceState* s : {&parent, &forks.front(), &forks.back()}) {
    for (const HeldBuffer& b : s->HeldBuffers()) {
      if (distinct.insert(b.identity).second) bytes += b.bytes;
    }
  }
  EXPECT_EQ(bytes, parent.HeldBytes());
  EXPECT_EQ(OwnBytes(forks.back(), parent), 0);
  EXPECT_EQ(forks.back().position(), 40);
  EXPECT_EQ(forks.back().DeltaNorms(), parent.DeltaNorms());
}

TEST(ForkTest, NeitherSideSeesTheOthersWritesOnAnyPath) {
  auto model = MakeModel();
  for (size_t piece : {size_t{1}, size_t{4}, size_t{25}}) {
    SequenceState parent = model->NewSequence();
    Ingest(*model, parent, Tokens(22, 2), 22);  // mid-chunk: pending rows are shared too
    const SequenceState parent_before = parent.Clone();
    SequenceState fork = parent.Fork();
    const SequenceState fork_before = fork.Clone();
    Ingest(*model, fork, Tokens(25, 3), piece);  // the fork writes: the parent stays
    ExpectBitIdentical(parent, parent_before);
    const SequenceState fork_after = fork.Clone();
    Ingest(*model, parent, Tokens(25, 4), piece);  // the parent writes: the fork stays
    ExpectBitIdentical(fork, fork_after);
    model->Reset(parent);  // a reset replaces, never clears in place
    ExpectBitIdentical(fork, fork_after);
    SequenceState grandchild = fork.Fork();  // a fork of a factored fork shares its increments
    Ingest(*model, grandchild, Tokens(13, 5), piece);
    ExpectBitIdentical(fork, fork_after);
    EXPECT_FALSE(fork_before.position() == fork.position());
  }
}

TEST(ForkTest, AgreesWithADeepCopyWithinFloatTolerance) {
  auto model = MakeModel();
  for (size_t piece : {size_t{1}, size_t{5}, size_t{18}}) {
    SequenceState parent = model->NewSequence();
    Ingest(*model, parent, Tokens(40, 6), 40);
    SequenceState fork = parent.Fork(), copy = parent.Clone();
    const std::vector<int32_t> tokens = Tokens(17, 7);  // three chunks: stays factored
    const IngestLogProbs got = Ingest(*model, fork, tokens, piece);
    const IngestLogProbs want = Ingest(*model, copy, tokens, piece);
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 2e-5) << "token " << i;
    for (size_t k = 0; k < TensorsOf(fork).ttt.size(); ++k) {
      const TttLayerState& slot = TensorsOf(fork).ttt[k];
      EXPECT_FALSE(slot.increments.empty()) << "piece " << piece;
      EXPECT_LT(MaxRelativeDiff(internal::EffectiveDelta(slot), TensorsOf(copy).ttt[k].delta),
                1e-5);
      EXPECT_NEAR(fork.DeltaNorms()[k], copy.DeltaNorms()[k], 1e-5 * copy.DeltaNorms()[k]);
    }
    EXPECT_EQ(fork.chunks_applied(), copy.chunks_applied());
    EXPECT_EQ(fork.PendingTokens(), copy.PendingTokens());
  }
}

TEST(ForkTest, GrowsByItsIncrementsThenGoesDenseWhenThatIsCheaper) {
  auto model = MakeModel();
  const ModelConfig& c = model->config();
  const int64_t dense_bytes = c.hidden_size * c.intermediate_size * 4;
  const int64_t increment_bytes = c.ttt_chunk * (c.hidden_size + c.intermediate_size) * 4;
  SequenceState parent = model->NewSequence();
  Ingest(*model, parent, Tokens(42, 8), 42);  // on a chunk boundary
  SequenceState fork = parent.Fork();
  Ingest(*model, fork, Tokens(12, 9), 12);  // two chunks
  for (const TttLayerState& slot : TensorsOf(fork).ttt) {
    EXPECT_EQ(slot.increments.scales.size(), 2u);
    EXPECT_TRUE(slot.delta.is_same(TensorsOf(parent).ttt[0].delta) ||
                slot.delta.is_same(TensorsOf(parent).ttt[1].delta));
  }
  // Its own fast-weight bytes: two increments per TTT layer, no dense copy.
  int64_t own_fast = 0;
  for (const TttLayerState& slot : TensorsOf(fork).ttt) {
    own_fast += slot.increments.v.nbytes() + slot.increments.z.nbytes();
  }
  EXPECT_EQ(own_fast, 2 * 2 * increment_bytes);
  EXPECT_LT(own_fast, 2 * dense_bytes);
  Ingest(*model, fork, Tokens(12, 10), 1);  // two more: four would outweigh a dense delta
  for (const TttLayerState& slot : TensorsOf(fork).ttt) {
    EXPECT_TRUE(slot.increments.empty());
    EXPECT_TRUE(internal::OwnsBuffer(slot.delta));
  }
}

// An export holds the factored form as it is (base, increments, coefficients): restored with
// nothing else (the parent gone), it holds the same increments and scores bit for bit as the
// fork, on every path, through its going dense.
TEST(ForkTest, ExportsOfAFactoredForkAreSelfContainedAndRestoreBitExactly) {
  auto model = MakeModel();
  for (size_t piece : {size_t{1}, size_t{5}, size_t{18}}) {
    SequenceState parent = model->NewSequence();
    Ingest(*model, parent, Tokens(30, 11), 30);
    SequenceState fork = parent.Fork();
    Ingest(*model, fork, Tokens(9, 12), 9);
    ASSERT_TRUE(fork.HoldsIncrements());
    auto bytes = EncodeSequence(fork, fork.Metadata());
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    parent = SequenceState();  // the shared base is gone: the export needs nothing of it
    auto restored = model->RestoreSequence(*bytes, "export");
    ASSERT_TRUE(restored.ok()) << restored.status();
    ExpectBitIdentical(*restored, fork);
    for (size_t k = 0; k < TensorsOf(fork).ttt.size(); ++k) {
      const DeltaIncrements &want = TensorsOf(fork).ttt[k].increments,
                            &got = TensorsOf(*restored).ttt[k].increments;
      EXPECT_EQ(got.scales, want.scales);
      EXPECT_EQ(got.base_scale, want.base_scale);
      EXPECT_EQ(got.norm_sq, want.norm_sq);
    }
    EXPECT_EQ(restored->DeltaNorms(), fork.DeltaNorms());
    const std::vector<int32_t> next = Tokens(20, 13);  // past four chunks: both go dense
    EXPECT_EQ(Ingest(*model, *restored, next, piece), Ingest(*model, fork, next, piece));
    EXPECT_FALSE(fork.HoldsIncrements());
    ExpectBitIdentical(*restored, fork);
  }
}

// A restored factored state is checked like any input: each increment's tensors and
// coefficients must fit (all three or none, whole chunks, no more than a fold keeps, finite).
TEST(ForkTest, RestoreRefusesIncrementsThatDoNotFit) {
  auto model = MakeModel();
  SequenceState parent = model->NewSequence();
  Ingest(*model, parent, Tokens(30, 14), 30);
  SequenceState fork = parent.Fork();
  Ingest(*model, fork, Tokens(9, 15), 9);
  ASSERT_TRUE(fork.HoldsIncrements());
  const NamedTensors good = StateTensors(fork);
  auto refusal = [&](const std::string& name, const at::Tensor& replacement) {
    NamedTensors crafted;
    for (const auto& [n, t] : good) {
      if (n != name)
        crafted.emplace_back(n, t);
      else if (replacement.defined())
        crafted.emplace_back(n, replacement);
    }
    auto bytes = EncodeSafetensors(crafted, fork.Metadata());
    EXPECT_TRUE(bytes.ok()) << bytes.status();
    auto restored = model->RestoreSequence(*bytes, "crafted");
    EXPECT_EQ(restored.status().code(), absl::StatusCode::kInvalidArgument) << name;
    return std::string(restored.status().message());
  };
  const std::string p = "ttt.0.increments.";
  at::Tensor v, z, coefficients;
  for (const auto& [n, t] : good) {
    if (n == p + "v") v = t;
    if (n == p + "z") z = t;
    if (n == p + "coefficients") coefficients = t;
  }
  ASSERT_TRUE(v.defined() && z.defined() && coefficients.defined());
  EXPECT_NE(refusal(p + "z", at::Tensor()).find("need all three tensors"), std::string::npos);
  EXPECT_NE(refusal(p + "v", v.slice(0, 0, 5)).find("positive multiple of the chunk (6)"),
            std::string::npos);
  // Four chunks of increments cost more than the dense delta: never kept, refused.
  EXPECT_NE(refusal(p + "v", at::cat({v, v, v, v})).find("does not fit"), std::string::npos);
  EXPECT_NE(refusal(p + "coefficients", coefficients.slice(0, 0, 2)).find("does not fit"),
            std::string::npos);
  at::Tensor bad = coefficients.clone();
  bad[0] = 2.0;  // the cap and a fade only shrink the base
  EXPECT_NE(refusal(p + "coefficients", bad).find("the base's scale in [0, 1]"), std::string::npos);
  bad = coefficients.clone();
  bad[2] = std::nan("");
  EXPECT_NE(refusal(p + "coefficients", bad).find("must be finite"), std::string::npos);
  bad = z.clone();
  bad[0][0] = INFINITY;
  EXPECT_NE(refusal(p + "z", bad).find("not finite"), std::string::npos);
}

// Off (SetForkIncrements(false), ttt-serve --fork_increments=false), a fork that reads copies
// the delta at its first write: it stays bit-identical to a deep copy.
TEST(ForkTest, WithIncrementsOffAForkThatReadsCopiesItsDeltaAndStaysBitExact) {
  SetForkIncrements(false);
  auto model = MakeModel();
  SequenceState parent = model->NewSequence();
  Ingest(*model, parent, Tokens(30, 21), 30);
  SequenceState copy = parent.Clone();
  SequenceState fork = parent.Fork();
  const std::vector<int32_t> more = Tokens(9, 22);
  EXPECT_EQ(Ingest(*model, fork, more, 9), Ingest(*model, copy, more, 9));
  EXPECT_FALSE(fork.HoldsIncrements());
  auto bytes = EncodeSequence(fork, fork.Metadata());
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  auto restored = model->RestoreSequence(*bytes, "export");
  ASSERT_TRUE(restored.ok()) << restored.status();
  const std::vector<int32_t> next = Tokens(14, 23);
  EXPECT_EQ(Ingest(*model, *restored, next, 14), Ingest(*model, fork, next, 14));
  SetForkIncrements(true);
}

// Model::FadeFastWeights (a boundary between documents): every layer's effective delta scaled,
// dense or factored, the context kept, and a state sharing the delta untouched.
TEST(ForkTest, FadingAForksFastWeightsScalesThemAndLeavesItsParentAlone) {
  auto model = MakeModel();
  SequenceState parent = model->NewSequence();
  Ingest(*model, parent, Tokens(40, 12), 40);
  const SequenceState parent_before = parent.Clone();
  SequenceState dense = parent.Fork();  // shares the parent's dense delta
  SequenceState factored = parent.Fork();
  Ingest(*model, factored, Tokens(12, 13), 12);  // two chunks of increments on it
  ASSERT_FALSE(TensorsOf(factored).ttt[0].increments.empty());
  for (SequenceState* state : {&dense, &factored}) {
    std::vector<at::Tensor> before;
    for (const TttLayerState& slot : TensorsOf(*state).ttt) {
      before.push_back(internal::EffectiveDelta(slot).clone());
    }
    const std::vector<double> norms = state->DeltaNorms();
    const int64_t position = state->position(), pending = state->PendingTokens();
    model->FadeFastWeights(*state, 0.25);
    for (size_t k = 0; k < before.size(); ++k) {
      const TttLayerState& slot = TensorsOf(*state).ttt[k];
      EXPECT_LT(MaxRelativeDiff(internal::EffectiveDelta(slot), before[k] * 0.25), 1e-6);
      EXPECT_NEAR(state->DeltaNorms()[k], 0.25 * norms[k], 1e-6 * norms[k]);
      EXPECT_GT(norms[k], 0);
    }
    EXPECT_EQ(state->position(), position);
    EXPECT_EQ(state->PendingTokens(), pending);
    ExpectBitIdentical(parent, parent_before);
  }
  model->FadeFastWeights(parent, 1);  // keeps everything, to the bit
  ExpectBitIdentical(parent, parent_before);
  model->FadeFastWeights(parent, 0);  // forgets the fast weights, keeps the context
  for (double norm : parent.DeltaNorms()) EXPECT_EQ(norm, 0);
  EXPECT_EQ(parent.position(), 40);
}

// The KV cache: a fork that ingests keeps its parent's rows as a shared read-only prefix and
// holds only its own rows; so does the parent when it writes next. Neither copies the other's.
TEST(ForkTest, AForkThatIngestsHoldsOnlyItsOwnCacheRows) {
  auto model = MakeModel();
  for (size_t piece : {size_t{1}, size_t{25}}) {
    SequenceState parent = model->NewSequence();
    Ingest(*model, parent, Tokens(40, 31), 40);
    SequenceState fork = parent.Fork();
    Ingest(*model, fork, Tokens(25, 32), piece);
    const SequenceTensors &p = TensorsOf(parent), &f = TensorsOf(fork);
    for (size_t l = 0; l < f.cache.size(); ++l) {
      EXPECT_EQ(f.cache[l].SharedRows(), 40) << "layer " << l;
      EXPECT_EQ(f.cache[l].keys.size(1), 25);
      EXPECT_TRUE(f.cache[l].shared_keys.is_same(p.cache[l].keys));
      EXPECT_TRUE(f.cache[l].shared_values.is_same(p.cache[l].values));
      // Its own rows' buffers: room for the 25 rows and some spare, not for the 40 shared.
      EXPECT_LT(internal::BufferBytes(f.cache[l].keys), internal::BufferBytes(p.cache[l].keys));
    }
    Ingest(*model, parent, Tokens(3, 33), piece);  // the parent's rows stay shared with the fork
    for (size_t l = 0; l < f.cache.size(); ++l) {
      EXPECT_TRUE(p.cache[l].shared_keys.is_same(f.cache[l].shared_keys));
      EXPECT_EQ(p.cache[l].keys.size(1), 3);
    }
  }
}

// Reading a cache in two segments (shared prefix, own rows) gives the results of one buffer to
// the bit, on every path (decode steps, short pieces, long pieces), with and without a sliding
// window (which drops the prefix as it slides past it), for forks of forks and a parent that
// writes after forking. With increments off, a fork computes exactly as a deep copy.
TEST(ForkTest, ATwoSegmentCacheScoresAsOneBufferToTheBit) {
  SetForkIncrements(false);
  for (std::optional<int64_t> window : {std::optional<int64_t>(), std::optional<int64_t>(16)}) {
    auto model = MakeModel({.sliding_window = window});
    for (size_t piece : {size_t{1}, size_t{4}, size_t{25}}) {
      SequenceState parent = model->NewSequence();
      Ingest(*model, parent, Tokens(22, 34), 22);
      SequenceState fork = parent.Fork(), copy = parent.Clone();
      const std::vector<int32_t> more = Tokens(25, 35);
      EXPECT_EQ(Ingest(*model, fork, more, piece), Ingest(*model, copy, more, piece))
          << "piece " << piece;
      ExpectBitIdentical(fork, copy);
      SequenceState grandchild = fork.Fork(), grandcopy = copy.Clone();
      const std::vector<int32_t> next = Tokens(9, 36);
      EXPECT_EQ(Ingest(*model, grandchild, next, piece), Ingest(*model, grandcopy, next, piece));
      SequenceState parent_copy = parent.Clone();
      EXPECT_EQ(Ingest(*model, parent, next, piece), Ingest(*model, parent_copy, next, piece));
      ExpectBitIdentical(parent, parent_copy);
      if (window) {
        for (const LayerCache& c : TensorsOf(fork).cache) EXPECT_LE(c.Rows(), *window - 1);
      }
    }
  }
  SetForkIncrements(true);
}

}  // namespace
}  // namespace ttt::engine
