// Invariants of the engine on a small random model built in C++ (the golden test checks the
// numbers themselves against the independent PyTorch reference).
#include "engine/model.h"
#include "engine/internal/model_tensors.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "engine/sampler.h"
#include "engine/testing/random_weights.h"
#include "engine/testing/tiny_config.h"

namespace ttt::engine {
namespace {

using testing::TinyConfig;  // engine/testing/tiny_config.h: the default tiny shape

// The shared random weights (engine/testing), with or without the TTT tensors.
NamedTensors RandomWeights(const ModelConfig& c, bool with_ttt) {
  testing::RandomWeightOptions options;
  options.with_ttt = with_ttt;
  return testing::RandomWeights(c, options);
}

std::unique_ptr<Model> MakeModel(const ModelOptions& options = {}, bool with_ttt = true,
                                 ModelConfig config = TinyConfig()) {
  auto model = ModelFromWeights(config, RandomWeights(config, with_ttt), options);
  EXPECT_TRUE(model.ok()) << model.status();
  return std::move(model).value();
}

std::vector<int32_t> RandomTokens(int n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> tokens(n);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % vocab);
  return tokens;
}

IngestLogProbs IngestAll(const Model& model, SequenceState& state, std::vector<int32_t> tokens) {
  std::vector<IngestItem> items{{&state, std::move(tokens)}};
  auto result = model.Ingest(absl::MakeSpan(items));
  EXPECT_TRUE(result.ok()) << result.status();
  return result.value()[0];
}

void ExpectClose(const IngestLogProbs& a, const IngestLogProbs& b, double tol) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 1; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], tol) << "token " << i;
}

double MaxDiff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kFloat) - b.to(at::kFloat)).abs().max().item<double>();
}

TEST(ModelTest, TttChangesPredictionsAndEtaZeroIsThePlainModel) {
  auto ttt = MakeModel();
  auto eta_zero = MakeModel({.ttt_lr = 0.0});
  auto plain = MakeModel({}, /*with_ttt=*/false);
  const auto tokens = RandomTokens(40, 53, 1);
  SequenceState s1 = ttt->NewSequence(), s2 = eta_zero->NewSequence(), s3 = plain->NewSequence();
  const auto with = IngestAll(*ttt, s1, tokens);
  const auto zero = IngestAll(*eta_zero, s2, tokens);
  const auto none = IngestAll(*plain, s3, tokens);
  for (size_t i = 1; i < zero.size(); ++i) EXPECT_EQ(zero[i], none[i]) << "token " << i;
  double largest = 0;
  for (size_t i = 1; i < with.size(); ++i)
    largest = std::max<double>(largest, std::abs(with[i] - none[i]));
  EXPECT_GT(largest, 1e-3) << "TTT should change log-probs after the first chunk";
  for (int i = 1; i < 6; ++i) EXPECT_NEAR(with[i], none[i], 1e-5) << "first chunk uses W_down^(0)";
  EXPECT_TRUE(eta_zero->active_ttt_layers().empty());
  EXPECT_EQ(ttt->active_ttt_layers(), (std::vector<int64_t>{0, 2}));
}

TEST(ModelTest, AnySplitEqualsWholeAndSequentialEqualsParallel) {
  auto model = MakeModel();
  const auto tokens = RandomTokens(45, 53, 2);
  SequenceState whole = model->NewSequence();
  const auto expected = IngestAll(*model, whole, tokens);

  SequenceState one_by_one = model->NewSequence();
  IngestLogProbs got;
  for (int32_t t : tokens) got.push_back(IngestAll(*model, one_by_one, {t})[0]);
  ExpectClose(got, expected, 2e-5);

  SequenceState sequential = model->NewSequence();
  std::vector<IngestItem> items{{&sequential, tokens}};
  auto seq = model->Ingest(absl::MakeSpan(items), IngestMode::kSequential);
  ASSERT_TRUE(seq.ok());
  ExpectClose(seq.value()[0], expected, 2e-5);

  for (SequenceState* s : {&one_by_one, &sequential}) {
    EXPECT_EQ(s->position(), 45);
    EXPECT_EQ(s->chunks_applied(), 7);
    EXPECT_EQ(s->PendingTokens(), 3);
    for (size_t k = 0; k < TensorsOf(*s).ttt.size(); ++k) {
      EXPECT_LT(MaxDiff(TensorsOf(*s).ttt[k].delta, TensorsOf(whole).ttt[k].delta), 1e-4);
    }
  }
}

TEST(ModelTest, BatchedEqualsOneAtATime) {
  auto model = MakeModel();
  std::vector<SequenceState> batched(3);
  std::vector<std::vector<int32_t>> streams = {RandomTokens(20, 53, 3), RandomTokens(7, 53, 4),
                                               RandomTokens(13, 53, 5)};
  std::vector<IngestItem> items;
  for (int b = 0; b < 3; ++b) {
    batched[b] = model->NewSequence();
    items.push_back({&batched[b], streams[b]});
  }
  auto together = model->Ingest(absl::MakeSpan(items));
  ASSERT_TRUE(together.ok());
  for (int b = 0; b < 3; ++b) {
    SequenceState alone = model->NewSequence();
    ExpectClose(together.value()[b], IngestAll(*model, alone, streams[b]), 2e-5);
    EXPECT_LT(MaxDiff(TensorsOf(alone).last_logits, TensorsOf(batched[b]).last_logits), 1e-4);
  }
}

TEST(ModelTest, SlidingWindowCoveringTheSequenceEqualsFullAttention) {
  auto full = MakeModel();
  auto wide = MakeModel({.sliding_window = 64});
  auto narrow = MakeModel({.sliding_window = 8});
  const auto tokens = RandomTokens(30, 53, 6);
  SequenceState a = full->NewSequence(), b = wide->NewSequence(), c = narrow->NewSequence();
  const auto lp_full = IngestAll(*full, a, tokens);
  ExpectClose(IngestAll(*wide, b, tokens), lp_full, 1e-6);
  const auto lp_narrow = IngestAll(*narrow, c, tokens);
  EXPECT_GT(std::abs(lp_narrow.back() - lp_full.back()), 1e-6) << "a narrow window must matter";
  EXPECT_EQ(TensorsOf(c).cache[0].keys.size(1), 7)
      << "a window of 8 keeps the 7 keys the next token needs";
}

// A long call attends in blocks of queries, each over the keys its rows can see; one token at a
// time takes the varlen kernel. Both must give the same numbers, block edges included.
TEST(ModelTest, LongWindowedIngestEqualsOneTokenAtATime) {
  auto model = MakeModel({.sliding_window = 5});
  const auto tokens = RandomTokens(400, 53, 8);
  SequenceState one_call = model->NewSequence(), pieces = model->NewSequence(),
                one_by_one = model->NewSequence();
  IngestLogProbs lp_call = IngestAll(*model, one_call, {tokens.begin(), tokens.begin() + 3});
  const auto rest = IngestAll(*model, one_call, {tokens.begin() + 3, tokens.end()});  // 397 rows
  lp_call.insert(lp_call.end(), rest.begin(), rest.end());
  IngestLogProbs lp_pieces;
  for (auto [begin, end] : {std::pair{0, 129}, {129, 257}, {257, 400}}) {
    const auto lp = IngestAll(*model, pieces, {tokens.begin() + begin, tokens.begin() + end});
    lp_pieces.insert(lp_pieces.end(), lp.begin(), lp.end());
  }
  IngestLogProbs lp_one;
  for (int32_t t : tokens) {
    const auto lp = IngestAll(*model, one_by_one, {t});
    lp_one.insert(lp_one.end(), lp.begin(), lp.end());
  }
  ExpectClose(lp_call, lp_one, 2e-5);
  ExpectClose(lp_pieces, lp_one, 2e-5);
  EXPECT_EQ(TensorsOf(one_call).cache[0].keys.size(1), 4) << "a window of 5 keeps 4 keys";
}

// Log-probabilities pass through a workspace slot of kMaxSlotFloats floats in blocks of rows:
// at a vocabulary of 6,000 a block holds 87 rows, so two items of 150 tokens in one call cross
// blocks inside each item and between them; every row must still score its own token.
TEST(ModelTest, RowsScoredInWorkspaceBlocksMatchOneTokenAtATime) {
  ModelConfig config = TinyConfig();
  config.vocab_size = 6000;
  auto model = MakeModel({}, /*with_ttt=*/true, config);
  const auto a = RandomTokens(150, config.vocab_size, 21),
             b = RandomTokens(150, config.vocab_size, 22);
  SequenceState a_call = model->NewSequence(), b_call = model->NewSequence();
  std::vector<IngestItem> items{{&a_call, a}, {&b_call, b}};
  auto together = model->Ingest(absl::MakeSpan(items));
  ASSERT_TRUE(together.ok()) << together.status();
  for (const auto& [tokens, scored] : {std::pair{&a, (*together)[0]}, {&b, (*together)[1]}}) {
    SequenceState one_by_one = model->NewSequence();
    IngestLogProbs lp_one;
    for (int32_t t : *tokens) lp_one.push_back(IngestAll(*model, one_by_one, {t})[0]);
    EXPECT_TRUE(std::isnan(scored[0]));
    ExpectClose(scored, lp_one, 2e-5);
  }
}

TEST(ModelTest, ResetReturnsToInitialFastWeights) {
  auto model = MakeModel();
  SequenceState s = model->NewSequence();
  const auto first = IngestAll(*model, s, RandomTokens(25, 53, 7));
  EXPECT_GT(s.DeltaNorms()[0], 0);
  model->Reset(s);
  EXPECT_EQ(s.position(), 0);
  EXPECT_EQ(s.DeltaNorms()[0], 0);
  ExpectClose(IngestAll(*model, s, RandomTokens(25, 53, 7)), first, 0);
}

TEST(ModelTest, CloneThenDivergeLeavesOriginalUntouched) {
  auto model = MakeModel();
  SequenceState original = model->NewSequence();
  IngestAll(*model, original, RandomTokens(17, 53, 8));
  SequenceState snapshot = original.Clone();
  SequenceState fork = original.Clone();
  IngestAll(*model, fork, RandomTokens(20, 53, 9));
  EXPECT_EQ(original.position(), 17);
  EXPECT_EQ(MaxDiff(TensorsOf(original).ttt[0].delta, TensorsOf(snapshot).ttt[0].delta), 0);
  EXPECT_EQ(MaxDiff(TensorsOf(original).cache[1].keys, TensorsOf(snapshot).cache[1].keys), 0);
  EXPECT_GT(MaxDiff(TensorsOf(fork).ttt[0].delta, TensorsOf(original).ttt[0].delta), 0);
}

TEST(ModelTest, SerializeRoundTripsBitExactly) {
  for (const char* dtype : {"f32", "bf16"}) {
    auto model = MakeModel({.dtype = dtype, .sliding_window = 10});
    SequenceState s = model->NewSequence();
    IngestAll(*model, s, RandomTokens(23, 53, 10));
    auto bytes = EncodeSafetensors(StateTensors(s), s.Metadata());
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    auto file = SafetensorsFile::FromBytes(*bytes, "state");
    ASSERT_TRUE(file.ok()) << file.status();
    auto restored = RestoreSequence(*model, **file);
    ASSERT_TRUE(restored.ok()) << restored.status();
    EXPECT_EQ(restored->position(), s.position());
    EXPECT_EQ(restored->chunks_applied(), s.chunks_applied());
    auto again = EncodeSafetensors(StateTensors(*restored), restored->Metadata());
    EXPECT_EQ(*again, *bytes) << dtype;
    // And it continues exactly as the original would.
    SequenceState copy = std::move(restored).value();
    const auto next = RandomTokens(9, 53, 11);
    const auto a = IngestAll(*model, s, next), b = IngestAll(*model, copy, next);
    for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i], b[i]);
  }
}

TEST(ModelTest, RestoreRejectsAStateFromAnotherModel) {
  auto model = MakeModel();
  ModelConfig other = TinyConfig();
  other.ttt_layers = {1};
  auto other_model = MakeModel({}, true, other);
  SequenceState s = other_model->NewSequence();
  IngestAll(*other_model, s, RandomTokens(8, 53, 12));
  auto file =
      SafetensorsFile::FromBytes(*EncodeSafetensors(StateTensors(s), s.Metadata()), "x.ckpt");
  ASSERT_TRUE(file.ok());
  auto restored = RestoreSequence(*model, **file);
  ASSERT_FALSE(restored.ok());
  EXPECT_EQ(restored.status().code(), absl::StatusCode::kNotFound) << restored.status();
  EXPECT_NE(restored.status().message().find("ttt.0.delta"), std::string::npos);
}

TEST(ModelTest, OutOfVocabularyTokenIsRejectedAndNothingChanges) {
  auto model = MakeModel();
  SequenceState s = model->NewSequence();
  IngestAll(*model, s, {1, 2, 3});
  std::vector<IngestItem> items{{&s, {4, 53}}};
  auto result = model->Ingest(absl::MakeSpan(items));
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(result.status().message().find("token id 53"), std::string::npos);
  EXPECT_EQ(s.position(), 3);
}

TEST(ModelTest, Bf16TracksF32) {
  auto f32 = MakeModel();
  auto bf16 = MakeModel({.dtype = "bf16"});
  const auto tokens = RandomTokens(30, 53, 13);
  SequenceState a = f32->NewSequence(), b = bf16->NewSequence();
  ExpectClose(IngestAll(*bf16, b, tokens), IngestAll(*f32, a, tokens), 0.15);
  EXPECT_EQ(TensorsOf(b).ttt[0].delta.scalar_type(), at::kFloat)
      << "fast weights accumulate in fp32";
}

TEST(ModelTest, TrainingForwardMatchesIngestAndHasGradients) {
  auto model = MakeModel();
  for (auto& [name, t] : NamedWeights(*model)) t.requires_grad_(true);
  const auto tokens = RandomTokens(20, 53, 14);
  at::Tensor ids = at::tensor(std::vector<int64_t>(tokens.begin(), tokens.end())).view({1, 20});
  at::Tensor logits = ForwardTrain(*model, ids);
  ASSERT_EQ(logits.sizes().vec(), (std::vector<int64_t>{1, 20, 53}));
  logits.logsumexp(-1).sum().backward();
  for (auto& [name, t] : NamedWeights(*model)) {
    ASSERT_TRUE(t.grad().defined()) << name;
  }
  at::Tensor conv_grad = NamedWeights(*model)[11].second.grad();
  EXPECT_GT(conv_grad.abs().sum().item<double>(), 0) << "TTT parameters learn";
  SequenceState s = model->NewSequence();
  const auto lp = IngestAll(*model, s, tokens);
  at::Tensor train_lp = at::log_softmax(logits[0], -1).detach();
  for (int i = 1; i < 20; ++i) EXPECT_NEAR(train_lp[i - 1][tokens[i]].item<float>(), lp[i], 1e-5);
}

// A session's results do not depend on what else shares its engine steps: one subject stream fed
// in pieces of mixed lengths (decode steps, short pieces, pieces crossing chunk boundaries, long
// ones) alone, and again with companions at other positions and with other piece lengths, for
// full and windowed attention, TTT on and off.
TEST(ModelTest, ResultsDoNotDependOnWhatSharesTheBatch) {
  struct Variant {
    const char* name;
    ModelOptions options;
  };
  const std::vector<Variant> variants = {
      {"ttt", {}},
      {"ttt window 5", {.sliding_window = 5}},
      {"ttt off", {.ttt_lr = 0.0}},
      {"ttt off window 4", {.ttt_lr = 0.0, .sliding_window = 4}}};
  const std::vector<int> subject_pieces = {1, 1, 3, 1, 17, 1, 2, 5, 1, 1, 9, 1};
  const std::vector<std::vector<int>> companion_pieces = {
      {1, 20, 1, 4, 1, 1, 30, 2, 1, 1, 1, 6},
      {2, 1, 1, 1, 6, 13, 1, 1, 1, 40, 3, 1},
      {0, 1, 0, 2, 1, 1, 0, 1, 7, 1, 0, 1}};  // 0: not in that step
  for (const Variant& v : variants) {
    auto model = MakeModel(v.options);
    const auto subject_tokens = RandomTokens(60, 53, 21);
    SequenceState alone = model->NewSequence(), shared = model->NewSequence();
    std::vector<SequenceState> companions;
    for (int c = 0; c < 3; ++c) {
      companions.push_back(model->NewSequence());
      IngestAll(*model, companions.back(), RandomTokens(5 + 11 * c, 53, 30 + c));
    }
    IngestAll(*model, alone, {subject_tokens.begin(), subject_tokens.begin() + 4});
    IngestAll(*model, shared, {subject_tokens.begin(), subject_tokens.begin() + 4});
    size_t at = 4;
    for (size_t step = 0; step < subject_pieces.size(); ++step) {
      const std::vector<int32_t> piece(subject_tokens.begin() + at,
                                       subject_tokens.begin() + at + subject_pieces[step]);
      at += subject_pieces[step];
      const IngestLogProbs expected = IngestAll(*model, alone, piece);
      std::vector<IngestItem> items;
      for (int c = 0; c < 3; ++c) {
        if (companion_pieces[c][step] == 0) continue;
        items.push_back(
            {&companions[c], RandomTokens(companion_pieces[c][step], 53, 100 * c + step)});
      }
      items.insert(items.begin() + step % (items.size() + 1), IngestItem{&shared, piece});
      auto result = model->Ingest(absl::MakeSpan(items));
      ASSERT_TRUE(result.ok()) << result.status();
      for (size_t i = 0; i < items.size(); ++i) {
        if (items[i].state == &shared) {
          SCOPED_TRACE(std::string(v.name) + ", step " + std::to_string(step));
          ASSERT_EQ(result.value()[i].size(), expected.size());
          for (size_t t = 0; t < expected.size(); ++t) {
            EXPECT_NEAR(result.value()[i][t], expected[t], 2e-5) << "token " << t;
          }
        }
      }
    }
    EXPECT_EQ(shared.position(), alone.position()) << v.name;
    EXPECT_EQ(shared.chunks_applied(), alone.chunks_applied()) << v.name;
    const SequenceTensors& got = TensorsOf(shared);
    const SequenceTensors& want = TensorsOf(alone);
    EXPECT_LT(MaxDiff(got.last_logits, want.last_logits), 1e-4) << v.name;
    for (size_t l = 0; l < want.cache.size(); ++l) {
      ASSERT_EQ(got.cache[l].keys.sizes(), want.cache[l].keys.sizes()) << v.name;
      EXPECT_LT(MaxDiff(got.cache[l].keys, want.cache[l].keys), 1e-4) << v.name;
      EXPECT_LT(MaxDiff(got.cache[l].values, want.cache[l].values), 1e-4) << v.name;
    }
    for (size_t k = 0; k < want.ttt.size(); ++k) {
      EXPECT_LT(MaxDiff(got.ttt[k].delta, want.ttt[k].delta), 1e-4) << v.name;
      ASSERT_EQ(got.ttt[k].pending_z.sizes(), want.ttt[k].pending_z.sizes()) << v.name;
      if (got.ttt[k].pending_z.numel() > 0) {
        EXPECT_LT(MaxDiff(got.ttt[k].pending_z, want.ttt[k].pending_z), 1e-4) << v.name;
      }
    }
  }
}

// The engine grows caches and unfinished chunks in place; tensors handed out before (for a
// checkpoint being written, say) must keep the values they had, chunk completions included.
TEST(ModelTest, TensorsHandedOutAreNotChangedByLaterSteps) {
  auto model = MakeModel({.sliding_window = 9});
  SequenceState s = model->NewSequence();
  IngestAll(*model, s, RandomTokens(4, 53, 40));
  for (int round = 0; round < 3; ++round) {
    const NamedTensors handed_out = StateTensors(s);
    std::vector<at::Tensor> copies;
    for (const auto& [name, t] : handed_out) copies.push_back(t.clone());
    for (int32_t t : RandomTokens(7, 53, 41 + round))
      IngestAll(*model, s, {t});  // completes a chunk
    for (size_t i = 0; i < copies.size(); ++i) {
      ASSERT_EQ(handed_out[i].second.sizes(), copies[i].sizes()) << handed_out[i].first;
      EXPECT_TRUE(at::equal(handed_out[i].second, copies[i])) << handed_out[i].first;
    }
  }
  EXPECT_EQ(s.chunks_applied(), 4);
  // (The rows handed out stay as a read-only prefix: LayerCache.)
  EXPECT_EQ(TensorsOf(s).cache[0].Rows(), 8);
  // The state's buffers (spare rows included) are what it holds.
  int64_t views = 0;
  for (const auto& [name, t] : StateTensors(s)) views += t.nbytes();
  EXPECT_EQ(s.MemoryBytes(), views);
  EXPECT_GE(s.HeldBytes(), views);
}

TEST(SamplerTest, SameSeedSameTokensAndGreedyIsArgmax) {
  at::manual_seed(0);
  const at::Tensor logit_tensor = at::randn({100});
  const int64_t argmax = logit_tensor.argmax().item<int64_t>();
  const absl::Span<const float> logits(logit_tensor.data_ptr<float>(), logit_tensor.numel());
  EXPECT_EQ(Sampler({.temperature = 0}).Sample(logits), argmax);
  EXPECT_EQ(Sampler({.temperature = 1, .top_k = 1}).Sample(logits), argmax);
  Sampler a({.temperature = 0.8, .top_k = 20, .top_p = 0.9, .seed = 42});
  Sampler b({.temperature = 0.8, .top_k = 20, .top_p = 0.9, .seed = 42});
  Sampler c({.temperature = 0.8, .top_k = 20, .top_p = 0.9, .seed = 43});
  std::vector<int32_t> xs, ys, zs;
  for (int i = 0; i < 50; ++i) {
    xs.push_back(a.Sample(logits));
    ys.push_back(b.Sample(logits));
    zs.push_back(c.Sample(logits));
  }
  EXPECT_EQ(xs, ys);
  EXPECT_NE(xs, zs);
  // top_k bounds the candidates.
  at::Tensor top = std::get<1>(logit_tensor.topk(5));
  Sampler k5({.temperature = 5, .top_k = 5, .seed = 1});
  for (int i = 0; i < 100; ++i) {
    EXPECT_TRUE((top == k5.Sample(logits)).any().item<bool>());
  }
}

TEST(SamplerTest, RejectsAbsurdParameters) {
  EXPECT_EQ(ValidateSamplingParams({.temperature = -1}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateSamplingParams({.top_k = -3}).code(), absl::StatusCode::kInvalidArgument);
  auto status = ValidateSamplingParams({.top_p = 1.5});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("top_p"), std::string::npos);
  EXPECT_TRUE(ValidateSamplingParams({}).ok());
}

// Issue 8 item 5: tie_word_embeddings means the head is embed_tokens, as Hugging Face's
// tie_weights() does, even when the file still holds a (stale) lm_head.weight.
TEST(ModelTest, TiedModelIgnoresAStaleLmHeadInTheFile) {
  ModelConfig tied = TinyConfig();
  tied.tie_word_embeddings = true;
  NamedTensors with_head = RandomWeights(tied, true);
  NamedTensors without_head;
  for (const auto& [name, tensor] : with_head) {
    if (name != "lm_head.weight") without_head.emplace_back(name, tensor);
  }
  auto stale = ModelFromWeights(tied, with_head, {});
  auto clean = ModelFromWeights(tied, without_head, {});
  ASSERT_TRUE(stale.ok()) << stale.status();
  ASSERT_TRUE(clean.ok()) << clean.status();
  auto untied = MakeModel();  // the same weights, scored with the file's lm_head
  const auto tokens = RandomTokens(20, 53, 21);
  SequenceState a = (*stale)->NewSequence(), b = (*clean)->NewSequence(), c = untied->NewSequence();
  const auto with_stale = IngestAll(**stale, a, tokens);
  const auto tied_head = IngestAll(**clean, b, tokens);
  const auto file_head = IngestAll(*untied, c, tokens);
  for (size_t i = 1; i < tokens.size(); ++i) EXPECT_EQ(with_stale[i], tied_head[i]) << i;
  double largest = 0;
  for (size_t i = 1; i < tokens.size(); ++i) {
    largest = std::max<double>(largest, std::abs(file_head[i] - tied_head[i]));
  }
  EXPECT_GT(largest, 1e-2) << "the fixture's lm_head must differ from embed_tokens";
  // The head it ignores is no part of the model: not exported, not in the fingerprint.
  for (const auto& [name, tensor] : NamedWeights(**stale)) EXPECT_NE(name, "lm_head.weight");
  EXPECT_EQ((*stale)->fingerprint(), (*clean)->fingerprint());
}

// The fingerprint is a SHA-256 (64 hex digits) of the config and the weights as loaded.
TEST(ModelTest, FingerprintIsSha256OfConfigAndWeights) {
  auto a = MakeModel();
  const std::string& fp = a->fingerprint();
  ASSERT_EQ(fp.size(), 64u) << fp;
  EXPECT_EQ(fp.find_first_not_of("0123456789abcdef"), std::string::npos) << fp;
  EXPECT_EQ(MakeModel()->fingerprint(), fp) << "same config and weights, same fingerprint";
  EXPECT_EQ(MakeModel({.dtype = "bf16"})->fingerprint(), fp) << "serving options do not count";
  // One weight changed by one ulp.
  ModelConfig c = TinyConfig();
  NamedTensors w = RandomWeights(c, true);
  w[3].second = w[3].second.clone();
  float* first = w[3].second.data_ptr<float>();
  *first = std::nextafter(*first, 1e9f);
  auto nudged = ModelFromWeights(c, w, {});
  ASSERT_TRUE(nudged.ok()) << nudged.status();
  EXPECT_NE((*nudged)->fingerprint(), fp);
  // Another config over the same weights.
  c.ttt_chunk = 8;
  auto rechunked = ModelFromWeights(c, RandomWeights(c, true), {});
  ASSERT_TRUE(rechunked.ok()) << rechunked.status();
  EXPECT_NE((*rechunked)->fingerprint(), fp);
}

}  // namespace
}  // namespace ttt::engine
