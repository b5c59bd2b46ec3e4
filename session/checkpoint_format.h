// The one set of limits of the checkpoint file's header, and the one scanner that enforces them
// on bytes as they arrive: the checkpoint reader (session/internal/checkpoint.cc) runs it before
// its JSON parser sees a header, and an ImportSession runs it on the stream before the bytes
// are buffered further. A checkpoint is a safetensors file: an 8-byte little-endian header
// length, then a JSON object (the tensor table and "__metadata__"), then the data section.
//
// Thread-safety: CheckpointHeaderScanner is thread-compatible (one reader at a time).
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include "absl/status/status.h"

namespace ttt::session {

// A checkpoint header (tensor table + metadata) is a few KiB; larger ones are refused unread.
inline constexpr uint64_t kMaxCheckpointHeaderBytes = uint64_t{1} << 20;
// The header nests 3 deep (root object -> tensor entry -> shape array); one level of slack.
inline constexpr int kMaxCheckpointHeaderDepth = 4;

class CheckpointHeaderScanner {
 public:
  // Feeds the next bytes of a checkpoint, from its first byte on, in pieces of any size; checks
  // the header length when its 8 bytes have arrived and the nesting of the header's JSON
  // (brackets outside strings) as it arrives. Bytes past the header are not looked at.
  //   RESOURCE_EXHAUSTED: the header length is over kMaxCheckpointHeaderBytes;
  //   DATA_LOSS: no JSON object after the length (not a checkpoint);
  //   INVALID_ARGUMENT: the header nests deeper than kMaxCheckpointHeaderDepth.
  // A length over the limit whose next byte arrives in the same piece and is not '{' is
  // DATA_LOSS: such bytes are not a checkpoint at all.
  // REQUIRES: no earlier call returned an error.
  absl::Status Feed(std::string_view bytes);

  // The declared header length, once the first 8 bytes arrived.
  std::optional<uint64_t> header_bytes() const { return header_bytes_; }

 private:
  absl::Status ScanHeaderByte(char c, uint64_t at);
  static absl::Status NotACheckpoint();

  uint64_t fed_ = 0;           // bytes fed so far
  uint64_t length_field_ = 0;  // the first 8 bytes, little-endian, as they arrive
  std::optional<uint64_t> header_bytes_;
  int depth_ = 0;
  bool in_string_ = false;
  bool escaped_ = false;
};

}  // namespace ttt::session
