// engine/internal/short_step.cc, the fast path of decode steps and short pieces (raw floats, BLAS
// called directly, the chunk fold over raw floats), against the tensor path (a call longer than
// the varlen limit runs LibTorch operations end to end) on random models and inputs: the same
// log-probabilities, fast weights, KV caches and last logits, for every layout the fast path
// reads (grouped-query attention, attention biases, q/k norms, a sliding window, both TTT targets,
// with and without ttt_proj, clip and cap) and for one, two and several rows per step; and a
// session's decode steps bit for bit the same whichever sessions share its steps.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "engine/internal/forward.h"
#include "engine/internal/model_tensors.h"
#include "engine/internal/sequence_tensors.h"
#include "engine/model.h"
#include "engine/testing/random_weights.h"

namespace ttt::engine {
namespace {

struct Variant {
  std::string name;
  ModelConfig config;
};

ModelConfig BaseConfig() {
  ModelConfig c;
  c.model_type = "llama";
  c.vocab_size = 61;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  c.rms_norm_eps = 1e-5;
  c.ttt_mode = true;
  c.ttt_layers = {0, 2};
  c.ttt_lr = 0.5;
  c.ttt_chunk = 6;
  c.ttt_proj = true;
  return c;
}

std::vector<Variant> Variants() {
  std::vector<Variant> variants;
  variants.push_back({"llama, input_embed target, ttt_proj", BaseConfig()});
  ModelConfig capped = BaseConfig();
  capped.ttt_clip = 0.5;
  capped.ttt_delta_cap = 0.8;
  capped.sliding_window = 5;
  capped.ttt_proj = false;
  variants.push_back({"clip, cap, window 5, no ttt_proj", capped});
  ModelConfig qwen = BaseConfig();
  qwen.model_type = "qwen3";
  qwen.qk_norm = true;
  qwen.attention_bias = true;
  qwen.ttt_target = TttTarget::kHiddenStates;
  variants.push_back({"q/k norms, biases, hidden target", qwen});
  return variants;
}

// The random weights, plus the biases and q/k norm weights a config asks for.
std::unique_ptr<Model> MakeModel(const ModelConfig& c) {
  NamedTensors weights = testing::RandomWeights(c);
  const int64_t q = c.num_attention_heads * c.head_dim, kv = c.num_key_value_heads * c.head_dim;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".self_attn.";
    if (c.attention_bias) {
      weights.emplace_back(p + "q_proj.bias", at::randn({q}) * 0.3);
      weights.emplace_back(p + "k_proj.bias", at::randn({kv}) * 0.3);
      weights.emplace_back(p + "v_proj.bias", at::randn({kv}) * 0.3);
    }
    if (c.qk_norm) {
      weights.emplace_back(p + "q_norm.weight", 1 + at::randn({c.head_dim}) * 0.1);
      weights.emplace_back(p + "k_norm.weight", 1 + at::randn({c.head_dim}) * 0.1);
    }
  }
  auto model = ModelFromWeights(c, weights, {});
  EXPECT_TRUE(model.ok()) << model.status();
  return std::move(model).value();
}

std::vector<int32_t> RandomTokens(int n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> tokens(n);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % vocab);
  return tokens;
}

double MaxDiff(const at::Tensor& a, const at::Tensor& b) {
  EXPECT_EQ(a.sizes(), b.sizes());
  return a.numel() == 0 ? 0.0 : (a - b).abs().max().item<double>();
}

// Every tensor of two states' layouts agrees to `tol`.
void ExpectSameState(const SequenceState& got, const SequenceState& want, double tol) {
  const SequenceTensors &g = TensorsOf(got), &w = TensorsOf(want);
  EXPECT_EQ(g.position, w.position);
  EXPECT_EQ(g.chunks_applied, w.chunks_applied);
  EXPECT_LT(MaxDiff(g.last_logits, w.last_logits), tol);
  for (size_t l = 0; l < w.cache.size(); ++l) {
    EXPECT_LT(MaxDiff(g.cache[l].keys, w.cache[l].keys), tol) << "layer " << l;
    EXPECT_LT(MaxDiff(g.cache[l].values, w.cache[l].values), tol) << "layer " << l;
  }
  for (size_t k = 0; k < w.ttt.size(); ++k) {
    EXPECT_LT(MaxDiff(g.ttt[k].delta, w.ttt[k].delta), tol) << "TTT layer " << k;
    EXPECT_LT(MaxDiff(g.ttt[k].pending_z, w.ttt[k].pending_z), tol) << "TTT layer " << k;
  }
}

// `sessions` streams of `length` tokens, fed in decode steps (all sessions in each step: the
// fast path with `sessions` rows) against each stream in one call (the tensor path).
void ExpectDecodeStepsEqualOneCall(const Model& model, int sessions, int length) {
  ASSERT_GT(length, ModelAccess::kVarlenRows) << "the reference call must take the tensor path";
  std::vector<std::vector<int32_t>> streams;
  std::vector<SequenceState> stepped(sessions);
  for (int s = 0; s < sessions; ++s) {
    streams.push_back(RandomTokens(length, model.config().vocab_size, 100 + s));
    stepped[s] = model.NewSequence();
  }
  std::vector<IngestLogProbs> got(sessions);
  for (int t = 0; t < length; ++t) {
    std::vector<IngestItem> items;
    for (int s = 0; s < sessions; ++s) items.push_back({&stepped[s], {streams[s][t]}});
    auto step = model.Ingest(absl::MakeSpan(items));
    ASSERT_TRUE(step.ok()) << step.status();
    for (int s = 0; s < sessions; ++s) got[s].push_back(step.value()[s][0]);
  }
  for (int s = 0; s < sessions; ++s) {
    SequenceState whole = model.NewSequence();
    std::vector<IngestItem> items{{&whole, streams[s]}};
    auto want = model.Ingest(absl::MakeSpan(items));
    ASSERT_TRUE(want.ok()) << want.status();
    for (int t = 1; t < length; ++t) {
      EXPECT_NEAR(got[s][t], want.value()[0][t], 2e-5) << "session " << s << " token " << t;
    }
    ExpectSameState(stepped[s], whole, 1e-4);
  }
}

TEST(ShortStepTest, DecodeStepsEqualTheTensorPathForEveryLayout) {
  for (const Variant& v : Variants()) {
    SCOPED_TRACE(v.name);
    auto model = MakeModel(v.config);
    for (int sessions : {1, 2, 3}) {  // one and two products per row, then one GEMM
      SCOPED_TRACE("sessions " + std::to_string(sessions));
      ExpectDecodeStepsEqualOneCall(*model, sessions, 27);  // four chunk folds and a partial one
    }
  }
}

// Short pieces (several rows of one session in a step, inside its chunk) on the fast path.
TEST(ShortStepTest, ShortPiecesEqualTheTensorPath) {
  for (const Variant& v : Variants()) {
    SCOPED_TRACE(v.name);
    auto model = MakeModel(v.config);
    const std::vector<int32_t> tokens = RandomTokens(24, v.config.vocab_size, 7);
    SequenceState pieces = model->NewSequence();
    IngestLogProbs got;
    for (int first = 0; first < 24; first += 3) {  // pieces of 3: two per chunk of 6
      std::vector<IngestItem> items{
          {&pieces, std::vector<int32_t>(tokens.begin() + first, tokens.begin() + first + 3)}};
      auto piece = model->Ingest(absl::MakeSpan(items));
      ASSERT_TRUE(piece.ok()) << piece.status();
      got.insert(got.end(), piece.value()[0].begin(), piece.value()[0].end());
    }
    SequenceState whole = model->NewSequence();
    std::vector<IngestItem> items{{&whole, tokens}};
    auto want = model->Ingest(absl::MakeSpan(items));
    ASSERT_TRUE(want.ok()) << want.status();
    for (int t = 1; t < 24; ++t) EXPECT_NEAR(got[t], want.value()[0][t], 2e-5) << "token " << t;
    ExpectSameState(pieces, whole, 1e-4);
  }
}

// Every tensor of two states' layouts is the same to the bit.
void ExpectEqualState(const SequenceState& got, const SequenceState& want) {
  const SequenceTensors &g = TensorsOf(got), &w = TensorsOf(want);
  EXPECT_EQ(g.position, w.position);
  EXPECT_TRUE(at::equal(g.last_logits, w.last_logits));
  for (size_t l = 0; l < w.cache.size(); ++l) {
    EXPECT_TRUE(at::equal(g.cache[l].keys, w.cache[l].keys)) << "layer " << l;
    EXPECT_TRUE(at::equal(g.cache[l].values, w.cache[l].values)) << "layer " << l;
  }
  for (size_t k = 0; k < w.ttt.size(); ++k) {
    EXPECT_TRUE(at::equal(g.ttt[k].delta, w.ttt[k].delta)) << "TTT layer " << k;
    EXPECT_TRUE(at::equal(g.ttt[k].pending_z, w.ttt[k].pending_z)) << "TTT layer " << k;
  }
}

// A session decoding alone and the same session decoding beside 1 to 7 others (the scheduler
// batches whoever is ready): the same log-probabilities and state to the bit, chunk folds
// included. The dense products of a short step (SmallRowProduct) do each row's arithmetic alike
// whatever the other rows; OpenBLAS's GEMM did not (docs/contract.md).
TEST(ShortStepTest, DecodeStepsDoNotDependOnTheOtherSessionsInTheStep) {
  for (const Variant& v : Variants()) {
    SCOPED_TRACE(v.name);
    auto model = MakeModel(v.config);
    const int length = 20, vocab = v.config.vocab_size;
    const std::vector<int32_t> tokens = RandomTokens(length, vocab, 41);
    SequenceState alone = model->NewSequence(), shared = model->NewSequence();
    std::vector<SequenceState> others(7);
    for (SequenceState& o : others) o = model->NewSequence();
    for (int t = 0; t < length; ++t) {
      std::vector<IngestItem> one{{&alone, {tokens[t]}}};
      auto want = model->Ingest(absl::MakeSpan(one));
      ASSERT_TRUE(want.ok()) << want.status();
      std::vector<IngestItem> many{{&shared, {tokens[t]}}};
      for (int o = 0; o < 1 + t % 7; ++o) {  // 2 to 8 rows, the session's row anywhere
        many.insert(o % 2 == 0 ? many.end() : many.begin(),
                    IngestItem{&others[o], {static_cast<int32_t>((t * 7 + o) % vocab)}});
      }
      auto got = model->Ingest(absl::MakeSpan(many));
      ASSERT_TRUE(got.ok()) << got.status();
      size_t row = 0;
      while (many[row].state != &shared) ++row;
      const float g = got.value()[row][0], w = want.value()[0][0];  // NaN for the first token
      EXPECT_TRUE(g == w || (std::isnan(g) && std::isnan(w)))
          << "token " << t << ": " << g << " vs " << w;
    }
    ExpectEqualState(shared, alone);
  }
}

}  // namespace
}  // namespace ttt::engine
