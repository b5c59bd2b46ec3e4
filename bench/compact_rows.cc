// engine_bench --only=compact: bench/compact_rows.h. Prints markdown tables; asserts nothing.
#include "bench/compact_rows.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <vector>

#include "engine/compact.h"

namespace ttt::bench {
namespace {

using engine::IngestItem;
using engine::IngestLogProbs;
using engine::KvCompaction;
using engine::Model;
using engine::SequenceState;

constexpr int64_t kPiece = 256;  // a served ingest step's piece
constexpr KvCompaction kKvTiers[] = {KvCompaction::kOff, KvCompaction::kBf16, KvCompaction::kInt8};

// A table row's name for a compaction tier.
const char* TierName(KvCompaction kv) {
  switch (kv) {
    case KvCompaction::kOff:
      return "deltas bf16, spare rows trimmed";
    case KvCompaction::kBf16:
      return "deltas and KV cache bf16";
    case KvCompaction::kInt8:
      return "deltas bf16, KV cache int8 (a scale per row)";
  }
  return "?";
}

void Check(const absl::Status& status) {
  if (!status.ok()) {
    std::cerr << status << "\n";
    std::exit(1);
  }
}

// Reads `tokens` into `state` in pieces of `piece`; the log-probabilities of them all.
IngestLogProbs Read(const Model& model, SequenceState& state, const std::vector<int32_t>& tokens,
                    int64_t piece) {
  IngestLogProbs all;
  for (size_t i = 0; i < tokens.size(); i += piece) {
    std::vector<IngestItem> items{
        {&state, std::vector<int32_t>(tokens.begin() + i,
                                      tokens.begin() + std::min(tokens.size(), i + piece))}};
    auto got = model.Ingest(absl::MakeSpan(items));
    Check(got.status());
    all.insert(all.end(), (*got)[0].begin(), (*got)[0].end());
  }
  return all;
}

std::vector<int32_t> RandomTokens(int64_t n, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> tokens(n);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % vocab);
  return tokens;
}

struct Percentiles {
  double p50 = 0, p99 = 0;
};
Percentiles Of(std::vector<double> seconds) {
  std::sort(seconds.begin(), seconds.end());
  const size_t n = seconds.size();
  const size_t p99 = std::min(n - 1, static_cast<size_t>(std::ceil(0.99 * n)) - 1);
  return {seconds[n / 2], seconds[p99]};
}

// A served session's state after `tokens` tokens (bench/engine_bench.cc's SessionBytes).
SequenceState AdaptedState(const Model& model, int64_t tokens) {
  const int64_t vocab = model.config().vocab_size;
  SequenceState state = model.NewSequence();
  Read(model, state, RandomTokens(tokens, vocab, 4), tokens);
  Read(model, state, RandomTokens(32, vocab, 5), 1);
  return state;
}

}  // namespace

void CompactTable(const std::string& label, const Model& model, int64_t tokens, int reps,
                  const std::function<double()>& now) {
  const SequenceState served = AdaptedState(model, tokens);
  const int64_t fp32 = served.HeldBytes();
  std::printf("\n%s, one session after %lld tokens + 32 decode steps\n", label.c_str(),
              (long long)tokens);
  std::printf(
      "| tier | bytes per session | sessions per GiB | vs fp32 |\n|---|---|---|---|\n"
      "| resident fp32 (as served, spare cache rows included) | %.2f MiB | %.1f | 1.00x |\n",
      fp32 / 1048576.0, 1073741824.0 / fp32);
  for (KvCompaction kv : kKvTiers) {
    // The served state itself, not a Clone (which would drop the cache's spare rows).
    SequenceState state = AdaptedState(model, tokens);
    engine::CompactStates({&state}, {.kv_cache = kv});
    const int64_t bytes = state.HeldBytes();
    std::printf("| compact: %s | %.2f MiB | %.1f | %.2fx |\n", TierName(kv), bytes / 1048576.0,
                1073741824.0 / bytes, double(fp32) / bytes);
  }

  // Reload latency: what the first use of an idle session waits for before its step.
  std::vector<double> compact_s[3], expand_s[3], disk_s;
  for (int r = 0; r < reps; ++r) {
    for (int kv = 0; kv < 3; ++kv) {
      SequenceState state = served.Clone();
      double start = now();
      engine::CompactStates({&state}, {.kv_cache = kKvTiers[kv]});
      compact_s[kv].push_back(now() - start);
      start = now();
      engine::ExpandState(state);
      expand_s[kv].push_back(now() - start);
    }
  }
  const std::filesystem::path file =
      std::filesystem::temp_directory_path() / ("compact_bench_" + std::to_string(::getpid()));
  {
    auto bytes = engine::EncodeSequence(served, served.Metadata());
    Check(bytes.status());
    std::ofstream(file, std::ios::binary) << *bytes;
  }
  for (int r = 0; r < reps; ++r) {
    const double start = now();
    std::ifstream in(file, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    auto restored = model.RestoreSequence(std::move(bytes), file.string());
    Check(restored.status());
    disk_s.push_back(now() - start);
  }
  const int64_t file_bytes = static_cast<int64_t>(std::filesystem::file_size(file));
  std::filesystem::remove(file);
  std::printf(
      "\n| tier | reload before the first step, p50 | p99 | compaction, p50 | p99 |\n"
      "|---|---|---|---|---|\n| resident fp32 | 0 (nothing to do) | 0 | | |\n");
  for (int kv = 0; kv < 3; ++kv) {
    const Percentiles e = Of(expand_s[kv]), c = Of(compact_s[kv]);
    std::printf("| compact (%s): expand to fp32 | %.3f ms | %.3f ms | %.3f ms | %.3f ms |\n",
                TierName(kKvTiers[kv]), e.p50 * 1e3, e.p99 * 1e3, c.p50 * 1e3, c.p99 * 1e3);
  }
  const Percentiles d = Of(disk_s);
  std::printf(
      "| evicted: read the %.2f MiB file (page cache) and restore | %.3f ms | %.3f ms | | |\n",
      file_bytes / 1048576.0, d.p50 * 1e3, d.p99 * 1e3);
  std::printf("(%d reloads each)\n", reps);
}

namespace {

// Per document: the continuation's summed log-probability difference (compacted - never) and its
// token count; printed as one row with a paired bootstrap over documents.
struct QualityRow {
  std::vector<double> doc_diff, doc_tokens;
  double base_sum = 0, other_sum = 0, abs_sum = 0, worst = 0;
  int64_t count = 0;

  void AddDocument(const IngestLogProbs& want, const IngestLogProbs& got) {
    double diff = 0, tokens = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      if (std::isnan(want[i])) continue;  // a stream's first token has no context
      ++tokens;
      base_sum -= want[i];
      other_sum -= got[i];
      diff += double(want[i]) - got[i];  // loss with - loss without
      abs_sum += std::fabs(double(got[i]) - want[i]);
      worst = std::max(worst, std::fabs(double(got[i]) - want[i]));
      ++count;
    }
    doc_diff.push_back(diff);
    doc_tokens.push_back(tokens);
  }

  void Print(const std::string& label) const {
    std::mt19937 rng(1);
    std::uniform_int_distribution<size_t> pick(0, doc_diff.size() - 1);
    std::vector<double> resampled;
    for (int b = 0; b < 2000; ++b) {
      double diff = 0, tokens = 0;
      for (size_t i = 0; i < doc_diff.size(); ++i) {
        const size_t d = pick(rng);
        diff += doc_diff[d];
        tokens += doc_tokens[d];
      }
      resampled.push_back(diff / tokens);
    }
    std::sort(resampled.begin(), resampled.end());
    std::printf("| %s | %lld | %.5f | %.5f | %+.6f | [%+.6f, %+.6f] | %.2e | %.2e |\n",
                label.c_str(), (long long)count, base_sum / count, other_sum / count,
                (other_sum - base_sum) / count, resampled[50], resampled[1949], abs_sum / count,
                worst);
  }
};

std::vector<std::vector<int32_t>> LoadDocuments(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    std::cerr << "cannot open " << path << "\n";
    std::exit(1);
  }
  std::vector<std::vector<int32_t>> docs;
  for (std::string line; std::getline(in, line);) {
    std::istringstream fields(line);
    std::vector<int32_t> doc;
    for (int64_t id; fields >> id;) doc.push_back(static_cast<int32_t>(id));
    if (doc.size() >= 4) docs.push_back(std::move(doc));
  }
  return docs;
}

}  // namespace

void CompactQuality(const Model& model, const std::string& valid_path, int64_t prefix) {
  const std::vector<std::vector<int32_t>> docs = LoadDocuments(valid_path);
  std::printf(
      "\n%s: against the same session never compacted, loss in nats/token, 95 %% interval from "
      "a paired bootstrap over its %zu documents\n",
      valid_path.c_str(), docs.size());
  std::printf(
      "| compaction | tokens scored | loss without | loss with | change | 95 %% interval | mean "
      "abs change of a token's logprob | max |\n|---|---|---|---|---|---|---|---|\n");
  // Idle compaction: once, after the first half of each document (at most `prefix` tokens);
  // then the rest (at most `prefix` tokens) scored, or the first half read again (re-reading).
  for (bool reread : {false, true}) {
    for (KvCompaction kv : kKvTiers) {
      QualityRow row;
      for (const std::vector<int32_t>& doc : docs) {
        const int64_t half = std::min<int64_t>(doc.size() / 2, prefix);
        const std::vector<int32_t> first(doc.begin(), doc.begin() + half);
        const std::vector<int32_t> rest =
            reread
                ? first
                : std::vector<int32_t>(doc.begin() + half,
                                       doc.begin() + std::min<int64_t>(doc.size(), half + prefix));
        SequenceState base = model.NewSequence();
        Read(model, base, first, kPiece);
        SequenceState compacted = base.Clone();
        engine::CompactStates({&compacted}, {.kv_cache = kv});
        engine::ExpandState(compacted);
        const IngestLogProbs want = Read(model, base, rest, kPiece);
        row.AddDocument(want, Read(model, compacted, rest, kPiece));
      }
      row.Print(std::string("idle once, ") + TierName(kv) +
                (reread ? ", then the first half re-read" : ""));
    }
  }
  // Issue 26 #5, simulated: deltas stored in bf16 while active (each chunk's update added in
  // fp32 to the stored delta, the sum rounded to bf16 when stored), i.e. compact + expand after
  // every chunk; both sessions read in pieces of one chunk, the whole document (at most 2 x
  // `prefix` tokens) scored.
  QualityRow active;
  const int64_t chunk = model.config().ttt_chunk;
  for (const std::vector<int32_t>& doc : docs) {
    const std::vector<int32_t> tokens(doc.begin(),
                                      doc.begin() + std::min<int64_t>(doc.size(), 2 * prefix));
    SequenceState base = model.NewSequence(), rounded = model.NewSequence();
    const IngestLogProbs want = Read(model, base, tokens, chunk);
    IngestLogProbs got;
    for (size_t i = 0; i < tokens.size(); i += chunk) {
      const std::vector<int32_t> piece(tokens.begin() + i,
                                       tokens.begin() + std::min(tokens.size(), i + chunk));
      const IngestLogProbs part = Read(model, rounded, piece, chunk);
      got.insert(got.end(), part.begin(), part.end());
      engine::CompactStates({&rounded}, {.kv_cache = KvCompaction::kOff});
      engine::ExpandState(rounded);
    }
    active.AddDocument(want, got);
  }
  active.Print("active: deltas stored in bf16 after every chunk (issue 26 #5, simulated)");
}

}  // namespace ttt::bench
