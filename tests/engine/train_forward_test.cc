// The batched training forward (engine/internal/train_forward.h) is the serving path's function:
// its log-probs match Model::Ingest on fresh streams in every layout it has a separate branch for
// (sliding window shorter and longer than the sequence, both TTT targets, update clipping, a
// trailing partial chunk, grouped-query attention, Qwen3's q/k norm and biases), and gradients
// reach every weight, the TTT ones included.
#include "engine/internal/train_forward.h"

#include <gtest/gtest.h>

#include <random>

#include "engine/internal/model_tensors.h"
#include "engine/model.h"

namespace ttt::engine {
namespace {

ModelConfig Config() {
  ModelConfig c;
  c.vocab_size = 41;
  c.hidden_size = 16;
  c.intermediate_size = 24;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 4;
  c.rms_norm_eps = 1e-5;
  c.ttt_mode = true;
  c.ttt_layers = {0, 2};
  c.ttt_lr = 0.7;
  c.ttt_chunk = 5;
  return c;
}

std::unique_ptr<Model> Make(const ModelConfig& c) {
  at::manual_seed(3);
  const int64_t d = c.hidden_size, f = c.intermediate_size, q = c.num_attention_heads * c.head_dim,
                kv = c.num_key_value_heads * c.head_dim;
  auto rnd = [](std::vector<int64_t> shape, double scale) { return at::randn(shape) * scale; };
  NamedTensors w{{"model.embed_tokens.weight", rnd({c.vocab_size, d}, 1.0)},
                 {"model.norm.weight", 1 + rnd({d}, 0.1)},
                 {"lm_head.weight", rnd({c.vocab_size, d}, 0.3)}};
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    w.emplace_back(p + "input_layernorm.weight", 1 + rnd({d}, 0.1));
    w.emplace_back(p + "post_attention_layernorm.weight", 1 + rnd({d}, 0.1));
    w.emplace_back(p + "self_attn.q_proj.weight", rnd({q, d}, 0.3));
    w.emplace_back(p + "self_attn.k_proj.weight", rnd({kv, d}, 0.3));
    w.emplace_back(p + "self_attn.v_proj.weight", rnd({kv, d}, 0.3));
    w.emplace_back(p + "self_attn.o_proj.weight", rnd({d, q}, 0.3));
    if (c.attention_bias) {
      w.emplace_back(p + "self_attn.q_proj.bias", rnd({q}, 0.1));
      w.emplace_back(p + "self_attn.k_proj.bias", rnd({kv}, 0.1));
      w.emplace_back(p + "self_attn.v_proj.bias", rnd({kv}, 0.1));
    }
    if (c.qk_norm) {
      w.emplace_back(p + "self_attn.q_norm.weight", 1 + rnd({c.head_dim}, 0.1));
      w.emplace_back(p + "self_attn.k_norm.weight", 1 + rnd({c.head_dim}, 0.1));
    }
    w.emplace_back(p + "mlp.gate_proj.weight", rnd({f, d}, 0.3));
    w.emplace_back(p + "mlp.up_proj.weight", rnd({f, d}, 0.3));
    w.emplace_back(p + "mlp.down_proj.weight", rnd({d, f}, 0.3));
    if (c.IsTttLayer(l)) {
      w.emplace_back(p + "mlp.ttt_conv.weight", rnd({d, 1, 5}, 0.4));
      w.emplace_back(p + "mlp.ttt_proj.weight", rnd({d, d}, 0.3));
    }
  }
  auto model = ModelFromWeights(c, w);
  EXPECT_TRUE(model.ok()) << model.status();
  return std::move(model).value();
}

// Max |log p(train forward) - log p(Ingest)| over every predicted token of a [B, T] batch.
double MaxGapToIngest(const Model& model, int64_t batch, int64_t length) {
  std::mt19937 rng(11);
  at::Tensor ids = at::empty({batch, length}, at::kLong);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 0; t < length; ++t) ids[b][t] = static_cast<int64_t>(rng() % 41);
  }
  at::Tensor logp = at::log_softmax(ForwardTrain(model, ids), -1);
  EXPECT_EQ(logp.sizes().vec(), (std::vector<int64_t>{batch, length, 41}));
  double gap = 0;
  for (int64_t b = 0; b < batch; ++b) {
    SequenceState state = model.NewSequence();
    std::vector<IngestItem> items(1);
    items[0].state = &state;
    for (int64_t t = 0; t < length; ++t) items[0].tokens.push_back(ids[b][t].item<int32_t>());
    auto lps = model.Ingest(absl::MakeSpan(items));
    EXPECT_TRUE(lps.ok()) << lps.status();
    for (int64_t t = 1; t < length; ++t) {
      const double train = logp[b][t - 1][ids[b][t].item<int64_t>()].item<double>();
      gap = std::max(gap, std::abs(train - (*lps)[0][t]));
    }
  }
  return gap;
}

TEST(TrainForwardTest, MatchesIngestWithAWindowShorterThanTheSequence) {
  ModelConfig c = Config();
  c.sliding_window = 7;  // blocked path, 37 tokens = 6 blocks (the last partial)
  EXPECT_LT(MaxGapToIngest(*Make(c), 3, 37), 2e-5);
}

TEST(TrainForwardTest, MatchesIngestWithFullAttentionAndAWindowLongerThanTheSequence) {
  ModelConfig c = Config();
  EXPECT_LT(MaxGapToIngest(*Make(c), 2, 23), 2e-5);
  c.sliding_window = 64;
  EXPECT_LT(MaxGapToIngest(*Make(c), 2, 23), 2e-5);
}

TEST(TrainForwardTest, MatchesIngestWithClippingHiddenStateTargetQwenLayout) {
  ModelConfig c = Config();
  c.model_type = "qwen3";
  c.qk_norm = true;
  c.attention_bias = true;
  c.sliding_window = 6;
  c.ttt_target = TttTarget::kHiddenStates;
  c.ttt_clip = 0.05;  // far below these updates' norms: every chunk is clipped
  auto clipped = Make(c);
  const double gap = MaxGapToIngest(*clipped, 2, 32);
  EXPECT_LT(gap, 2e-5);
  c.ttt_clip = 0;
  auto unclipped = Make(c);
  at::Tensor ids = at::arange(32, at::kLong).remainder(41).view({1, 32});
  EXPECT_GT(
      (ForwardTrain(*clipped, ids) - ForwardTrain(*unclipped, ids)).abs().max().item<double>(),
      1e-3)
      << "the clip is applied";
}

TEST(TrainForwardTest, GradientsReachEveryWeight) {
  ModelConfig c = Config();
  c.sliding_window = 4;
  c.ttt_clip = 0.5;
  auto model = Make(c);
  for (auto& [name, t] : NamedWeights(*model)) t.requires_grad_(true);
  at::Tensor ids = at::arange(30, at::kLong).remainder(41).view({2, 15});
  ForwardTrain(*model, ids).logsumexp(-1).sum().backward();
  for (auto& [name, t] : NamedWeights(*model)) {
    ASSERT_TRUE(t.grad().defined()) << name;
    EXPECT_GT(t.grad().abs().sum().item<double>(), 0) << name;
  }
}

// ttt_delta_cap (the bound on each layer's accumulated delta): the log-probs of `ids` read by one
// Ingest call (the parallel chunk form) or in pieces of 1-3 tokens (decode-sized steps, which
// fold each chunk into the state as it completes), and the state's delta norms at the end.
struct Read {
  std::vector<double> logprobs;
  std::vector<double> delta_norms;
};
Read ReadInPieces(const Model& model, const std::vector<int32_t>& ids, bool one_call) {
  SequenceState state = model.NewSequence();
  Read out;
  size_t at = 0;
  while (at < ids.size()) {
    const size_t n = one_call ? ids.size() : std::min<size_t>(1 + at % 3, ids.size() - at);
    std::vector<IngestItem> items(1);
    items[0].state = &state;
    items[0].tokens.assign(ids.begin() + at, ids.begin() + at + n);
    auto lps = model.Ingest(absl::MakeSpan(items));
    EXPECT_TRUE(lps.ok()) << lps.status();
    for (size_t i = at == 0 ? 1 : 0; i < n; ++i) out.logprobs.push_back((*lps)[0][i]);
    at += n;
  }
  out.delta_norms = state.DeltaNorms();
  return out;
}

// The serving path's rule, written the direct way: add each chunk's update, rescale to the cap.
at::Tensor DirectCappedSums(const at::Tensor& scaled, double cap) {
  std::vector<at::Tensor> sums;
  at::Tensor running = at::zeros_like(scaled.select(1, 0));
  for (int64_t j = 0; j < scaled.size(1); ++j) {
    running = running + scaled.select(1, j);
    at::Tensor norms = running.flatten(1).norm(2, {1}).view({scaled.size(0), 1, 1});
    running = running * at::clamp_max(cap / (norms + 1e-12), 1.0);
    sums.push_back(running);
  }
  return at::stack(sums, 1);
}

TEST(TrainForwardTest, CappedRunningSumsMatchTheDirectRuleInValueAndGradient) {
  at::manual_seed(5);
  // 40 chunks of 6 x 9 updates, some zero (a fresh TTT layer), some large enough to hit the cap.
  at::Tensor scaled = at::randn({3, 40, 6, 9}, at::kFloat) * 0.4;
  scaled.select(1, 0).zero_();
  scaled.select(0, 2).zero_();
  scaled.select(1, 7).mul_(6.0);
  const at::Tensor upstream = at::randn({3, 40, 6, 9});
  for (double cap : {1.5, 4.0, 1e9}) {
    at::Tensor a = scaled.clone().requires_grad_(true), b = scaled.clone().requires_grad_(true);
    const at::Tensor fast = CappedRunningSums(a, cap), direct = DirectCappedSums(b, cap);
    EXPECT_LT((fast - direct).abs().max().item<double>(), 1e-5) << "cap " << cap;
    (fast * upstream).sum().backward();
    (direct * upstream).sum().backward();
    EXPECT_TRUE(at::isfinite(a.grad()).all().item<bool>()) << "cap " << cap;
    EXPECT_LT((a.grad() - b.grad()).abs().max().item<double>(), 1e-4) << "cap " << cap;
    if (cap < 2) {
      EXPECT_LE(fast.flatten(2).norm(2, {2}).max().item<double>(), cap * (1 + 1e-5));
    }
  }
}

TEST(TrainForwardTest, DeltaCapBoundsTheDeltaInEveryPathAndMatchesTheTrainForward) {
  ModelConfig c = Config();
  c.sliding_window = 6;
  std::vector<int32_t> ids;
  for (int32_t t = 0; t < 43; ++t) ids.push_back((t * 7 + 3) % 41);
  const Read uncapped = ReadInPieces(*Make(c), ids, /*one_call=*/true);
  ASSERT_EQ(uncapped.delta_norms.size(), 2u);
  c.ttt_delta_cap = 0.3 * std::min(uncapped.delta_norms[0], uncapped.delta_norms[1]);
  auto capped = Make(c);
  EXPECT_LT(MaxGapToIngest(*capped, 2, 37), 2e-5) << "the training forward applies the cap too";
  const Read whole = ReadInPieces(*capped, ids, /*one_call=*/true);
  const Read pieces = ReadInPieces(*capped, ids, /*one_call=*/false);
  ASSERT_EQ(whole.logprobs.size(), pieces.logprobs.size());
  double gap = 0, change = 0;
  for (size_t i = 0; i < whole.logprobs.size(); ++i) {
    gap = std::max(gap, std::abs(whole.logprobs[i] - pieces.logprobs[i]));
    change = std::max(change, std::abs(whole.logprobs[i] - uncapped.logprobs[i]));
  }
  EXPECT_LT(gap, 2e-5) << "one call and decode-sized pieces accumulate the same capped delta";
  EXPECT_GT(change, 1e-3) << "the cap is applied";
  for (const Read* r : {&whole, &pieces}) {
    for (double norm : r->delta_norms) EXPECT_LE(norm, c.ttt_delta_cap * (1 + 1e-5));
  }
}

}  // namespace
}  // namespace ttt::engine
