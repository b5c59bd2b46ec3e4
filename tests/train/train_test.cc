// train/: the trainer's checkpoint helpers (Status-returning, progress as JSON), the layout of
// its re-reading windows, and the evaluation's per-document losses and paired intervals.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <random>
#include <tuple>

#include "train/checkpoint.h"
#include "train/common.h"
#include "train/eval_lib.h"
#include "train/memory_eval.h"

namespace ttt::train {
namespace {

namespace fs = std::filesystem;

fs::path TempDir(const std::string& name) {
  fs::path dir =
      fs::temp_directory_path() / ("train_test_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// A tiny TTT model's config: 2 layers, TTT in layer 1, chunk 8.
engine::ModelConfig TinyConfig() {
  FreshModelSpec spec;
  spec.vocab_size = 300;
  spec.hidden_size = 16;
  spec.intermediate_size = 24;
  spec.layers = 2;
  spec.ttt_layers = {1};
  spec.ttt_chunk = 8;
  return MakeConfig(spec);
}

// The tiny model with an attention window of 8 and TTT that acts (a fresh model's zero conv makes
// every update 0; its N(0, 0.02) weights predict nearly uniformly): random weights at the scale
// of tests/engine/train_forward_test.cc, so that memory carried across chunks shows.
constexpr int64_t kTinyWindow = 8;
// What attention alone can reach back: 2 layers of 7 earlier tokens each. A token predicted at
// document position >= kTinyReach sees nothing before its document's bos but through the fast
// weights.
constexpr int64_t kTinyReach = 2 * (kTinyWindow - 1) + 1;

engine::ModelConfig TinyWindowConfig() {
  engine::ModelConfig config = TinyConfig();
  config.sliding_window = kTinyWindow;
  return config;
}

engine::NamedTensors ActiveTttWeights() {
  engine::NamedTensors weights = InitWeights(TinyWindowConfig(), 5);
  at::manual_seed(9);
  for (auto& [name, t] : weights) {
    if (name.find("embed_tokens") != std::string::npos) {
      t = at::randn_like(t);
    } else if (name.find("ttt_conv") != std::string::npos) {
      t = at::randn_like(t) * 0.4;
    } else if (t.dim() == 2) {
      t = at::randn_like(t) * 0.3;
    }
  }
  return weights;
}

std::unique_ptr<engine::Model> ActiveTttModel(std::optional<double> eta = std::nullopt) {
  engine::ModelOptions options;
  options.ttt_lr = eta;
  auto model = engine::ModelFromWeights(TinyWindowConfig(), ActiveTttWeights(), options);
  EXPECT_TRUE(model.ok()) << model.status();
  return std::move(model).value();
}

// `sizes.size()` documents of those lengths, ids from `base` on, distinct between corpora.
Corpus MakeCorpus(const std::vector<int>& sizes, int base) {
  Corpus c;
  for (size_t d = 0; d < sizes.size(); ++d) {
    std::vector<int32_t> doc;
    for (int i = 0; i < sizes[d]; ++i)
      doc.push_back(base + (37 * static_cast<int>(d) + 11 * i) % 90);
    c.total_tokens += doc.size();
    c.docs.push_back(std::move(doc));
  }
  return c;
}

// -log p of each token of `tokens` read in one fresh session, in one Ingest call (index 0: NaN).
std::vector<double> OneSessionLosses(const engine::Model& model,
                                     const std::vector<int32_t>& tokens) {
  engine::SequenceState state = model.NewSequence();
  std::vector<engine::IngestItem> items(1);
  items[0].state = &state;
  items[0].tokens = tokens;
  auto lps = model.Ingest(absl::MakeSpan(items));
  EXPECT_TRUE(lps.ok()) << lps.status();
  std::vector<double> out;
  for (float lp : (*lps)[0]) out.push_back(-lp);
  return out;
}

TEST(CheckpointTest, ProgressRoundTripsThroughJson) {
  Progress p;
  p.step = 123;
  p.tokens = 4567890123;
  p.elapsed_s = 98.5;
  p.best_val = 4.75;
  auto back = ProgressFromJson(ProgressToJson(p), "progress.json");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->step, 123);
  EXPECT_EQ(back->tokens, 4567890123);
  EXPECT_DOUBLE_EQ(back->elapsed_s, 98.5);
  EXPECT_DOUBLE_EQ(back->best_val, 4.75);
}

TEST(CheckpointTest, BadProgressSaysWhatIsWrong) {
  auto not_json = ProgressFromJson("{step: 1", "ckpt/progress.json");
  EXPECT_EQ(not_json.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(not_json.status().message().find("ckpt/progress.json: not a JSON object"),
            std::string::npos);
  auto missing = ProgressFromJson(R"({"step": 1, "tokens": 2, "elapsed_s": 3})", "p.json");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(missing.status().message().find("\"best_val\" is missing or not a number"),
            std::string::npos);
  auto mistyped =
      ProgressFromJson(R"({"step": "1", "tokens": 2, "elapsed_s": 3, "best_val": 4})", "p.json");
  EXPECT_NE(mistyped.status().message().find("\"step\" is missing or not a number"),
            std::string::npos);
}

TEST(CheckpointTest, ReadFileAndSyncDirReportFailures) {
  const fs::path dir = TempDir("io");
  auto missing = ReadFile(dir / "nope.json");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("nope.json"), std::string::npos);
  std::ofstream(dir / "a.txt") << "hello";
  auto text = ReadFile(dir / "a.txt");
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(*text, "hello");
  EXPECT_TRUE(SyncDir(dir).ok());
  const absl::Status gone = SyncDir(dir / "missing");
  EXPECT_EQ(gone.code(), absl::StatusCode::kInternal);
  EXPECT_NE(gone.message().find("missing"), std::string::npos);
  fs::remove_all(dir);
}

TEST(CheckpointTest, SavedCheckpointLoadsBackWithItsOptimizer) {
  const fs::path work = TempDir("ckpt");
  const engine::ModelConfig config = TinyConfig();
  auto model = engine::ModelFromWeights(config, InitWeights(config, 5));
  ASSERT_TRUE(model.ok()) << model.status();
  std::vector<torch::Tensor> params;
  for (auto& [name, t] : NamedWeights(**model)) params.push_back(t.requires_grad_(true));
  torch::optim::AdamW opt(params, torch::optim::AdamWOptions(1e-3));
  Progress p;
  p.step = 7;
  EXPECT_TRUE(FindCheckpoint(work).empty());
  ASSERT_TRUE(SaveCheckpoint(work, config, **model, opt, p).ok());
  ASSERT_EQ(FindCheckpoint(work), work / "ckpt");
  auto loaded = LoadCheckpoint(work / "ckpt");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->progress.step, 7);
  EXPECT_EQ(loaded->config.ttt_layers, (std::vector<int64_t>{1}));
  EXPECT_EQ(loaded->weights.size(), NamedWeights(**model).size());
  EXPECT_TRUE(LoadOptimizer(work / "ckpt", opt).ok());
  std::ofstream(work / "ckpt" / "optimizer.pt") << "garbage";
  const absl::Status bad = LoadOptimizer(work / "ckpt", opt);
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.message().find("loading optimizer state"), std::string::npos);
  fs::remove_all(work);
}

// Three documents of 40, 10 and 25 tokens: ids 100.., 200.., 300...
Corpus ThreeDocuments() {
  Corpus corpus;
  const int lengths[] = {40, 10, 25};
  for (int d = 0; d < 3; ++d) {
    std::vector<int32_t> doc;
    for (int i = 0; i < lengths[d]; ++i) doc.push_back(100 * (d + 1) + i);
    corpus.docs.push_back(doc);
    corpus.total_tokens += lengths[d];
  }
  return corpus;
}

TEST(TrainDataTest, DocumentWindowsNeverReachIntoAnotherDocument) {
  const Corpus corpus = ThreeDocuments();
  std::mt19937_64 rng(5);
  DocumentWindows w = SampleDocumentWindows(corpus, 32, 32, /*bos=*/1, /*eos=*/2, 0.25, rng);
  ASSERT_EQ(w.tokens.sizes().vec(), (std::vector<int64_t>{32, 32}));
  int64_t padded_rows = 0, offset_rows = 0;
  for (int64_t b = 0; b < 32; ++b) {
    const bool at_start = w.tokens[b][0].item<int64_t>() == 1;
    const int64_t doc = (w.tokens[b][at_start ? 1 : 0].item<int64_t>()) / 100;
    int64_t counted = 0;
    for (int64_t t = 1; t < 32; ++t) {
      const int64_t id = w.tokens[b][t].item<int64_t>();
      const bool is_counted = w.counted[b][t - 1].item<float>() == 1;
      counted += is_counted;
      if (id != 2) {
        EXPECT_EQ(id / 100, doc) << "row " << b << " position " << t;
      }
      if (!is_counted) {
        EXPECT_EQ(id, 2) << "only padding goes uncounted";
      }
    }
    padded_rows += counted < 31;
    offset_rows += !at_start;
    if (counted < 31) {
      EXPECT_TRUE(at_start) << "a document shorter than the window starts at bos";
      EXPECT_EQ(counted, static_cast<int64_t>(corpus.docs[doc - 1].size()) + 1)
          << "its tokens and the closing eos count";
    }
  }
  EXPECT_GT(padded_rows, 0);
  EXPECT_GT(offset_rows, 0) << "the 40-token document also gives windows inside it";
}

TEST(TrainDataTest, DocumentRereadWindowsMaskTheSameTokensTwice) {
  const Corpus corpus = ThreeDocuments();
  std::mt19937_64 rng(7);
  const int64_t T = 48, R = 8;
  DocumentWindows w = SampleDocumentRereadWindows(corpus, 16, T, R, /*bos=*/1, /*eos=*/2, rng);
  for (int64_t b = 0; b < 16; ++b) {
    ASSERT_EQ(w.tokens[b][0].item<int64_t>(), 1);
    std::vector<int64_t> first, again;
    for (int64_t t = 1; t < T; ++t) {
      if (w.first[b][t - 1].item<float>() == 1) first.push_back(w.tokens[b][t].item<int64_t>());
      if (w.again[b][t - 1].item<float>() == 1) {
        again.push_back(w.tokens[b][t].item<int64_t>());
        EXPECT_EQ(w.counted[b][t - 1].item<float>(), 1);
      }
    }
    const int64_t doc = w.tokens[b][1].item<int64_t>() / 100;
    const int64_t n = static_cast<int64_t>(corpus.docs[doc - 1].size());
    EXPECT_EQ(first, again) << "row " << b;
    EXPECT_EQ(static_cast<int64_t>(first.size()), std::min(R, n) - 1);
    if (n + R < T) {
      // The whole document is read before the re-reading, then padding.
      EXPECT_EQ(w.tokens[b][1 + n].item<int64_t>(), 100 * doc) << "re-read right after it";
      EXPECT_EQ(w.counted.select(0, b).sum().item<float>(), n + R);
    }
  }
}

TEST(TrainDataTest, RereadWindowsRepeatTheDocumentStart) {
  Corpus corpus;
  for (int d = 0; d < 3; ++d) {
    std::vector<int32_t> doc;
    for (int i = 0; i < 40; ++i) doc.push_back(100 * (d + 1) + i);
    corpus.docs.push_back(doc);
    corpus.total_tokens += 40;
  }
  std::mt19937_64 rng(3);
  at::Tensor x = SampleRereadWindows(corpus, 4, 32, 8, /*bos=*/1, /*eos=*/2, rng);
  ASSERT_EQ(x.sizes().vec(), (std::vector<int64_t>{4, 32}));
  for (int64_t b = 0; b < 4; ++b) {
    EXPECT_EQ(x[b][0].item<int64_t>(), 1) << "starts like a session: bos";
    const int64_t first = x[b][1].item<int64_t>();
    EXPECT_EQ(first % 100, 0) << "then the document's first token";
    for (int64_t i = 0; i < 8; ++i) {
      EXPECT_EQ(x[b][24 + i].item<int64_t>(), x[b][1 + i].item<int64_t>()) << "re-read " << i;
    }
  }
}

// Each pair must lie inside one chunk (the TTT target's conv does not reach across a chunk edge),
// every query must be out of the attention window of every pair, and a layout that fits one chunk
// stays as it was (the shipped evaluation's episodes do not change).
TEST(TrainDataTest, RecallPairsNeverStraddleAChunkEdge) {
  Corpus filler;
  std::vector<int32_t> doc;
  for (int i = 0; i < 400; ++i) doc.push_back(300 + i % 50);
  filler.docs.push_back(doc);
  filler.total_tokens = 400;
  for (int64_t chunk : {64, 32, 16}) {
    RecallSpec spec;
    spec.chunk = chunk;
    std::mt19937_64 rng(7);
    const RecallEpisode ep = MakeRecallEpisode(spec, filler, /*bos=*/1, rng);
    ASSERT_EQ(static_cast<int64_t>(ep.tokens.size()), RecallLength(spec)) << "chunk " << chunk;
    EXPECT_EQ(ep.query_begin % chunk, 0);
    int64_t pairs = 0, last_value = 0;
    for (int64_t p = 1; p < ep.filler_begin; ++p) {
      const int64_t t = ep.tokens[p];
      if (t < spec.key_base || t >= spec.key_base + spec.num_keys) continue;
      ++pairs;
      last_value = p + 1;
      EXPECT_EQ(p / chunk, (p + 1) / chunk) << "chunk " << chunk << ": pair at " << p;
      EXPECT_GE(ep.tokens[p + 1], spec.value_base) << "a value follows its key";
    }
    EXPECT_EQ(pairs, spec.pairs) << "chunk " << chunk;
    EXPECT_GE(ep.query_begin - last_value, spec.window) << "chunk " << chunk;
    if (chunk == 64) {
      EXPECT_EQ(ep.filler_begin, 1 + 2 * spec.pairs) << "unchanged when it fits";
    }
  }
}

// Per-document losses: `values[d]` are document d's losses at positions 1, 2, ...
std::vector<PositionLoss> Docs(const std::vector<std::vector<double>>& values) {
  std::vector<PositionLoss> docs(values.size());
  for (size_t d = 0; d < values.size(); ++d) {
    for (size_t i = 0; i < values[d].size(); ++i) {
      docs[d].Add(static_cast<int64_t>(i) + 1, values[d][i]);
    }
  }
  return docs;
}

TEST(EvalTest, BootstrapDifferenceIsThePooledGapWithAnIntervalOverDocuments) {
  // A constant gap: every resample sees it, so the interval is the point.
  const auto base = Docs({{4, 5, 6}, {3, 3}, {5}});
  const auto worse = Docs({{4.5, 5.5, 6.5}, {3.5, 3.5}, {5.5}});
  PairedDifference d = BootstrapDifference(worse, base, 1, 100);
  EXPECT_NEAR(d.diff, 0.5, 1e-12);
  EXPECT_NEAR(d.low, 0.5, 1e-12);
  EXPECT_NEAR(d.high, 0.5, 1e-12);
  // Pooled over tokens, not averaged over documents: 3 positions 1 worse, 1 position equal.
  d = BootstrapDifference(Docs({{2, 2, 2}, {1}}), Docs({{1, 1, 1}, {1}}), 1, 100);
  EXPECT_NEAR(d.diff, 0.75, 1e-12);
  // Half the documents better, half worse by as much: no gap, and an interval either side of 0.
  std::vector<std::vector<double>> a, b;
  for (int k = 0; k < 20; ++k) {
    a.push_back({k % 2 ? 5.0 : 3.0, 4.0});
    b.push_back({4.0, 4.0});
  }
  d = BootstrapDifference(Docs(a), Docs(b), 1, 100);
  EXPECT_NEAR(d.diff, 0.0, 1e-12);
  EXPECT_LT(d.low, -0.05);
  EXPECT_GT(d.high, 0.05);
  // Only the bucket's positions count: position 2 is equal everywhere.
  d = BootstrapDifference(Docs(a), Docs(b), 2, 3);
  EXPECT_NEAR(d.diff, 0.0, 1e-12);
  EXPECT_NEAR(d.high - d.low, 0.0, 1e-12);
  // Nothing scored in the bucket: NaN, not a number that looks like a result.
  EXPECT_TRUE(std::isnan(BootstrapDifference(Docs(a), Docs(b), 50, 60).diff));
}

TEST(EvalTest, PerDocumentLossesAddUpToTheBucketTables) {
  auto model = engine::ModelFromWeights(TinyConfig(), InitWeights(TinyConfig(), 5));
  ASSERT_TRUE(model.ok()) << model.status();
  Corpus corpus;
  for (int d = 0; d < 7; ++d) {
    std::vector<int32_t> doc;
    for (int i = 0; i < 10 + 7 * d; ++i) doc.push_back(10 + (37 * d + 11 * i) % 280);
    corpus.total_tokens += doc.size();
    corpus.docs.push_back(std::move(doc));
  }
  for (bool reset : {false, true}) {
    // Streams of at least 40 tokens: several streams, documents in the middle of each.
    auto r = ScoreStreams(**model, corpus, 40, reset, /*piece=*/6);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->by_document.size(), corpus.docs.size());
    double sum = 0;
    int64_t count = 0;
    for (size_t d = 0; d < corpus.docs.size(); ++d) {
      const auto [s, n] = r->by_document[d].Total(0, 1 << 30);
      EXPECT_EQ(n, static_cast<int64_t>(corpus.docs[d].size())) << "document " << d;
      EXPECT_EQ(r->by_document[d].Total(0, 1).second, 0) << "its bos is not scored";
      sum += s;
      count += n;
    }
    const auto [all_sum, all_count] = r->by_document_position.Total(0, 1 << 30);
    EXPECT_EQ(count, all_count);
    EXPECT_NEAR(sum, all_sum, 1e-6 * std::abs(all_sum));
  }
}

// The carry-over scores each target as one session reading the documents before it would, and
// with TTT off nothing but attention carries over: past its reach the target reads exactly as in
// a fresh session; with TTT on the fast weights carry the other documents there.
TEST(EvalTest, CarryOverIsTheSameTextReadAfterOtherDocumentsMinusReadFresh) {
  const Corpus targets = MakeCorpus({40, 33, 45, 28}, 10);
  const Corpus others = MakeCorpus({30, 26, 35}, 150);
  const auto on = ActiveTttModel();
  auto r = ScoreCarryOver(*on, targets, {&others, &targets}, 2, /*num_docs=*/10, /*piece=*/6);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->fresh.size(), targets.docs.size());
  ASSERT_EQ(r->in_stream.size(), 2u);
  // Target 1 after the unrelated documents 2 and 0 (i + 1 + j mod 3), read in one call.
  std::vector<int32_t> session;
  for (int d : {2, 0}) {
    session.push_back(1);
    session.insert(session.end(), others.docs[d].begin(), others.docs[d].end());
  }
  const size_t start = session.size();
  session.push_back(1);
  session.insert(session.end(), targets.docs[1].begin(), targets.docs[1].end());
  const std::vector<double> direct = OneSessionLosses(*on, session);
  const PositionLoss& scored = r->in_stream[0][1];
  ASSERT_EQ(scored.Total(0, 1 << 30).second, 33) << "every target token once, its bos not";
  for (size_t p = 1; p <= 33; ++p) {
    EXPECT_NEAR(scored.sum[p], direct[start + p], 1e-4) << "position " << p;
  }
  std::vector<int32_t> alone = {1};
  alone.insert(alone.end(), targets.docs[1].begin(), targets.docs[1].end());
  const std::vector<double> fresh = OneSessionLosses(*on, alone);
  for (size_t p = 1; p <= 33; ++p) EXPECT_NEAR(r->fresh[1].sum[p], fresh[p], 1e-4);
  // TTT on: the carried fast weights change the target past the window.
  EXPECT_GT(std::abs(r->Difference(0, kTinyReach, 1 << 30).diff), 1e-3);

  const auto off = ActiveTttModel(/*eta=*/0.0);
  auto o = ScoreCarryOver(*off, targets, {&others, &targets}, 2, 10, 6);
  ASSERT_TRUE(o.ok()) << o.status();
  for (size_t c = 0; c < 2; ++c) {
    const PairedDifference beyond = o->Difference(c, kTinyReach, 1 << 30);
    EXPECT_NEAR(beyond.diff, 0.0, 1e-5) << "corpus " << c;
    EXPECT_NEAR(beyond.low, 0.0, 1e-5);
    EXPECT_NEAR(beyond.high, 0.0, 1e-5);
    EXPECT_GT(std::abs(o->Difference(c, 1, kTinyWindow).diff), 1e-4)
        << "inside the window the previous document's tail is seen";
    EXPECT_EQ(o->in_stream[c][3].Total(kTinyReach, 1 << 30).second, 28 - kTinyReach + 1);
  }
}

// With a fade the session reads each document in turn and its fast weights are scaled between
// them (Model::FadeFastWeights), as a session with fade_at_document_end = 0.5 would.
TEST(EvalTest, CarryOverWithAFadeReadsAsASessionFadedAtEachDocumentEnd) {
  const Corpus targets = MakeCorpus({40, 33, 45, 28}, 10);
  const Corpus others = MakeCorpus({30, 26, 35}, 150);
  const auto on = ActiveTttModel();
  auto r = ScoreCarryOver(*on, targets, {&others}, 2, /*num_docs=*/10, /*piece=*/6, 0.5);
  ASSERT_TRUE(r.ok()) << r.status();
  engine::SequenceState state = on->NewSequence();
  std::vector<double> direct;
  for (const std::vector<int32_t>* doc : {&others.docs[2], &others.docs[0], &targets.docs[1]}) {
    on->FadeFastWeights(state, 0.5);  // a no-op on the fresh state
    std::vector<engine::IngestItem> items(1);
    items[0].state = &state;
    items[0].tokens = {1};
    items[0].tokens.insert(items[0].tokens.end(), doc->begin(), doc->end());
    auto lps = on->Ingest(absl::MakeSpan(items));
    ASSERT_TRUE(lps.ok()) << lps.status();
    direct.clear();
    for (float lp : (*lps)[0]) direct.push_back(-lp);
  }
  const PositionLoss& scored = r->in_stream[0][1];
  ASSERT_EQ(scored.Total(0, 1 << 30).second, 33);
  for (size_t p = 1; p <= 33; ++p) EXPECT_NEAR(scored.sum[p], direct[p], 1e-4) << "position " << p;
  auto faded = ScoreCarryOver(*on, targets, {&others}, 2, 10, 6, 0.25);
  ASSERT_TRUE(faded.ok()) << faded.status();
  EXPECT_NE(faded->in_stream[0][1].sum[30], scored.sum[30]) << "the fraction kept matters";
  auto bad = ScoreCarryOver(*on, targets, {&others}, 2, 10, 6, 1.5);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("must be in [0, 1], got 1.5"), std::string::npos);
}

TEST(EvalTest, CarryOverRefusesATargetThatWouldFollowItself) {
  const auto model = ActiveTttModel();
  const Corpus two = MakeCorpus({20, 20}, 10);
  auto self = ScoreCarryOver(*model, two, {&two}, 2, 10, 8);
  EXPECT_EQ(self.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(self.status().message().find("a target must not follow itself"), std::string::npos);
  const Corpus empty;
  auto none = ScoreCarryOver(*model, two, {&empty}, 1, 10, 8);
  EXPECT_EQ(none.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(none.status().message().find("has only 0"), std::string::npos);
}

// Each distance's fork re-reads as one session reading the document's start and then its head
// would; documents too short for a distance are left out of it; with TTT off the re-read tokens
// past attention's reach score exactly as on the first reading (only fast weights remember).
// Recall through sessions (ttt-eval --mode=compaction) reads the episodes ScoreRecall reads, and
// what `between` does to a session before the queries shows in its results.
TEST(EvalTest, RecallThroughSessionsScoresAsTheBatchedForward) {
  const auto on = ActiveTttModel();
  const Corpus filler = MakeCorpus({120, 90, 150}, 10);
  const RecallResult batched = ScoreRecall(*on, filler, 40);  // two batches: 32 + 8 episodes
  int calls = 0;
  auto sessions =
      ScoreRecallThroughSessions(*on, filler, 40, [&](engine::SequenceState&) { ++calls; });
  ASSERT_TRUE(sessions.ok()) << sessions.status();
  EXPECT_EQ(calls, 40) << "once per episode, between the pairs and the queries";
  EXPECT_NEAR(sessions->value_loss, batched.value_loss, 1e-4);
  EXPECT_NEAR(sessions->accuracy, batched.accuracy, 1e-9);
  auto forgot = ScoreRecallThroughSessions(
      *on, filler, 40, [&](engine::SequenceState& state) { on->FadeFastWeights(state, 0); });
  ASSERT_TRUE(forgot.ok()) << forgot.status();
  EXPECT_GT(std::abs(forgot->value_loss - batched.value_loss), 1e-3)
      << "the pairs sit beyond the window: only the fast weights carried them";
}

TEST(EvalTest, MemoryCurveForksReadTheHeadAgainAfterEachDistance) {
  const Corpus docs = MakeCorpus({70, 45, 26}, 10);
  const auto on = ActiveTttModel();
  constexpr int64_t kLength = 24;
  auto curve = ScoreMemoryCurve(*on, docs, {40, 20, 60, kWholeDocument}, kLength,  // any order
                                /*num_docs=*/5, /*piece=*/7);
  ASSERT_TRUE(curve.ok()) << curve.status();
  ASSERT_EQ(curve->size(), 4u);
  EXPECT_EQ((*curve)[0].distance, 20);
  EXPECT_EQ((*curve)[3].distance, kWholeDocument);
  EXPECT_EQ((*curve)[0].docs, 3);
  EXPECT_EQ((*curve)[1].docs, 2);
  EXPECT_EQ((*curve)[2].docs, 1);
  EXPECT_EQ((*curve)[3].docs, 3);
  EXPECT_TRUE((*curve)[2].again[1].sum.empty()) << "45 tokens are too short for 60";
  auto session = [&](size_t d, int64_t k) {
    std::vector<int32_t> t = {1};
    t.insert(t.end(), docs.docs[d].begin(), docs.docs[d].begin() + k);
    t.insert(t.end(), docs.docs[d].begin(), docs.docs[d].begin() + kLength);
    return t;
  };
  for (auto [point, d, k] :
       {std::tuple<size_t, size_t, int64_t>{1, 0, 40}, {3, 1, 45}, {3, 2, 26}}) {
    const std::vector<double> direct = OneSessionLosses(*on, session(d, k));
    const PositionLoss& again = (*curve)[point].again[d];
    ASSERT_EQ(again.Total(0, 1 << 30).second, kLength - 1) << "targets 1.. of the head";
    for (int64_t j = 1; j < kLength; ++j) {
      EXPECT_NEAR(again.sum[j], direct[1 + k + j], 1e-4) << "document " << d << " at " << k;
    }
  }
  // After the whole document and one document of another corpus (document 1 reads others[0]).
  const Corpus others = MakeCorpus({30, 22}, 150);
  auto after = ScoreMemoryCurve(*on, docs, {20, kWholeDocument}, kLength, 5, 7, {&others, 1});
  ASSERT_TRUE(after.ok()) << after.status();
  ASSERT_EQ(after->size(), 3u);
  const MemoryPoint& last = after->back();
  EXPECT_EQ(last.distance, kWholeDocument);
  EXPECT_EQ(last.others, 1);
  EXPECT_EQ(last.docs, 3);
  std::vector<int32_t> through = {1};
  through.insert(through.end(), docs.docs[1].begin(), docs.docs[1].end());
  through.push_back(1);
  through.insert(through.end(), others.docs[0].begin(), others.docs[0].end());
  const size_t head_at = through.size();
  through.insert(through.end(), docs.docs[1].begin(), docs.docs[1].begin() + kLength);
  const std::vector<double> direct_after = OneSessionLosses(*on, through);
  for (int64_t j = 1; j < kLength; ++j) {
    EXPECT_NEAR(last.again[1].sum[j], direct_after[head_at + j], 1e-4) << "position " << j;
  }
  auto no_whole = ScoreMemoryCurve(*on, docs, {20}, kLength, 5, 7, {&others, 1});
  EXPECT_EQ(no_whole.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(no_whole.status().message().find("needs the whole-document distance"),
            std::string::npos);

  const std::vector<double> first = OneSessionLosses(*on, session(0, 0));
  for (int64_t j = 1; j < kLength; ++j) {
    EXPECT_NEAR((*curve)[0].first[0].sum[j], first[1 + j], 1e-4);
  }
  EXPECT_FALSE(std::isnan((*curve)[1].Difference().diff));
  EXPECT_GT(std::abs((*curve)[1].Difference().diff), 1e-3) << "TTT on remembers something";

  const auto off = ActiveTttModel(/*eta=*/0.0);
  auto off_curve = ScoreMemoryCurve(*off, docs, {20, kWholeDocument}, kLength, 5, 7);
  ASSERT_TRUE(off_curve.ok()) << off_curve.status();
  for (const MemoryPoint& p : *off_curve) {
    for (size_t d = 0; d < docs.docs.size(); ++d) {
      for (int64_t j = kTinyReach; j < kLength; ++j) {
        EXPECT_NEAR(p.again[d].sum[j], p.first[d].sum[j], 1e-4) << "document " << d << " at " << j;
      }
    }
  }
}

TEST(EvalTest, MemoryCurveRefusesADistanceOrLengthItCannotMeasure) {
  const auto model = ActiveTttModel();
  const Corpus docs = MakeCorpus({30}, 10);
  auto zero = ScoreMemoryCurve(*model, docs, {0, 10}, 8, 1, 8);
  EXPECT_EQ(zero.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(zero.status().message().find("distances must be >= 1"), std::string::npos);
  auto short_head = ScoreMemoryCurve(*model, docs, {10}, 1, 1, 8);
  EXPECT_EQ(short_head.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(short_head.status().message().find("at least 2 tokens"), std::string::npos);
}

// The report end to end on two tiny corpora and a model written to disk: the goals, both tables,
// the TTT-off control reading 0 past the window.
TEST(EvalTest, MemoryReportChecksTheGoalsOnEachCorpus) {
  const fs::path dir = TempDir("memory_report");
  ASSERT_TRUE(WriteHfModel(dir, TinyWindowConfig(), ActiveTttWeights(), "f32", {}).ok());
  MemoryReportOptions o;
  o.variants = {{"TTT on", {dir}}, {"TTT off", {dir, 0.0}}};
  o.split = "validation";
  o.distances = {20, 40};
  o.length = 16;
  o.piece = 9;
  o.command = "train_test";
  auto one = MemoryReport(o);
  EXPECT_EQ(one.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(one.status().message().find("two corpora"), std::string::npos);
  o.corpora.push_back({"A", MakeCorpus({50, 30, 44}, 10)});
  o.corpora.push_back({"B", MakeCorpus({35, 41, 25}, 150)});
  auto md = MemoryReport(o);
  ASSERT_TRUE(md.ok()) << md.status();
  for (const std::string& part :
       {std::string("# Memory and carry-over, validation split"), std::string("## Goals"),
        std::string("| re-reading after the whole document >= 15 % lower (moonshot 25 %) | A |"),
        std::string("| carry-over from unrelated documents <= 0.01 nats/token | B |"),
        std::string("| model | corpus | 20 | 40 | whole document | then 2 unrelated documents |"),
        std::string("| re-reading after the document and 2 unrelated documents >= 3 % lower | "
                    "B |"),
        std::string("(3) | "), std::string("(2) | "), std::string("| TTT off | B |")}) {
    EXPECT_NE(md->find(part), std::string::npos) << part << "\n" << *md;
  }
  fs::remove_all(dir);
}

// A report stopped half-way resumes: each (variant, corpus) is kept under a key of everything its
// numbers depend on; a rerun reads them back to the same report, a changed option measures anew.
TEST(EvalTest, MemoryReportResumesFromItsCache) {
  const fs::path dir = TempDir("memory_cache");
  ASSERT_TRUE(WriteHfModel(dir / "model", TinyWindowConfig(), ActiveTttWeights(), "f32", {}).ok());
  MemoryReportOptions o;
  o.variants = {{"TTT on", {dir / "model"}}, {"TTT off", {dir / "model", 0.0}}};
  o.corpora.push_back({"A", MakeCorpus({50, 30, 44}, 10)});
  o.corpora.push_back({"B", MakeCorpus({35, 41, 25}, 150)});
  o.split = "validation";
  o.distances = {20};
  o.length = 16;
  o.cache_dir = dir / "cache";
  auto files = [&] {
    return std::distance(fs::directory_iterator(o.cache_dir), fs::directory_iterator());
  };
  auto first = MemoryReport(o);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(files(), 4) << "two variants x two corpora";
  auto again = MemoryReport(o);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*again, *first);
  EXPECT_EQ(files(), 4);
  o.distances = {20, 40};
  auto longer = MemoryReport(o);
  ASSERT_TRUE(longer.ok()) << longer.status();
  EXPECT_EQ(files(), 8);
  EXPECT_NE(*longer, *first);
  // Fades: the first variant's carry-over again per fraction kept, cached per fraction too.
  o.fade_keeps = {0.5, 0};
  auto faded = MemoryReport(o);
  ASSERT_TRUE(faded.ok()) << faded.status();
  EXPECT_EQ(files(), 12) << "two fractions x two corpora more";
  for (const char* row : {"| 1 | A |", "| 0.5 | A |", "| 0 | B |"}) {
    EXPECT_NE(faded->find(row), std::string::npos) << row << "\n" << *faded;
  }
  auto faded_again = MemoryReport(o);
  ASSERT_TRUE(faded_again.ok()) << faded_again.status();
  EXPECT_EQ(*faded_again, *faded);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace ttt::train
