// The checkpoint file format: a safetensors file holding the SequenceState's tensors
// (engine::EncodeSequence) and, under "__metadata__", the state's own metadata plus ttt-serve's
// keys "tttserve.*": format, model fingerprint, tenant, session and checkpoint ids, creation and
// last-use times, counters and options (JSON), and "tttserve.sha256".
//
// Format 2 (written since issue 9): the SHA-256 covers the tensor table (each tensor's name,
// dtype, shape and byte range, in name order), the data section, and every other metadata entry
// (in key order), each field length-prefixed; so any changed byte that determines the state is
// caught, including a renamed or swapped tensor. Format 1 files (older servers) are still read:
// their checksum covers the data section and the metadata ("key=value\n"), not the table.
// Format 3 (since issue 27): a state whose TTT layers keep low-rank increments on a base delta
// (a fork that learned) holds them as they are ("ttt.<layer>.increments.*", StateTensors), so
// it restores bit for bit; checksum as format 2. A state without increments is still written as
// format 2, which older servers read.
// Exports and imports use the same bytes.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "engine/model.h"
#include "session/checkpoint_format.h"
#include "session/session.h"

namespace ttt::session::internal {

inline constexpr char kCheckpointFormat[] = "tttserve-checkpoint-3";
inline constexpr char kCheckpointFormatV2[] = "tttserve-checkpoint-2";
inline constexpr char kCheckpointFormatV1[] = "tttserve-checkpoint-1";

struct CheckpointMeta {
  std::string model_fingerprint;
  std::string tenant;
  std::string session_id;
  std::string checkpoint_id;
  int64_t created_unix_ms = 0;
  int64_t last_used_unix_ms = 0;  // the session's last use when written (0 in format-1 files)
  Counters counters;
  SessionOptions options;
};

// `meta` as the checkpoint's "tttserve.*" metadata entries, and back (also the form a session's
// head takes on etcd: cluster_store.h). ParseMeta: INVALID_ARGUMENT when the format entry is not
// a ttt-serve checkpoint's, DATA_LOSS when an entry is malformed; `source` names it.
std::map<std::string, std::string> MetaEntries(const CheckpointMeta& meta);
absl::StatusOr<CheckpointMeta> ParseMeta(const std::map<std::string, std::string>& entries,
                                         const std::string& source);

// The file bytes of `state` with `meta`. Engine thread (reads the state's tensors).
absl::StatusOr<std::string> EncodeCheckpoint(const engine::SequenceState& state,
                                             const CheckpointMeta& meta);

// Verifies checkpoint bytes (structure, format, checksum) without decoding the state; returns
// the metadata. `source` names them in messages. DATA_LOSS: truncated, malformed or checksum
// mismatch. INVALID_ARGUMENT: not a ttt-serve checkpoint, or counters out of range.
absl::StatusOr<CheckpointMeta> VerifyCheckpoint(std::string_view bytes, const std::string& source);

struct DecodedCheckpoint {
  engine::SequenceState state;
  CheckpointMeta meta;
};

// VerifyCheckpoint, then decodes the state for `model`. Adds FAILED_PRECONDITION: another
// model's; INVALID_ARGUMENT: a state that does not fit the model (Model::RestoreSequence).
absl::StatusOr<DecodedCheckpoint> DecodeCheckpoint(std::string bytes, const std::string& source,
                                                   const engine::Model& model);

// For listings, from a file's first bytes: how many leading bytes InspectCheckpoint needs
// (8 + the header length), given the first 8 and the file's size. DATA_LOSS when the header
// cannot fit the file or exceeds kMaxCheckpointHeaderBytes.
absl::StatusOr<uint64_t> CheckpointHeadSize(std::string_view first8, uint64_t file_size,
                                            const std::string& source);
// The metadata of a file whose first CheckpointHeadSize() bytes are `head`: the header parses,
// the format is known and the file holds every byte its tensor table names. The checksum is not
// checked (that needs every byte: VerifyCheckpoint).
absl::StatusOr<CheckpointMeta> InspectCheckpoint(std::string_view head, uint64_t file_size,
                                                 const std::string& source);

}  // namespace ttt::session::internal
