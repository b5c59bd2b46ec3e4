// Next-token sampling: greedy, temperature, top-k, top-p; seeded and deterministic (the same
// seed and logits give the same tokens on every machine: the draw is our own, not LibTorch's).
#pragma once

#include <cstdint>
#include <random>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace ttt::engine {

struct SamplingParams {
  double temperature = 1.0;  // 0 = greedy
  int64_t top_k = 0;         // 0 = all
  double top_p = 1.0;        // nucleus mass in (0, 1]
  uint64_t seed = 0;
};

// INVALID_ARGUMENT naming the field when a parameter is negative, NaN or absurd.
absl::Status ValidateSamplingParams(const SamplingParams& params);

// Draws tokens for one stream. Thread-compatible.
class Sampler {
 public:
  explicit Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {}
  // REQUIRES: logits is not empty (one per vocabulary entry). Returns the chosen token id.
  int32_t Sample(absl::Span<const float> logits);

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
};

}  // namespace ttt::engine
