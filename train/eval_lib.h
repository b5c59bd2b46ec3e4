// What a session sees, measured through the serving path (Model::Ingest, the code the server
// runs): held-out documents streamed into sessions one after another (with or without a reset at
// each document's end), the re-reading test, and recall beyond the attention window. ttt-eval
// (train/ttt_eval.cc) runs these on each model variant and writes docs/eval.md.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/internal/model_tensors.h"
#include "train/common.h"

namespace ttt::train {

// A model as served with optional overrides of its step size, update clip and delta cap.
struct VariantSpec {
  std::filesystem::path dir;
  std::optional<double> eta;               // nullopt = the checkpoint's ttt_lr
  std::optional<double> clip;              // nullopt = the checkpoint's ttt_clip
  std::optional<double> cap;               // nullopt = the checkpoint's ttt_delta_cap
  std::optional<std::string> delta_dtype;  // nullopt = the checkpoint's ttt_delta_dtype
};
absl::StatusOr<std::unique_ptr<engine::Model>> LoadVariant(const VariantSpec& spec);

// Summed next-token loss and count per position (the position of the predicted token).
struct PositionLoss {
  std::vector<double> sum;
  std::vector<int64_t> count;
  void Add(int64_t pos, double nll);
  // Mean over positions [begin, end); NaN when nothing was scored there.
  double Mean(int64_t begin, int64_t end) const;
  double MeanAll() const { return Mean(0, static_cast<int64_t>(sum.size())); }
  // Summed loss and count over positions [begin, end).
  std::pair<double, int64_t> Total(int64_t begin, int64_t end) const;
};

// Held-out documents as sessions see them. The documents, in order, are concatenated into
// streams of at least `min_stream` tokens (each document as bos + its tokens; the remainder
// joins the last stream), all streams fed in parallel through Ingest in pieces of `piece`
// tokens, a piece never crossing a document end. With `reset_at_document_end` the state is reset
// there (as a session created with that option does).
struct StreamResult {
  PositionLoss by_stream_position;        // position in the stream
  PositionLoss by_document_position;      // position in the document (0 = bos)
  std::vector<PositionLoss> by_document;  // the same, each document alone (corpus order)
  std::vector<double> delta_norms_end;    // |delta| per TTT layer at the end of the first stream
};
absl::StatusOr<StreamResult> ScoreStreams(const engine::Model& model, const Corpus& docs,
                                          int64_t min_stream, bool reset_at_document_end,
                                          int64_t piece);

// How far model a's loss over document positions [begin, end) lies above model b's on the same
// documents (a's pooled mean minus b's; negative = a is better), with a 95 % interval from a
// paired bootstrap over documents (`resamples` draws of as many documents, with replacement, from
// a fixed seed): whether a bucket's gap is more than which documents happened to be held out.
struct PairedDifference {
  double diff = 0, low = 0, high = 0;
};
PairedDifference BootstrapDifference(const std::vector<PositionLoss>& a,
                                     const std::vector<PositionLoss>& b, int64_t begin, int64_t end,
                                     int resamples = 2000);

// The re-reading test on the first `num_docs` documents: mean loss on a document's first
// `length` tokens (targets 1 .. length-1) read in a fresh session (bos + those tokens); again
// right after the session has read the whole document (bos + document, then those tokens); and
// again when `others` other documents were read between the document and the re-reading.
struct RereadResult {
  double first = 0, after_doc = 0, after_others = 0;
  int64_t docs = 0, others = 0;
};
absl::StatusOr<RereadResult> ScoreReread(const engine::Model& model, const Corpus& docs,
                                         int64_t num_docs, int64_t length, int64_t others,
                                         int64_t piece);

// Carry-over (issue 28): what reading other documents first costs a document. For each of the
// first `num_docs` targets and each corpus c of `preceding`, a session reads `before` documents
// of c (for target i the documents (i + 1 + j) mod |c|, j = 0 .. before-1: its next neighbours
// when c is `targets` itself, related text; arbitrary documents of another corpus, unrelated
// text), each as bos + text with no reset, then bos + the target; and the target alone in a fresh
// session. The same text scored twice: the difference is what the carried state (the fast
// weights and the attention window's tail) does to it. Positions as in
// StreamResult::by_document (0 = bos, not scored).
struct CarryOverResult {
  std::vector<PositionLoss> fresh;                   // per target, read in a fresh session
  std::vector<std::vector<PositionLoss>> in_stream;  // per preceding corpus, per target
  int64_t before = 0;
  // In-stream (after corpus `c`) minus fresh over target positions [begin, end), pooled over
  // tokens, with a 95 % paired-bootstrap interval over targets (nats/token; positive = the
  // carried state costs).
  PairedDifference Difference(size_t c, int64_t begin, int64_t end) const {
    return BootstrapDifference(in_stream[c], fresh, begin, end);
  }
};
// `keep` < 1: the fast weights faded to that fraction at each document end before the target
// (Model::FadeFastWeights; a session with fade_at_document_end = 1 - keep).
// INVALID_ARGUMENT when a preceding corpus is empty, or is `targets` with no more than `before`
// documents (a target would follow itself), or `keep` is outside [0, 1].
absl::StatusOr<CarryOverResult> ScoreCarryOver(const engine::Model& model, const Corpus& targets,
                                               const std::vector<const Corpus*>& preceding,
                                               int64_t before, int64_t num_docs, int64_t piece,
                                               double keep = 1);

// The memory curve by distance (issue 28): how well a session still knows a document's start
// after reading `distance` tokens of it. For each distance k and each of the first `num_docs`
// documents with at least k tokens: the session reads bos + the first k tokens, then the first
// `length` tokens again, scored on targets 1 .. length-1 of that re-reading; against the same
// targets read first in a fresh session (bos + the first `length` tokens). One session per
// document reads it once; each distance forks it (SequenceState::Clone) for its re-reading.
// kWholeDocument as a distance: after the whole document, every document (the last point).
inline constexpr int64_t kWholeDocument = std::numeric_limits<int64_t>::max();
struct MemoryPoint {
  int64_t distance = 0;
  int64_t others = 0;               // unrelated documents read after the whole document
  int64_t docs = 0;                 // documents long enough for this distance
  std::vector<PositionLoss> again;  // per document (empty when too short), position in head
  std::vector<PositionLoss> first;  // per document, the first reading (same positions)
  // Pooled means over the documents long enough for this distance.
  double FirstMean() const;
  double AgainMean() const;
  PairedDifference Difference() const { return BootstrapDifference(again, first, 0, 1 << 30); }
};
// With `after_others.docs` > 0 (REQUIRES kWholeDocument among the distances), one more point:
// after the whole document the session reads that many documents of `after_others.corpus`
// (document i: its documents (i + 1 + j) mod size, each bos + text), then re-reads the head.
struct AfterOthers {
  const Corpus* corpus = nullptr;
  int64_t docs = 0;
};
absl::StatusOr<std::vector<MemoryPoint>> ScoreMemoryCurve(
    const engine::Model& model, const Corpus& docs, const std::vector<int64_t>& distances,
    int64_t length, int64_t num_docs, int64_t piece, AfterOthers after_others = {});

// Synthetic associative recall (train/common.h) with every pair outside the attention window
// when queried; episodes drawn with a fixed seed from `filler`.
struct RecallResult {
  double accuracy = 0;
  double value_loss = 0;
};
RecallResult ScoreRecall(const engine::Model& model, const Corpus& filler, int64_t episodes);

// The same episodes through sessions (Model::Ingest, and a greedy DecodeNext for each queried
// value), with `between` applied to every session after the pairs and the filler, before the
// first query: what may happen to a session between writing and reading (compaction while idle).
absl::StatusOr<RecallResult> ScoreRecallThroughSessions(
    const engine::Model& model, const Corpus& filler, int64_t episodes,
    const std::function<void(engine::SequenceState&)>& between);

}  // namespace ttt::train
