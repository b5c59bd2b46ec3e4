// SentencePiece's text normalizer (normalizer.cc in google/sentencepiece), reimplemented: the
// precompiled character map of a NormalizerSpec (a Darts-clone double-array trie over input
// byte sequences whose values point into a pool of NUL-terminated replacements), whitespace
// clean-up, the dummy prefix and the "▁" escape. Byte-for-byte what libsentencepiece produces.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "tokenizer/internal/sentencepiece_model.h"

namespace ttt::tokenizer::internal {

inline constexpr std::string_view kSpaceSymbol = "\xE2\x96\x81";  // U+2581 "▁"

// The length of the UTF-8 character starting with `lead`, as SentencePiece's OneCharLen
// judges it from the lead byte alone (1 for continuation bytes).
inline size_t OneCharLen(char lead) {
  return "\1\1\1\1\1\1\1\1\1\1\1\1\2\2\3\4"[static_cast<uint8_t>(lead) >> 4];
}

// A read-only Darts-clone double array (darts.h, DoubleArrayImpl) as SentencePiece serializes
// it: 32-bit little-endian units. Immutable; thread-safe.
class DartsTrie {
 public:
  struct Match {
    size_t length;  // bytes of the key matched
    uint32_t value;
  };

  DartsTrie() = default;
  // REQUIRES: `units` holds whole units (a multiple of 4 bytes).
  explicit DartsTrie(std::string_view units);

  bool empty() const { return units_.empty(); }

  // Darts' commonPrefixSearch: every key that is a prefix of `key`, shortest first, at most
  // `max_results` of them. Lookups that would leave the array end the search (a corrupt blob
  // cannot make it read out of bounds).
  std::vector<Match> CommonPrefixSearch(std::string_view key, size_t max_results) const;

 private:
  std::vector<uint32_t> units_;
};

// The longest of a set of strings (user-defined pieces) at the start of a text
// (SentencePiece's PrefixMatcher). Immutable; thread-safe.
class PrefixMatcher {
 public:
  explicit PrefixMatcher(std::vector<std::string> symbols);

  // The byte length of the longest symbol `text` starts with (`*found` true), else of its
  // first character (`*found` false). REQUIRES: !text.empty().
  size_t PrefixMatch(std::string_view text, bool* found) const;

 private:
  absl::flat_hash_set<std::string> symbols_;
  std::vector<size_t> lengths_;  // the distinct symbol lengths, longest first
};

// Immutable after Create; thread-safe.
class SentencePieceNormalizer {
 public:
  // INVALID_ARGUMENT when the precompiled charsmap is malformed. `matcher` (may be null) keeps
  // user-defined pieces from being normalized; REQUIRES: it outlives the normalizer.
  static absl::StatusOr<SentencePieceNormalizer> Create(const NormalizerSpec& spec,
                                                        bool treat_whitespace_as_suffix,
                                                        const PrefixMatcher* matcher);

  // The normalized text. REQUIRES: `input` is valid UTF-8 (SentencePiece replaces each invalid
  // byte with U+FFFD; so does this, but callers validate first).
  std::string Normalize(std::string_view input) const;

 private:
  SentencePieceNormalizer() = default;

  // The normalized form of the longest rule matching the start of `input` and the number of
  // input bytes it consumes. The view points into `pool_`, the input or a static string.
  std::pair<std::string_view, size_t> NormalizePrefix(std::string_view input) const;

  NormalizerSpec spec_;
  bool treat_whitespace_as_suffix_ = false;
  const PrefixMatcher* matcher_ = nullptr;
  DartsTrie trie_;
  std::string pool_;  // the replacements, NUL-terminated, indexed by the trie's values
};

}  // namespace ttt::tokenizer::internal
