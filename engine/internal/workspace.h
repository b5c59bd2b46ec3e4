// Per-thread float buffers that a short engine step keeps its activations in (the short-step
// forward, the log-probabilities after it), reused from step to step so that a decode step
// allocates nothing: each slot grows to the largest step its thread has run (up to
// kMaxSlotFloats) and stays, with the view it last handed out; larger requests get a tensor of
// their own, freed after the step.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include <ATen/ATen.h>

namespace ttt::engine::internal {

enum class Slot {
  kHidden,
  kEmbeddings,
  kNormed,
  kQ,
  kK,
  kV,
  kAttended,
  kProjected,
  kGate,
  kUp,
  kFast,
  kAngles,
  kCos,
  kSin,
  kRotated,
  kLogits,
  kPredictors,
  kLogProbs,
  kConvolved,
  kTargets,
  kChunkUpdates,
  kCount
};

// Thread-compatible; ForThisThread hands each thread its own.
class Workspace {
 public:
  // What a slot keeps between steps (2 MiB): a thread holds at most kCount of them.
  static constexpr int64_t kMaxSlotFloats = int64_t{1} << 19;

  static Workspace& ForThisThread();

  // A contiguous float32 CPU tensor of `sizes` (contents unspecified): a view of the slot's
  // floats, valid until the slot is asked for more than it holds (ask for each slot once per
  // step, at its largest size), or past kMaxSlotFloats a tensor of its own. The same view as
  // the slot's last one when neither the sizes nor the floats changed (no allocation), so
  // callers must not change a view's metadata in place.
  at::Tensor Tensor(Slot slot, at::IntArrayRef sizes);

 private:
  std::array<std::vector<float>, static_cast<size_t>(Slot::kCount)> buffers_;
  std::array<at::Tensor, static_cast<size_t>(Slot::kCount)> views_;  // each slot's last view
};

// A float32 CPU tensor of `sizes` over `data` (a view: no copy, no ownership).
at::Tensor FloatView(float* data, at::IntArrayRef sizes);
// The same over `data` inside `owner`, keeping `owner` alive as long as the view.
at::Tensor FloatView(const at::Tensor& owner, float* data, at::IntArrayRef sizes);

}  // namespace ttt::engine::internal
