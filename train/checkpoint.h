// The trainer's resumable checkpoint: a folder holding the model config, the weights, the
// optimizer state and the progress counters, written beside the current one and swapped in by
// rename, so a crash at any point leaves one complete checkpoint to resume from.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include <torch/torch.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/config.h"
#include "engine/internal/model_tensors.h"
#include "engine/internal/safetensors.h"

namespace ttt::train {

// Training state that survives a restart besides weights and optimizer.
struct Progress {
  int64_t step = 0;
  int64_t tokens = 0;
  double elapsed_s = 0;
  double best_val = 1e30;
};

std::string ProgressToJson(const Progress& p);
// INVALID_ARGUMENT naming `source` when the text is not JSON or a counter is missing or mistyped.
absl::StatusOr<Progress> ProgressFromJson(const std::string& text, const std::string& source);

// The whole file. NOT_FOUND when it cannot be opened, INTERNAL when reading fails.
absl::StatusOr<std::string> ReadFile(const std::filesystem::path& path);

// fsyncs a directory so that a rename in it is durable. INTERNAL on failure.
absl::Status SyncDir(const std::filesystem::path& dir);

// Writes <work>/ckpt.tmp/{config.json, weights.safetensors, optimizer.pt, progress.json}, then
// swaps it in for <work>/ckpt (the old one is kept as ckpt.old until the swap is done).
absl::Status SaveCheckpoint(const std::filesystem::path& work, const engine::ModelConfig& config,
                            const engine::Model& model, torch::optim::Optimizer& opt,
                            const Progress& progress);

// The complete checkpoint folder to resume from (ckpt, else ckpt.old), or empty when none.
std::filesystem::path FindCheckpoint(const std::filesystem::path& work);

// A checkpoint's config, fp32 weights and progress (the optimizer state is loaded separately,
// once the optimizer exists: LoadOptimizer).
struct Checkpoint {
  engine::ModelConfig config;
  engine::NamedTensors weights;
  Progress progress;
};
absl::StatusOr<Checkpoint> LoadCheckpoint(const std::filesystem::path& dir);
absl::Status LoadOptimizer(const std::filesystem::path& dir, torch::optim::Optimizer& opt);

}  // namespace ttt::train
