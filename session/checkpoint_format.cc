// See checkpoint_format.h.
#include "session/checkpoint_format.h"

#include "absl/strings/str_cat.h"

namespace ttt::session {

absl::Status CheckpointHeaderScanner::Feed(std::string_view bytes) {
  size_t i = 0;
  for (; fed_ < 8 && i < bytes.size(); ++i, ++fed_) {
    length_field_ |= uint64_t{static_cast<unsigned char>(bytes[i])} << (8 * fed_);
  }
  if (fed_ < 8) return absl::OkStatus();
  if (!header_bytes_) {
    // When the header's first byte came with the length, it says more than the length does:
    // text that is no checkpoint at all reads as that, not as a huge header.
    if (i < bytes.size() && bytes[i] != '{') return NotACheckpoint();
    if (length_field_ > kMaxCheckpointHeaderBytes) {
      return absl::ResourceExhaustedError(
          absl::StrCat("checkpoint declares a header of ", length_field_, " bytes; the limit is ",
                       kMaxCheckpointHeaderBytes, " bytes (is this a ttt-serve export?)"));
    }
    header_bytes_ = length_field_;
  }
  for (; i < bytes.size() && fed_ < 8 + *header_bytes_; ++i, ++fed_) {
    absl::Status st = ScanHeaderByte(bytes[i], fed_);
    if (!st.ok()) return st;
  }
  return absl::OkStatus();
}

absl::Status CheckpointHeaderScanner::NotACheckpoint() {
  return absl::DataLossError(
      "not a ttt-serve checkpoint (no safetensors JSON header after the 8-byte length)");
}

absl::Status CheckpointHeaderScanner::ScanHeaderByte(char c, uint64_t at) {
  if (at == 8 && c != '{') return NotACheckpoint();
  if (in_string_) {
    if (escaped_) {
      escaped_ = false;
    } else if (c == '\\') {
      escaped_ = true;
    } else if (c == '"') {
      in_string_ = false;
    }
  } else if (c == '"') {
    in_string_ = true;
  } else if (c == '{' || c == '[') {
    if (++depth_ > kMaxCheckpointHeaderDepth) {
      return absl::InvalidArgumentError(absl::StrCat(
          "checkpoint header nests objects or arrays more than ", kMaxCheckpointHeaderDepth,
          " deep (at byte ", at, "); a checkpoint header nests 3 deep"));
    }
  } else if (c == '}' || c == ']') {
    --depth_;
  }
  return absl::OkStatus();
}

}  // namespace ttt::session
