// The training forward, batched: the same function as Model::Ingest on fresh streams (the serving
// path in engine/model.cc), written for a [batch, T] block of equal-length sequences so that
// attention and the In-Place TTT terms run as a few batched products instead of a loop over
// sequences, and so that a sliding window costs O(T * window) rather than O(T^2).
// Model::ForwardTrain calls it; tests/engine/train_forward_test.cc checks it against Ingest.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include <ATen/ATen.h>

#include "engine/config.h"
#include "engine/internal/safetensors.h"

namespace ttt::engine {

// What the forward needs besides the weights (the Model's serving-time settings).
struct TrainForwardSettings {
  double eta = 0.0;                        // TTT step size; 0 = plain
  std::optional<int64_t> window;           // sliding attention window (nullopt = full)
  std::vector<int64_t> active_ttt_layers;  // layers whose fast-weight term runs
};

// Logits [B, T, vocab] for token ids `tokens` [B, T] (int64), each row a fresh stream starting at
// position 0. `weights` as Model::NamedWeights() lists them (aliases: gradients reach the model).
at::Tensor BatchedTrainForward(const ModelConfig& config, const NamedTensors& weights,
                               const TrainForwardSettings& settings, const at::Tensor& tokens);

// Running sums over the chunks (dim 1) of `scaled` [B, chunks, d, f], each scaled back to Frobenius
// norm `cap` when it is longer: the serving path's accumulated delta under ttt_delta_cap, in a form
// whose cost barely grows with the number of chunks. Used by BatchedTrainForward; public for its
// test.
at::Tensor CappedRunningSums(const at::Tensor& scaled, double cap);

}  // namespace ttt::engine
