// What the session layer needs from the engine to decode and to check its input, so that no
// module outside engine/ touches a tensor: the vocabulary rule, and one decode step (the next
// token of a stream and its log-probability).
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/config.h"
#include "engine/sampler.h"
#include "engine/sequence.h"

namespace ttt::engine {

// The vocabulary rule (Model::Ingest applies it too): INVALID_ARGUMENT naming the first token
// outside [0, vocab_size) and its index.
absl::Status ValidateTokens(const ModelConfig& config, absl::Span<const int32_t> tokens);

struct DecodedToken {
  int32_t token = 0;
  float logprob = 0;  // log p(token) under the model, before temperature, top-k and top-p
};

// Draws the token that follows `state` with `sampler` (which advances its generator).
// FAILED_PRECONDITION when the state has consumed no token yet (nothing to continue);
// INTERNAL when LibTorch fails. Does not change the state.
absl::StatusOr<DecodedToken> DecodeNext(const SequenceState& state, Sampler& sampler);

// Whether the state has next-token logits (it has consumed at least one token).
bool HasNextTokenLogits(const SequenceState& state);

}  // namespace ttt::engine
