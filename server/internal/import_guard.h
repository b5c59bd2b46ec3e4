// Checks an ImportSession's bytes as they arrive, before the session module parses them, so a
// hostile or mistaken client cannot make the server hold more than a valid state of this model
// could need: the 8-byte safetensors header length against a limit from the model, the header's
// JSON nesting depth while it streams in, and the total against a limit from the model.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "engine/model.h"

namespace ttt::server::internal {

struct ImportLimits {
  int64_t max_header_bytes = 0;  // the safetensors JSON header
  int64_t max_total_bytes = 0;   // everything the client sends
  int max_header_depth = 0;      // nesting of JSON objects and arrays in the header
};

// Limits for a state of `model`: its tensor table and metadata, its tensors at their largest
// (engine::MaxStateSize; for a model without an attention window, the KV cache that fits in
// `memory_budget_bytes`, since no larger session could be held), plus slack; never more than
// `max_import_bytes`.
ImportLimits ImportLimitsFor(const engine::Model& model, int64_t memory_budget_bytes,
                             int64_t max_import_bytes);

// Accumulates one import's bytes. Thread-compatible (one reactor).
class ImportGuard {
 public:
  explicit ImportGuard(const ImportLimits& limits) : limits_(limits) {}

  // Appends `piece` after checking it. RESOURCE_EXHAUSTED names the limit the bytes exceed;
  // INVALID_ARGUMENT for a header nested deeper than a checkpoint's; DATA_LOSS when the bytes
  // cannot be a safetensors file (no '{' after the length). After an error the caller stops.
  absl::Status Append(const std::string& piece);

  // The bytes so far (moved out once, for the session manager).
  std::string Take() { return std::move(bytes_); }
  int64_t size() const { return static_cast<int64_t>(bytes_.size()); }

 private:
  absl::Status CheckHeaderLength();
  absl::Status ScanHeader(size_t from, size_t to);

  const ImportLimits limits_;
  std::string bytes_;
  int64_t header_bytes_ = -1;  // from the first 8 bytes; -1 until they arrived
  size_t scanned_ = 8;         // header bytes scanned so far end here
  int depth_ = 0;
  bool in_string_ = false;
  bool escaped_ = false;
};

}  // namespace ttt::server::internal
