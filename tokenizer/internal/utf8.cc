// UTF-8 scanning: see utf8.h.
#include "tokenizer/internal/utf8.h"

#include <cstdint>

namespace ttt::tokenizer::internal {

Utf8Step NextUtf8(std::string_view text, size_t pos) {
  const auto byte = [&](size_t i) { return static_cast<uint8_t>(text[i]); };
  const uint8_t lead = byte(pos);
  if (lead < 0x80) return {Utf8Step::kValid, 1};
  // Continuation bytes needed, and the allowed range of the first one (which is what excludes
  // overlong forms, surrogates and code points above U+10FFFF).
  size_t need = 0;
  uint8_t lo = 0x80, hi = 0xBF;
  if (lead >= 0xC2 && lead <= 0xDF) {
    need = 1;
  } else if (lead == 0xE0) {
    need = 2, lo = 0xA0;
  } else if ((lead >= 0xE1 && lead <= 0xEC) || lead == 0xEE || lead == 0xEF) {
    need = 2;
  } else if (lead == 0xED) {
    need = 2, hi = 0x9F;
  } else if (lead == 0xF0) {
    need = 3, lo = 0x90;
  } else if (lead >= 0xF1 && lead <= 0xF3) {
    need = 3;
  } else if (lead == 0xF4) {
    need = 3, hi = 0x8F;
  } else {
    return {Utf8Step::kInvalid, 1};  // a stray continuation byte, C0, C1 or F5..FF
  }
  for (size_t k = 1; k <= need; ++k) {
    if (pos + k >= text.size()) return {Utf8Step::kTruncated, k};
    const uint8_t b = byte(pos + k);
    const bool ok = k == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
    if (!ok) return {Utf8Step::kInvalid, k};
  }
  return {Utf8Step::kValid, need + 1};
}

void AppendUtf8Lossy(std::string_view bytes, std::string* out) {
  out->reserve(out->size() + bytes.size());
  for (size_t pos = 0; pos < bytes.size();) {
    const Utf8Step step = NextUtf8(bytes, pos);
    if (step.kind == Utf8Step::kValid) {
      out->append(bytes.substr(pos, step.length));
    } else {
      out->append(kReplacementChar);
    }
    pos += step.length;
  }
}

}  // namespace ttt::tokenizer::internal
