// UTF-8 scanning shared by validation, lossy decoding and the stream decoder. The rules are the
// Unicode Standard's (table 3-7) and invalid input is replaced per "maximal subpart", as Rust's
// String::from_utf8_lossy does, so byte-level BPE decoding matches Hugging Face tokenizers.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace ttt::tokenizer::internal {

inline constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

// What the bytes at one position of a string hold.
struct Utf8Step {
  enum Kind {
    kValid,      // a whole character of `length` bytes
    kInvalid,    // `length` bytes (the maximal subpart) that can never start a valid character
    kTruncated,  // the string ends after `length` bytes of a character that could still complete
  };
  Kind kind;
  size_t length;  // >= 1
};

// REQUIRES: pos < text.size().
Utf8Step NextUtf8(std::string_view text, size_t pos);

// Appends `bytes` to `*out` with each invalid or truncated sequence replaced by U+FFFD.
void AppendUtf8Lossy(std::string_view bytes, std::string* out);

}  // namespace ttt::tokenizer::internal
