// The checkpoint file format: a safetensors file holding the SequenceState's tensors
// (SequenceState::ToTensors) and, under "__metadata__", the state's own metadata plus ttt-serve's
// keys "tttserve.*": format, model fingerprint, tenant, session and checkpoint ids, creation time,
// counters and options (JSON), and "tttserve.sha256": SHA-256 over the data section followed by
// every other metadata entry ("key=value\n", in key order), so any flipped byte of tensors or
// metadata is caught. Exports and imports use the same bytes.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "engine/model.h"
#include "session/session.h"

namespace ttt::session::internal {

inline constexpr char kCheckpointFormat[] = "tttserve-checkpoint-1";

struct CheckpointMeta {
  std::string model_fingerprint;
  std::string tenant;
  std::string session_id;
  std::string checkpoint_id;
  int64_t created_unix_ms = 0;
  Counters counters;
  SessionOptions options;
};

// The file bytes of `state` with `meta`. Engine thread (reads the state's tensors).
absl::StatusOr<std::string> EncodeCheckpoint(const engine::SequenceState& state,
                                             const CheckpointMeta& meta);

struct DecodedCheckpoint {
  engine::SequenceState state;
  CheckpointMeta meta;
};

// Verifies and decodes checkpoint bytes for `model`; `source` names them in messages.
// DATA_LOSS: truncated, malformed or checksum mismatch. INVALID_ARGUMENT: not a ttt-serve
// checkpoint, or shapes that do not fit the model. FAILED_PRECONDITION: another model's.
absl::StatusOr<DecodedCheckpoint> DecodeCheckpoint(std::string bytes, const std::string& source,
                                                   const engine::Model& model);

// Reads only the metadata (for listings); checks the format but not the checksum.
absl::StatusOr<CheckpointMeta> ReadCheckpointMeta(const std::string& path);

}  // namespace ttt::session::internal
