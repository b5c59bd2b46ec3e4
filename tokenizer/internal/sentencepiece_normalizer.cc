// SentencePiece normalization: see sentencepiece_normalizer.h. Follows normalizer.cc of
// google/sentencepiece (v0.1.97, Debian 12's) statement by statement, so that the reference test
// (tests/tokenizer/sentencepiece_reference_test.cc) can demand identical output.
#include "tokenizer/internal/sentencepiece_normalizer.h"

#include <algorithm>
#include <functional>
#include <utility>

#include "absl/status/status.h"
#include "tokenizer/internal/utf8.h"

namespace ttt::tokenizer::internal {
namespace {

// Darts-clone's unit layout (darts.h, DoubleArrayUnit).
bool HasLeaf(uint32_t unit) { return ((unit >> 8) & 1) != 0; }
uint32_t Value(uint32_t unit) { return unit & ((1u << 31) - 1); }
uint32_t Label(uint32_t unit) { return unit & ((1u << 31) | 0xFF); }
uint32_t Offset(uint32_t unit) { return (unit >> 10) << ((unit & (1u << 9)) >> 6); }

// SentencePiece's normalizer keeps at most this many trie matches per position.
constexpr size_t kMaxTrieResults = 32;

}  // namespace

DartsTrie::DartsTrie(std::string_view units) {
  units_.resize(units.size() / 4);
  for (size_t i = 0; i < units_.size(); ++i) {
    uint32_t unit = 0;
    for (int b = 3; b >= 0; --b) unit = (unit << 8) | static_cast<uint8_t>(units[4 * i + b]);
    units_[i] = unit;
  }
}

std::vector<DartsTrie::Match> DartsTrie::CommonPrefixSearch(std::string_view key,
                                                            size_t max_results) const {
  std::vector<Match> results;
  if (units_.empty()) return results;
  size_t node_pos = 0;
  uint32_t unit = units_[node_pos];
  node_pos ^= Offset(unit);
  for (size_t i = 0; i < key.size(); ++i) {
    const uint8_t label = static_cast<uint8_t>(key[i]);
    node_pos ^= label;
    if (node_pos >= units_.size()) return results;
    unit = units_[node_pos];
    if (Label(unit) != label) return results;
    node_pos ^= Offset(unit);
    if (HasLeaf(unit)) {
      if (node_pos >= units_.size()) return results;
      if (results.size() < max_results) results.push_back({i + 1, Value(units_[node_pos])});
    }
  }
  return results;
}

PrefixMatcher::PrefixMatcher(std::vector<std::string> symbols) {
  for (std::string& symbol : symbols) {
    if (symbol.empty()) continue;
    lengths_.push_back(symbol.size());
    symbols_.insert(std::move(symbol));
  }
  std::sort(lengths_.begin(), lengths_.end(), std::greater<size_t>());
  lengths_.erase(std::unique(lengths_.begin(), lengths_.end()), lengths_.end());
}

size_t PrefixMatcher::PrefixMatch(std::string_view text, bool* found) const {
  for (size_t length : lengths_) {
    if (length <= text.size() && symbols_.contains(absl::string_view(text.data(), length))) {
      *found = true;
      return length;
    }
  }
  *found = false;
  return std::min(text.size(), OneCharLen(text[0]));
}

absl::StatusOr<SentencePieceNormalizer> SentencePieceNormalizer::Create(
    const NormalizerSpec& spec, bool treat_whitespace_as_suffix, const PrefixMatcher* matcher) {
  SentencePieceNormalizer normalizer;
  normalizer.spec_ = spec;
  normalizer.spec_.precompiled_charsmap.clear();  // kept below as trie_ and pool_
  normalizer.treat_whitespace_as_suffix_ = treat_whitespace_as_suffix;
  normalizer.matcher_ = matcher;
  const std::string_view blob = spec.precompiled_charsmap;
  if (blob.empty()) return normalizer;  // identity
  // <trie size: uint32 LE><double-array units><replacement pool>
  if (blob.size() <= 4) {
    return absl::InvalidArgumentError("precompiled_charsmap: blob is too small");
  }
  uint32_t trie_size = 0;
  for (int b = 3; b >= 0; --b) trie_size = (trie_size << 8) | static_cast<uint8_t>(blob[b]);
  if (trie_size > blob.size() - 4 || trie_size % 4 != 0) {
    return absl::InvalidArgumentError("precompiled_charsmap: bad trie size");
  }
  normalizer.trie_ = DartsTrie(blob.substr(4, trie_size));
  normalizer.pool_ = std::string(blob.substr(4 + trie_size));
  return normalizer;
}

std::pair<std::string_view, size_t> SentencePieceNormalizer::NormalizePrefix(
    std::string_view input) const {
  if (matcher_ != nullptr) {
    bool found = false;
    const size_t length = matcher_->PrefixMatch(input, &found);
    if (found) return {input.substr(0, length), length};
  }
  size_t longest_length = 0;
  uint32_t longest_value = 0;
  for (const DartsTrie::Match& match : trie_.CommonPrefixSearch(input, kMaxTrieResults)) {
    if (longest_length == 0 || match.length > longest_length) {
      longest_length = match.length;
      longest_value = match.value;
    }
  }
  if (longest_length == 0) {
    const Utf8Step step = NextUtf8(input, 0);
    if (step.kind != Utf8Step::kValid) return {kReplacementChar, 1};  // one byte consumed
    return {input.substr(0, step.length), step.length};
  }
  if (longest_value >= pool_.size()) return {std::string_view(), longest_length};
  const std::string_view rest = std::string_view(pool_).substr(longest_value);
  return {rest.substr(0, rest.find('\0')), longest_length};
}

std::string SentencePieceNormalizer::Normalize(std::string_view input) const {
  std::string normalized;
  if (input.empty()) return normalized;
  if (spec_.remove_extra_whitespaces) {  // drop leading whitespace
    while (!input.empty()) {
      const auto [text, consumed] = NormalizePrefix(input);
      if (text != " ") break;
      input.remove_prefix(consumed);
    }
  }
  if (input.empty()) return normalized;
  normalized.reserve(input.size() * 3);
  const std::string_view space = spec_.escape_whitespaces ? kSpaceSymbol : " ";
  if (!treat_whitespace_as_suffix_ && spec_.add_dummy_prefix) normalized.append(space);

  bool is_prev_space = spec_.remove_extra_whitespaces;
  while (!input.empty()) {
    auto [text, consumed] = NormalizePrefix(input);
    while (is_prev_space && !text.empty() && text[0] == ' ') text.remove_prefix(1);
    if (!text.empty()) {
      for (char c : text) {
        if (c == ' ' && spec_.escape_whitespaces) {
          normalized.append(kSpaceSymbol);
        } else {
          normalized.push_back(c);
        }
      }
      is_prev_space = text.back() == ' ';
    }
    input.remove_prefix(consumed);
    if (!spec_.remove_extra_whitespaces) is_prev_space = false;
  }
  if (spec_.remove_extra_whitespaces) {  // drop trailing whitespace
    while (normalized.size() >= space.size() &&
           std::string_view(normalized).substr(normalized.size() - space.size()) == space) {
      normalized.resize(normalized.size() - space.size());
    }
  }
  if (treat_whitespace_as_suffix_ && spec_.add_dummy_prefix) normalized.append(space);
  return normalized;
}

}  // namespace ttt::tokenizer::internal
