// The `normalizer` of a Hugging Face tokenizer.json, run as tokenizers runs it on each text
// segment between added tokens: Unicode forms (NFC, NFD, NFKC, NFKD) and Lowercase from
// utf8proc (Unicode 15), Strip, Replace, Prepend and Sequence. Any other type is refused at
// load, naming it, so a tokenizer is never run with a step silently skipped.
#pragma once

#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "tokenizer/internal/regex.h"

namespace ttt::tokenizer::internal {

// Immutable after Parse; Normalize may run concurrently.
class Normalizer {
 public:
  // Builds the normalizer a tokenizer.json `normalizer` node describes (null: the identity).
  // INVALID_ARGUMENT when the node is malformed (no type, a Replace regex that does not compile,
  // ...); UNIMPLEMENTED naming the type when it is valid but not one of those above. Messages do
  // not name the file; callers prefix it.
  static absl::StatusOr<std::unique_ptr<Normalizer>> Parse(const nlohmann::json& node);

  ~Normalizer();
  Normalizer(const Normalizer&) = delete;
  Normalizer& operator=(const Normalizer&) = delete;

  // The normalized text. REQUIRES: `text` is valid UTF-8 (then so is the result).
  // INTERNAL only when utf8proc or PCRE2 fails (out of memory, match limit).
  absl::StatusOr<std::string> Normalize(std::string_view text) const;

  // True when Normalize returns its input unchanged for every text (no normalizer, or an empty
  // Sequence): the tokenizer then skips the copy.
  bool is_identity() const { return steps_.empty(); }

  struct Step;  // one normalizer; defined in normalizer.cc

 private:
  Normalizer() = default;
  std::vector<std::unique_ptr<Step>> steps_;  // flattened: a Sequence contributes its children
};

}  // namespace ttt::tokenizer::internal
