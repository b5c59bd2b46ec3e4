// Unicode properties from utf8proc: see unicode_classes.h.
#include "tokenizer/internal/unicode_classes.h"

#include <utf8proc.h>

namespace ttt::tokenizer::internal {

bool IsWhiteSpace(char32_t code_point) {
  if ((code_point >= 0x09 && code_point <= 0x0D) || code_point == 0x85) return true;
  if (code_point > 0x10FFFF) return false;
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(code_point))) {
    case UTF8PROC_CATEGORY_ZS:
    case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP:
      return true;
    default:
      return false;
  }
}

}  // namespace ttt::tokenizer::internal
