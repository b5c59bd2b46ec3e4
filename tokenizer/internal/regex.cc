// PCRE2 wrapper: see regex.h.
#include "tokenizer/internal/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "tokenizer/internal/unicode_classes.h"
#include "tokenizer/internal/utf8.h"

namespace ttt::tokenizer::internal {
namespace {

std::string Pcre2Message(int code) {
  PCRE2_UCHAR buffer[256];
  if (pcre2_get_error_message(code, buffer, sizeof(buffer)) < 0)
    return absl::StrCat("error ", code);
  return reinterpret_cast<const char*>(buffer);
}

pcre2_code* Code(void* code) { return static_cast<pcre2_code*>(code); }

}  // namespace

absl::StatusOr<std::unique_ptr<Regex>> Regex::Compile(std::string_view pattern, bool literal) {
  // PCRE2_LITERAL admits no UCP (which only matters to classes a literal lacks).
  const uint32_t options = literal ? PCRE2_UTF | PCRE2_LITERAL : PCRE2_UTF | PCRE2_UCP;
  // The pattern as written is compiled first so that errors point into it; the rewrite of its
  // Unicode classes (see unicode_classes.h) is what runs.
  int error = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   options, &error, &error_offset, nullptr);
  if (code == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("regex does not compile at offset ", error_offset, ": ", Pcre2Message(error)));
  }
  if (!literal) {
    const std::string translated = TranslateUnicodeClasses(pattern);
    if (translated != pattern) {
      pcre2_code_free(code);
      code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                           options, &error, &error_offset, nullptr);
      if (code == nullptr) {
        return absl::InternalError(
            absl::StrCat("regex with Unicode ", UnicodeVersion(),
                         " classes does not compile: ", Pcre2Message(error)));
      }
    }
  }
  // JIT is an optimisation only: the interpreter gives the same matches when it is unavailable.
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  return std::unique_ptr<Regex>(new Regex(code));
}

Regex::~Regex() { pcre2_code_free(Code(code_)); }

absl::StatusOr<std::vector<std::pair<size_t, size_t>>> Regex::FindAll(std::string_view text) const {
  std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> match_data(
      pcre2_match_data_create_from_pattern(Code(code_), nullptr), &pcre2_match_data_free);
  if (match_data == nullptr) return absl::ResourceExhaustedError("pcre2 match data");
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  std::vector<std::pair<size_t, size_t>> matches;
  size_t offset = 0;
  while (offset < text.size()) {
    const int rc = pcre2_match(Code(code_), subject, text.size(), offset, PCRE2_NO_UTF_CHECK,
                               match_data.get(), nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) return absl::InternalError(absl::StrCat("regex match failed: ", Pcre2Message(rc)));
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match_data.get());
    const size_t begin = ovector[0], end = ovector[1];
    if (end > begin) {
      matches.emplace_back(begin, end);
      offset = end;
    } else if (begin >= text.size()) {
      break;
    } else {
      // An empty match produces no piece; step over one character so the scan advances.
      offset = begin + NextUtf8(text, begin).length;
    }
  }
  return matches;
}

}  // namespace ttt::tokenizer::internal
