// Model::CheckSequence: the consistency rules a restored SequenceState must meet, beyond the
// tensor shapes RestoreSequence checks as it loads them. A state from a checkpoint file is
// input like any other: its counters must agree with its tensors and with this model, or later
// work on it would fail deep in the engine (an impossible position, a cache the window cannot
// hold).
#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "engine/internal/sequence_tensors.h"
#include "engine/model.h"

namespace ttt::engine {

namespace {

bool AllFinite(const at::Tensor& t) {
  return !t.defined() || t.numel() == 0 || at::isfinite(t).all().item<bool>();
}

}  // namespace

absl::Status Model::CheckSequence(const SequenceState& sequence, const std::string& source) const {
  const SequenceTensors& state = TensorsOf(sequence);
  auto invalid = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", why));
  };
  if (state.position < 0 || state.position > kMaxPosition) {
    return invalid(
        absl::StrCat("position ", state.position, " is outside [0, ", kMaxPosition, "]"));
  }
  const std::optional<int64_t> window = attention_window();
  const int64_t cached =
      window ? std::min(state.position, std::max<int64_t>(*window - 1, 0)) : state.position;
  for (size_t l = 0; l < state.cache.size(); ++l) {
    const LayerCache& c = state.cache[l];
    const int64_t values = c.SharedRows() + c.values.size(1);  // a restored cache: no prefix
    if (c.Rows() != cached || values != cached) {
      return invalid(absl::StrCat("layer ", l, " caches ", c.Rows(), " keys and ", values,
                                  " values; a stream at position ", state.position, " holds ",
                                  cached));
    }
    if (!AllFinite(c.keys) || !AllFinite(c.values)) {
      return invalid(absl::StrCat("layer ", l, "'s cache holds a value that is not finite"));
    }
  }
  const int64_t chunk = config_.ttt_chunk;
  const int64_t chunks = state.ttt.empty() || chunk <= 0 ? 0 : state.position / chunk;
  if (state.chunks_applied != chunks) {
    return invalid(absl::StrCat("chunks_applied ", state.chunks_applied, " does not match ", chunks,
                                " completed chunks at position ", state.position));
  }
  for (const TttLayerState& t : state.ttt) {
    if (!AllFinite(t.delta) || !AllFinite(t.pending_z) || !AllFinite(t.pending_x0) ||
        !AllFinite(t.increments.v) || !AllFinite(t.increments.z)) {
      return invalid(absl::StrCat("TTT layer ", t.layer, " holds a value that is not finite"));
    }
    // Increments are the chunks folded since a fork: never more than the stream completed.
    const auto increments = static_cast<int64_t>(t.increments.scales.size());
    if (increments > state.chunks_applied) {
      return invalid(absl::StrCat("TTT layer ", t.layer, " holds ", increments,
                                  " increments, more than the ", state.chunks_applied,
                                  " chunks applied"));
    }
  }
  if (state.last_logits.defined() != (state.position > 0)) {
    return invalid(absl::StrCat("'last_logits' must be present exactly when the position (",
                                state.position, ") is above 0"));
  }
  if (!AllFinite(state.last_logits))
    return invalid("'last_logits' holds a value that is not finite");
  return absl::OkStatus();
}

}  // namespace ttt::engine
