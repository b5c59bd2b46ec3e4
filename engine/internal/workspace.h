// Per-thread float buffers that a short engine step keeps its activations in (the short-step
// forward, the log-probabilities after it), reused from step to step so that a decode step
// allocates no tensor: each slot grows to the largest step its thread has run and stays.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include <ATen/ATen.h>

namespace ttt::engine::internal {

enum class Slot {
  kHidden, kEmbeddings, kNormed, kQ, kK, kV, kAttended, kProjected, kGate, kUp, kFast,
  kAngles, kCos, kSin, kRotated, kLogits, kPredictors, kLogProbs, kCount
};

// Thread-compatible; ForThisThread hands each thread its own.
class Workspace {
 public:
  static Workspace& ForThisThread();

  // `elements` floats of `slot` (contents unspecified). Valid until the slot is asked for more
  // than it holds: ask for each slot once per step, at its largest size.
  float* Floats(Slot slot, int64_t elements);
  // A contiguous float32 CPU tensor of `sizes` over the slot's floats (no copy; valid as Floats).
  at::Tensor Tensor(Slot slot, at::IntArrayRef sizes);

 private:
  std::array<std::vector<float>, static_cast<size_t>(Slot::kCount)> buffers_;
};

// A float32 CPU tensor of `sizes` over `data` (a view: no copy, no ownership).
at::Tensor FloatView(float* data, at::IntArrayRef sizes);

}  // namespace ttt::engine::internal
