// Unicode character properties for the tokenizer, from utf8proc's tables (Unicode 15), so that
// normalizers and pre-tokenizer patterns follow one Unicode version. PCRE2, which runs the
// patterns, carries its own older tables (10.42: Unicode 14); TranslateUnicodeClasses rewrites a
// pattern's classes so that they match what utf8proc says.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace ttt::tokenizer::internal {

// The Unicode version of utf8proc's tables ("15.0.0"), which the normalizer and the pre-tokenizer
// character classes follow.
std::string UnicodeVersion();

// The White_Space property (PropList.txt), which Rust's char::is_whitespace and Oniguruma's \s
// (the engines under Hugging Face tokenizers) test: the Z* categories plus U+0009..U+000D and
// U+0085. Since Unicode 6.3 this excludes U+180E MONGOLIAN VOWEL SEPARATOR (now Cf).
bool IsWhiteSpace(char32_t code_point);

// Rewrites the Unicode classes of a PCRE2 pattern (UTF + UCP mode) so that they follow utf8proc:
//  - \s, \S (and inside [...]) become White_Space as above. PCRE2's \s also matches U+180E.
//  - \p{G}, \P{G}, \pG, \p{^G} for a general category (L, Lu, Ll, Lt, Lm, Lo, M, Mn, Mc, Me, N,
//    Nd, Nl, No, P*, S*, Z*, C*, L& / LC) and \d, \D (= Nd) keep PCRE2's own property test where
//    PCRE2 agrees with utf8proc and add the code points it does not know yet (with Unicode 14 vs
//    15: 4,489 characters, e.g. CJK Extension H, Kawi). Where PCRE2 would match a character that
//    utf8proc puts elsewhere, the class is spelled out as explicit ranges instead (correct,
//    slower).
// Everything else (\w, scripts such as \p{Han}, POSIX [:alpha:]) is left to PCRE2's tables.
// The input must already compile; the output compiles whenever the input does.
std::string TranslateUnicodeClasses(std::string_view pattern);

}  // namespace ttt::tokenizer::internal
