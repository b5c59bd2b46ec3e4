// Incremental checks of ImportSession bytes (see import_guard.h).
#include "server/internal/import_guard.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "engine/state_size.h"

namespace ttt::server::internal {

namespace {
// A checkpoint header: per tensor an entry like {"dtype":"F32","shape":[..],"data_offsets":[..]}
// under a name of a few dozen bytes; the metadata: counters, options (up to 32 labels of 256-byte
// keys and values, JSON-escaped), ids and the checksum. Generous on both.
constexpr int64_t kHeaderBytesPerTensor = 512;
constexpr int64_t kHeaderMetadataBytes = 128 << 10;
// Root object -> tensor entry -> shape array: 3 levels. Metadata values are strings.
constexpr int kMaxHeaderDepth = 8;
// Alignment padding, rounding: the data section of a valid state is never this much larger
// than its tensors.
constexpr int64_t kDataSlackBytes = 1 << 20;
}  // namespace

ImportLimits ImportLimitsFor(const engine::Model& model, int64_t memory_budget_bytes,
                             int64_t max_import_bytes) {
  const engine::StateSizeBound bound = engine::MaxStateSize(model);
  ImportLimits limits;
  limits.max_header_depth = kMaxHeaderDepth;
  limits.max_header_bytes = bound.tensor_count * kHeaderBytesPerTensor + kHeaderMetadataBytes;
  const int64_t per_token = std::max<int64_t>(bound.bytes_per_cached_token, 1);
  const int64_t cached_tokens =
      bound.max_cached_tokens.value_or(std::max<int64_t>(memory_budget_bytes, 0) / per_token);
  const int64_t total =
      8 + limits.max_header_bytes + bound.BytesWith(cached_tokens) + kDataSlackBytes;
  limits.max_total_bytes = std::min(total, max_import_bytes);
  return limits;
}

absl::Status ImportGuard::Append(const std::string& piece) {
  if (static_cast<int64_t>(bytes_.size() + piece.size()) > limits_.max_total_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "import exceeds the limit of ", limits_.max_total_bytes,
        " bytes for this model (the largest valid session state plus slack)"));
  }
  bytes_ += piece;
  if (header_bytes_ < 0 && bytes_.size() >= 9 && bytes_[8] != '{') {
    return absl::DataLossError(
        "import is corrupt: not a ttt-serve checkpoint (no safetensors JSON header after the "
        "8-byte length)");
  }
  if (header_bytes_ < 0 && bytes_.size() >= 8) {
    absl::Status st = CheckHeaderLength();
    if (!st.ok()) return st;
  }
  if (header_bytes_ < 0) return absl::OkStatus();
  const size_t header_end = 8 + static_cast<size_t>(header_bytes_);
  const size_t to = std::min(bytes_.size(), header_end);
  if (to > scanned_) return ScanHeader(scanned_, to);
  return absl::OkStatus();
}

absl::Status ImportGuard::CheckHeaderLength() {
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes_[i]);
  if (n > static_cast<uint64_t>(limits_.max_header_bytes)) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "import declares a header of ", n, " bytes; the limit for this model is ",
        limits_.max_header_bytes, " bytes (is this a ttt-serve export?)"));
  }
  header_bytes_ = static_cast<int64_t>(n);
  return absl::OkStatus();
}

// Tracks the JSON nesting depth over header bytes [from, to) without parsing: brackets outside
// strings open and close levels.
absl::Status ImportGuard::ScanHeader(size_t from, size_t to) {
  for (size_t i = from; i < to; ++i) {
    const char c = bytes_[i];
    if (in_string_) {
      if (escaped_) {
        escaped_ = false;
      } else if (c == '\\') {
        escaped_ = true;
      } else if (c == '"') {
        in_string_ = false;
      }
      continue;
    }
    if (c == '"') {
      in_string_ = true;
    } else if (c == '{' || c == '[') {
      if (++depth_ > limits_.max_header_depth) {
        return absl::InvalidArgumentError(absl::StrCat(
            "import header nests objects or arrays more than ", limits_.max_header_depth,
            " deep (at byte ", i, "); a checkpoint header nests 3 deep"));
      }
    } else if (c == '}' || c == ']') {
      --depth_;
    }
  }
  scanned_ = to;
  return absl::OkStatus();
}

}  // namespace ttt::server::internal
