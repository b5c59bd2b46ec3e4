// A compiled PCRE2 pattern in UTF + UCP mode (\s, \w, \d and the POSIX classes are Unicode-aware),
// used for the pre-tokenizer and Replace regexes of tokenizer.json. Its \s, \d and general-category
// classes follow utf8proc's Unicode version rather than PCRE2's (see unicode_classes.h). Keeps
// pcre2.h out of other headers.
#pragma once

#include <cstddef>
#include <memory>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace ttt::tokenizer::internal {

// Immutable after Compile; FindAll may run concurrently (each call has its own match data).
class Regex {
 public:
  // `literal` matches `pattern` as plain text. INVALID_ARGUMENT (with PCRE2's message and the
  // offset in the pattern) when it does not compile.
  static absl::StatusOr<std::unique_ptr<Regex>> Compile(std::string_view pattern, bool literal);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // The [begin, end) byte ranges of the non-overlapping, non-empty matches in `text`, left to
  // right. REQUIRES: `text` is valid UTF-8 (it is not checked again). INTERNAL when PCRE2 gives
  // up (e.g. its match limit on a pathological input).
  absl::StatusOr<std::vector<std::pair<size_t, size_t>>> FindAll(std::string_view text) const;

 private:
  explicit Regex(void* code) : code_(code) {}
  void* code_;  // pcre2_code_8*, owned
};

}  // namespace ttt::tokenizer::internal
