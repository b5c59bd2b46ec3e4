// Checks an ImportSession's bytes as they arrive, before the session module parses them, so a
// hostile or mistaken client cannot make the server hold more than a valid state of this model
// could need: the checkpoint format's own header checks (session/checkpoint_format.h: header
// length and JSON nesting, the one set of limits the checkpoint reader also applies) while the
// header streams in, and the total against a limit from the model.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "engine/model.h"
#include "session/checkpoint_format.h"

namespace ttt::server::internal {

struct ImportLimits {
  int64_t max_total_bytes = 0;  // everything the client sends
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
  // cannot be a checkpoint (no '{' after the length). After an error the caller stops.
  absl::Status Append(const std::string& piece);

  // The bytes so far (moved out once, for the session manager).
  std::string Take() { return std::move(bytes_); }
  int64_t size() const { return static_cast<int64_t>(bytes_.size()); }

 private:
  const ImportLimits limits_;
  std::string bytes_;
  session::CheckpointHeaderScanner header_;
};

}  // namespace ttt::server::internal
