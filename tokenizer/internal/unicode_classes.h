// Unicode character properties for the tokenizer, from utf8proc's tables (Unicode 15), so that
// normalizers and pre-tokenizer patterns follow one Unicode version.
#pragma once

#include <cstdint>

namespace ttt::tokenizer::internal {

// The White_Space property (PropList.txt), which Rust's char::is_whitespace and Oniguruma's \s
// (the engines under Hugging Face tokenizers) test: the Z* categories plus U+0009..U+000D and
// U+0085. Since Unicode 6.3 this excludes U+180E MONGOLIAN VOWEL SEPARATOR (now Cf).
bool IsWhiteSpace(char32_t code_point);

}  // namespace ttt::tokenizer::internal
