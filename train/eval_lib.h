// What a session sees, measured through the serving path (Model::Ingest, the code the server
// runs): held-out documents streamed into sessions one after another (with or without a reset at
// each document's end), the re-reading test, and recall beyond the attention window. ttt-eval
// (train/ttt_eval.cc) runs these on each model variant and writes docs/eval.md.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model.h"
#include "train/common.h"

namespace ttt::train {

// A model as served with optional overrides of its step size, update clip and delta cap.
struct VariantSpec {
  std::filesystem::path dir;
  std::optional<double> eta;   // nullopt = the checkpoint's ttt_lr
  std::optional<double> clip;  // nullopt = the checkpoint's ttt_clip
  std::optional<double> cap;   // nullopt = the checkpoint's ttt_delta_cap
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
  PositionLoss by_stream_position;    // position in the stream
  PositionLoss by_document_position;  // position in the document (0 = bos)
  std::vector<PositionLoss> by_document;  // the same, each document alone (corpus order)
  std::vector<double> delta_norms_end;  // |delta| per TTT layer at the end of the first stream
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
                                     const std::vector<PositionLoss>& b, int64_t begin,
                                     int64_t end, int resamples = 2000);

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

// Synthetic associative recall (train/common.h) with every pair outside the attention window
// when queried; episodes drawn with a fixed seed from `filler`.
struct RecallResult {
  double accuracy = 0;
  double value_loss = 0;
};
RecallResult ScoreRecall(const engine::Model& model, const Corpus& filler, int64_t episodes);

}  // namespace ttt::train
