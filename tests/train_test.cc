// train/: the trainer's checkpoint helpers (Status-returning, progress as JSON), the layout of
// its re-reading windows, and the evaluation's per-document losses and paired intervals.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>

#include "train/checkpoint.h"
#include "train/common.h"
#include "train/eval_lib.h"

namespace ttt::train {
namespace {

namespace fs = std::filesystem;

fs::path TempDir(const std::string& name) {
  fs::path dir = fs::temp_directory_path() / ("train_test_" + name + "_" + std::to_string(::getpid()));
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
  auto mistyped = ProgressFromJson(
      R"({"step": "1", "tokens": 2, "elapsed_s": 3, "best_val": 4})", "p.json");
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
  auto model = engine::Model::FromWeights(config, InitWeights(config, 5));
  ASSERT_TRUE(model.ok()) << model.status();
  std::vector<torch::Tensor> params;
  for (auto& [name, t] : (*model)->NamedWeights()) params.push_back(t.requires_grad_(true));
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
  EXPECT_EQ(loaded->weights.size(), (*model)->NamedWeights().size());
  EXPECT_TRUE(LoadOptimizer(work / "ckpt", opt).ok());
  std::ofstream(work / "ckpt" / "optimizer.pt") << "garbage";
  const absl::Status bad = LoadOptimizer(work / "ckpt", opt);
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.message().find("loading optimizer state"), std::string::npos);
  fs::remove_all(work);
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
  auto model = engine::Model::FromWeights(TinyConfig(), InitWeights(TinyConfig(), 5));
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

}  // namespace
}  // namespace ttt::train
