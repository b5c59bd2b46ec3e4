// The C++ engine against the independent PyTorch reference (tests/reference/ttt_reference.py).
// The fixtures (tiny random Llama and Qwen3 models with In-Place TTT, and their golden numbers)
// come from the folder in TTT_GOLDEN_DIR; CTest generates them first (fixture `golden`).
//
// Golden tensors per model (golden.safetensors):
//   tokens [T] I64, logprobs_ttt [T-1], logprobs_plain [T-1] (eta = 0), logits_last [vocab],
//   delta.layer{i} [d_model, d_ff] per TTT layer, logprobs_window_{W} [T-1] (TTT on, window W).
// logprobs[t] = log p(tokens[t+1] | tokens[..t]); the engine's Ingest returns it at index t+1.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/config.h"
#include "engine/internal/model_tensors.h"
#include "engine/internal/safetensors.h"
#include "engine/model.h"
#include "engine/sequence.h"

namespace ttt::engine {
namespace {

namespace fs = std::filesystem;

template <typename T>
T ValueOrThrow(absl::StatusOr<T> s, const std::string& what) {
  if (!s.ok()) {
    throw std::runtime_error(what + ": " + s.status().ToString());
  }
  return *std::move(s);
}

std::string DeviceUnderTest() {
  const char* d = std::getenv("TTT_GOLDEN_DEVICE");  // optional: "cuda" on a GPU machine
  return d != nullptr && *d != '\0' ? d : "cpu";
}

std::string DtypeUnderTest() {
  const char* d = std::getenv("TTT_GOLDEN_DTYPE");  // optional: "bf16" (tools/gpu_check.sh)
  return d != nullptr && *d != '\0' ? d : "f32";
}

// Relative error allowed against the float32 reference: f32 1e-4; bf16 5e-2 (8 mantissa bits,
// ~4e-3 per rounding, accumulated over the layers and the chunk updates).
double Tolerance() { return DtypeUnderTest() == "bf16" ? 5e-2 : 1e-4; }

struct Golden {
  fs::path dir;
  std::vector<int32_t> tokens;
  at::Tensor logprobs_ttt;                // [T-1] f32
  at::Tensor logprobs_plain;              // [T-1]
  at::Tensor logits_last;                 // [vocab]
  std::map<int64_t, at::Tensor> deltas;   // layer -> [d_model, d_ff]
  std::map<int64_t, at::Tensor> windows;  // W -> logprobs [T-1]
};

Golden LoadGolden(const fs::path& dir) {
  Golden g;
  g.dir = dir;
  auto file = ValueOrThrow(SafetensorsFile::Open(dir / "golden.safetensors"), "golden file");
  auto load = [&](const std::string& name) {
    return ValueOrThrow(file->Load(name), "golden tensor " + name).to(at::kFloat).contiguous();
  };
  at::Tensor tokens =
      ValueOrThrow(file->Load("tokens"), "golden tokens").to(at::kLong).contiguous();
  const int64_t* tp = tokens.data_ptr<int64_t>();
  g.tokens.assign(tp, tp + tokens.numel());
  g.logprobs_ttt = load("logprobs_ttt");
  g.logprobs_plain = load("logprobs_plain");
  g.logits_last = load("logits_last");
  const std::string kDelta = "delta.layer", kWindow = "logprobs_window_";
  for (const TensorEntry& e : file->entries()) {
    if (e.name.rfind(kDelta, 0) == 0) {
      g.deltas[std::stoll(e.name.substr(kDelta.size()))] = load(e.name);
    } else if (e.name.rfind(kWindow, 0) == 0) {
      g.windows[std::stoll(e.name.substr(kWindow.size()))] = load(e.name);
    }
  }
  return g;
}

// Feeds `tokens` into `state` as one Ingest call.
std::vector<float> IngestOne(const Model& model, SequenceState& state, std::vector<int32_t> tokens,
                             IngestMode mode) {
  const size_t n = tokens.size();
  std::vector<IngestItem> items(1);
  items[0].state = &state;
  items[0].tokens = std::move(tokens);
  auto out = ValueOrThrow(model.Ingest(absl::MakeSpan(items), mode), "Ingest");
  if (out.size() != 1 || out[0].size() != n) {
    throw std::runtime_error("Ingest returned " + std::to_string(out.size()) +
                             " results, the first of " +
                             std::to_string(out.empty() ? 0 : out[0].size()) + " log-probs for " +
                             std::to_string(n) + " tokens");
  }
  return std::move(out[0]);
}

// Feeds the tokens in pieces of the given sizes (summing to the whole), concatenating log-probs.
std::vector<float> IngestPieces(const Model& model, SequenceState& state,
                                const std::vector<int32_t>& tokens,
                                const std::vector<size_t>& sizes,
                                IngestMode mode = IngestMode::kParallel) {
  std::vector<float> all;
  size_t at = 0;
  for (size_t s : sizes) {
    std::vector<int32_t> piece(tokens.begin() + at, tokens.begin() + at + s);
    std::vector<float> lp = IngestOne(model, state, std::move(piece), mode);
    all.insert(all.end(), lp.begin(), lp.end());
    at += s;
  }
  if (at != tokens.size()) throw std::logic_error("piece sizes do not cover the tokens");
  return all;
}

// got[t+1] vs want[t]; got[0] (the stream's first token) must be NaN.
::testing::AssertionResult LogProbsMatch(const std::vector<float>& got, const at::Tensor& want) {
  const int64_t n = want.numel();
  if (static_cast<int64_t>(got.size()) != n + 1) {
    return ::testing::AssertionFailure() << "got " << got.size() << " log-probs, want " << n + 1;
  }
  if (!std::isnan(got[0])) {
    return ::testing::AssertionFailure() << "first token's log-prob is " << got[0] << ", want NaN";
  }
  const float* w = want.data_ptr<float>();
  int bad = 0;
  double worst = 0;
  std::ostringstream msg;
  for (int64_t t = 0; t < n; ++t) {
    const double a = got[t + 1], b = w[t];
    const double err = std::abs(a - b) / std::max(1.0, std::abs(b));
    if (!(err <= Tolerance())) {  // NaN fails too
      if (bad++ < 8) msg << "\n  token " << t + 1 << ": got " << a << ", want " << b;
    }
    if (std::isnan(err) || err > worst) worst = std::isnan(err) ? INFINITY : err;
  }
  if (bad > 0) {
    return ::testing::AssertionFailure()
           << bad << " of " << n << " log-probs off (worst relative error " << worst << ")"
           << msg.str();
  }
  return ::testing::AssertionSuccess() << "worst relative error " << worst;
}

::testing::AssertionResult TensorsMatch(const at::Tensor& got_in, const at::Tensor& want,
                                        const std::string& what) {
  if (!got_in.defined()) return ::testing::AssertionFailure() << what << " is undefined";
  at::Tensor got = got_in.detach().to(at::kCPU).to(at::kFloat).contiguous();
  if (got.sizes() != want.sizes()) {
    return ::testing::AssertionFailure()
           << what << " has shape " << got.sizes() << ", want " << want.sizes();
  }
  const double diff = (got.to(at::kDouble) - want.to(at::kDouble)).norm().item<double>();
  const double ref = want.to(at::kDouble).norm().item<double>();
  const double rel = diff / std::max(ref, 1e-12);
  if (!(rel <= Tolerance())) {
    return ::testing::AssertionFailure() << what << ": relative Frobenius error " << rel
                                         << " (|got - want| " << diff << ", |want| " << ref << ")";
  }
  return ::testing::AssertionSuccess();
}

// Element-wise |a - b| <= tol * max(1, |b|).
::testing::AssertionResult ValuesMatch(const at::Tensor& got_in, const at::Tensor& want,
                                       const std::string& what) {
  if (!got_in.defined()) return ::testing::AssertionFailure() << what << " is undefined";
  at::Tensor got = got_in.detach().to(at::kCPU).to(at::kDouble).reshape({-1});
  at::Tensor w = want.to(at::kDouble).reshape({-1});
  if (got.numel() != w.numel()) {
    return ::testing::AssertionFailure()
           << what << " has " << got.numel() << " values, want " << w.numel();
  }
  at::Tensor err = (got - w).abs() / w.abs().clamp_min(1.0);
  const double worst = err.max().item<double>();
  if (!(worst <= Tolerance())) {
    const int64_t i = err.argmax().item<int64_t>();
    return ::testing::AssertionFailure()
           << what << ": worst relative error " << worst << " at " << i << " (got "
           << got[i].item<double>() << ", want " << w[i].item<double>() << ")";
  }
  return ::testing::AssertionSuccess();
}

class GoldenTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const char* dir = std::getenv("TTT_GOLDEN_DIR");
    if (dir == nullptr || *dir == '\0') {
      GTEST_SKIP() << "TTT_GOLDEN_DIR is not set (run through ctest, or run "
                      "tests/reference/ttt_reference.py --out DIR and set it)";
    }
    model_dir_ = fs::path(dir) / GetParam();
    ASSERT_TRUE(fs::exists(model_dir_ / "golden.safetensors"))
        << model_dir_ << " has no golden.safetensors";
    golden_ = LoadGolden(model_dir_);
    ASSERT_EQ(golden_.tokens.size(), static_cast<size_t>(golden_.logprobs_ttt.numel() + 1));
  }

  std::unique_ptr<Model> LoadModel(ModelOptions options = {}) {
    options.device = DeviceUnderTest();
    options.dtype = DtypeUnderTest();
    return ValueOrThrow(Model::Load(model_dir_, options),
                        "Model::Load(" + model_dir_.string() + ")");
  }

  int64_t T() const { return static_cast<int64_t>(golden_.tokens.size()); }

  // Position, chunk counters and each TTT layer's fast-weight delta after the whole stream.
  void ExpectTttState(const Model& model, const SequenceState& state) {
    const int64_t chunk = model.config().ttt_chunk;
    EXPECT_EQ(state.position(), T());
    ASSERT_GT(chunk, 0);
    EXPECT_EQ(state.chunks_applied(), T() / chunk);
    EXPECT_EQ(state.PendingTokens(), T() % chunk);
    ASSERT_EQ(TensorsOf(state).ttt.size(), golden_.deltas.size()) << "one TTT state per TTT layer";
    size_t k = 0;
    for (const auto& [layer, want] : golden_.deltas) {
      EXPECT_EQ(TensorsOf(state).ttt[k].layer, layer);
      EXPECT_TRUE(TensorsMatch(TensorsOf(state).ttt[k].delta, want,
                               "delta of layer " + std::to_string(layer)));
      ++k;
    }
  }

  void ExpectGolden(const Model& model, const SequenceState& state, const std::vector<float>& lp) {
    EXPECT_TRUE(LogProbsMatch(lp, golden_.logprobs_ttt));
    ExpectTttState(model, state);
    EXPECT_TRUE(ValuesMatch(TensorsOf(state).last_logits, golden_.logits_last, "last_logits"));
  }

  fs::path model_dir_;
  Golden golden_;
};

TEST_P(GoldenTest, ConfigMatchesFixture) {
  auto model = LoadModel();
  const ModelConfig& c = model->config();
  EXPECT_EQ(c.model_type, GetParam());
  EXPECT_TRUE(c.ttt_mode);
  std::vector<int64_t> layers;
  for (const auto& [layer, _] : golden_.deltas) layers.push_back(layer);
  EXPECT_EQ(c.ttt_layers, layers);
  EXPECT_EQ(c.vocab_size, golden_.logits_last.numel());
}

TEST_P(GoldenTest, WholeStreamParallel) {
  auto model = LoadModel();
  SequenceState state = model->NewSequence();
  std::vector<float> lp = IngestOne(*model, state, golden_.tokens, IngestMode::kParallel);
  ExpectGolden(*model, state, lp);
}

TEST_P(GoldenTest, WholeStreamSequential) {
  auto model = LoadModel();
  SequenceState state = model->NewSequence();
  std::vector<float> lp = IngestOne(*model, state, golden_.tokens, IngestMode::kSequential);
  ExpectGolden(*model, state, lp);
}

TEST_P(GoldenTest, OneTokenAtATime) {
  auto model = LoadModel();
  SequenceState state = model->NewSequence();
  std::vector<float> lp =
      IngestPieces(*model, state, golden_.tokens, std::vector<size_t>(golden_.tokens.size(), 1));
  ExpectGolden(*model, state, lp);
}

TEST_P(GoldenTest, RandomPieces) {
  auto model = LoadModel();
  const size_t chunk = static_cast<size_t>(model->config().ttt_chunk);
  for (uint32_t seed : {1u, 2u, 3u}) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937 rng(seed);
    std::uniform_int_distribution<size_t> size_dist(0, 2 * chunk + 1);  // 0: an empty call
    std::vector<size_t> sizes;
    size_t left = golden_.tokens.size();
    while (left > 0) {
      const size_t s = std::min(left, size_dist(rng));
      sizes.push_back(s);
      left -= s;
    }
    for (IngestMode mode : {IngestMode::kParallel, IngestMode::kSequential}) {
      SCOPED_TRACE(mode == IngestMode::kParallel ? "parallel" : "sequential");
      SequenceState state = model->NewSequence();
      std::vector<float> lp = IngestPieces(*model, state, golden_.tokens, sizes, mode);
      ExpectGolden(*model, state, lp);
    }
  }
}

// Sequences sharing a batch do not affect each other; one of them is split across two calls.
TEST_P(GoldenTest, Batched) {
  auto model = LoadModel();
  SequenceState a = model->NewSequence(), b = model->NewSequence();
  const size_t split = 13;
  std::vector<IngestItem> items(2);
  items[0].state = &a;
  items[0].tokens = golden_.tokens;
  items[1].state = &b;
  items[1].tokens.assign(golden_.tokens.begin(), golden_.tokens.begin() + split);
  auto first = ValueOrThrow(model->Ingest(absl::MakeSpan(items)), "batched Ingest");
  ASSERT_EQ(first.size(), 2u);
  std::vector<float> lp_b = first[1];
  std::vector<float> rest = IngestOne(
      *model, b, std::vector<int32_t>(golden_.tokens.begin() + split, golden_.tokens.end()),
      IngestMode::kParallel);
  lp_b.insert(lp_b.end(), rest.begin(), rest.end());
  {
    SCOPED_TRACE("whole stream in one batch item");
    ExpectGolden(*model, a, first[0]);
  }
  {
    SCOPED_TRACE("stream split across calls");
    ExpectGolden(*model, b, lp_b);
  }
}

TEST_P(GoldenTest, EtaZeroIsPlainModel) {
  ModelOptions options;
  options.ttt_lr = 0.0;
  auto model = LoadModel(options);
  for (bool streamed : {false, true}) {
    SCOPED_TRACE(streamed ? "one token at a time" : "whole stream");
    SequenceState state = model->NewSequence();
    std::vector<float> lp = streamed
                                ? IngestPieces(*model, state, golden_.tokens,
                                               std::vector<size_t>(golden_.tokens.size(), 1))
                                : IngestOne(*model, state, golden_.tokens, IngestMode::kParallel);
    EXPECT_TRUE(LogProbsMatch(lp, golden_.logprobs_plain));
    EXPECT_EQ(state.position(), T());
    for (double norm : state.DeltaNorms()) EXPECT_EQ(norm, 0.0);
  }
}

TEST_P(GoldenTest, SlidingWindowOverride) {
  if (golden_.windows.empty()) GTEST_SKIP() << "no windowed goldens for this model";
  for (const auto& [window, want] : golden_.windows) {
    SCOPED_TRACE("window " + std::to_string(window));
    ModelOptions options;
    options.sliding_window = window;
    auto model = LoadModel(options);
    {
      SequenceState state = model->NewSequence();
      std::vector<float> lp = IngestOne(*model, state, golden_.tokens, IngestMode::kParallel);
      EXPECT_TRUE(LogProbsMatch(lp, want));
    }
    {
      SCOPED_TRACE("one token at a time");
      SequenceState state = model->NewSequence();
      std::vector<float> lp = IngestPieces(*model, state, golden_.tokens,
                                           std::vector<size_t>(golden_.tokens.size(), 1));
      EXPECT_TRUE(LogProbsMatch(lp, want));
      for (const LayerCache& c : TensorsOf(state).cache) {
        if (c.keys.defined()) {
          EXPECT_LE(c.keys.size(1), window) << "KV cache beyond the window";
        }
      }
    }
  }
}

TEST_P(GoldenTest, TttChangesLogProbs) {
  // Guards the fixture itself: TTT must make a visible difference, or the test proves nothing.
  const double diff = (golden_.logprobs_ttt - golden_.logprobs_plain).abs().max().item<double>();
  EXPECT_GT(diff, 1e-2);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GoldenTest, ::testing::Values("llama", "qwen3"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

}  // namespace
}  // namespace ttt::engine
