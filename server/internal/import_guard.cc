// Incremental checks of ImportSession bytes (see import_guard.h).
#include "server/internal/import_guard.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "engine/state_size.h"

namespace ttt::server::internal {

namespace {
// A checkpoint header: per tensor an entry like {"dtype":"F32","shape":[..],"data_offsets":[..]}
// under a name of a few dozen bytes; the metadata: counters, options (up to 32 labels of 256-byte
// keys and values, JSON-escaped), ids and the checksum. Generous on both; the format's own
// limit (kMaxCheckpointHeaderBytes) caps it.
constexpr int64_t kHeaderBytesPerTensor = 512;
constexpr int64_t kHeaderMetadataBytes = 128 << 10;
// Alignment padding, rounding: the data section of a valid state is never this much larger
// than its tensors.
constexpr int64_t kDataSlackBytes = 1 << 20;
}  // namespace

ImportLimits ImportLimitsFor(const engine::Model& model, int64_t memory_budget_bytes,
                             int64_t max_import_bytes) {
  const engine::StateSizeBound bound = engine::MaxStateSize(model);
  const int64_t header_bytes =
      std::min<int64_t>(bound.tensor_count * kHeaderBytesPerTensor + kHeaderMetadataBytes,
                        static_cast<int64_t>(session::kMaxCheckpointHeaderBytes));
  const int64_t per_token = std::max<int64_t>(bound.bytes_per_cached_token, 1);
  const int64_t cached_tokens =
      bound.max_cached_tokens.value_or(std::max<int64_t>(memory_budget_bytes, 0) / per_token);
  const int64_t total = 8 + header_bytes + bound.BytesWith(cached_tokens) + kDataSlackBytes;
  ImportLimits limits;
  limits.max_total_bytes = std::min(total, max_import_bytes);
  return limits;
}

absl::Status ImportGuard::Append(const std::string& piece) {
  if (static_cast<int64_t>(bytes_.size() + piece.size()) > limits_.max_total_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("import exceeds the limit of ", limits_.max_total_bytes,
                     " bytes for this model (the largest valid session state plus slack)"));
  }
  // Past the header the scanner returns at once: the data section is not looked at.
  absl::Status checked = header_.Feed(piece);
  if (!checked.ok()) {
    const char* what =
        checked.code() == absl::StatusCode::kDataLoss ? "import is corrupt: " : "import refused: ";
    return absl::Status(checked.code(), absl::StrCat(what, checked.message()));
  }
  bytes_ += piece;
  return absl::OkStatus();
}

}  // namespace ttt::server::internal
