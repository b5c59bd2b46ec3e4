// The Model's tensor face, for LibTorch programs only: the trainer (train/), the benchmarks
// (bench/), engine tests and fuzz targets. Serving code (session/, server/) uses engine/model.h,
// which shows no tensor; tests/header_check keeps it so.
#pragma once

#include <memory>

#include <ATen/ATen.h>  // not <torch/torch.h>: a third of the compile time

#include "absl/status/statusor.h"
#include "engine/config.h"
#include "engine/internal/safetensors.h"
#include "engine/internal/sequence_tensors.h"
#include "engine/model.h"

namespace ttt::engine {

// Builds a model from tensors named as in Hugging Face checkpoints (Model::Load's errors).
absl::StatusOr<std::unique_ptr<Model>> ModelFromWeights(ModelConfig config,
                                                        const NamedTensors& weights,
                                                        const ModelOptions& options = {});

// Named parameters as in a Hugging Face checkpoint (for the trainer and for writing models).
// The tensors alias the model's own: the trainer sets requires_grad and optimises them.
NamedTensors NamedWeights(const Model& model);

// Training forward: logits [B, T, vocab] for fresh streams `tokens` [B, T] (int64), parallel
// form, differentiable in the weights (call outside InferenceMode).
at::Tensor ForwardTrain(const Model& model, const at::Tensor& tokens);

// Where the model runs and the dtype of its weights and KV cache.
at::Device ModelDevice(const Model& model);
at::ScalarType ModelDtype(const Model& model);
// How the model stores an active session's delta (kFloat or kBFloat16; ModelConfig's
// ttt_delta_dtype after the ModelOptions override).
at::ScalarType ModelDeltaDtype(const Model& model);

// Model::RestoreSequence over a file already open (its tensors and "state.*" metadata, as
// StateTensors and SequenceState::Metadata wrote them). INVALID_ARGUMENT names what does not fit.
absl::StatusOr<SequenceState> RestoreSequence(const Model& model, const SafetensorsFile& file);

}  // namespace ttt::engine
