// Byte-level BPE from a Hugging Face `tokenizer.json` (GPT-2, Llama-3, Qwen2 families): added
// tokens are matched first (longest match) and never split; the rest goes through the file's
// normalizer (see normalizer.h), its pre-tokenizer (Split regexes, Digits, ByteLevel), then BPE
// merges by rank over raw bytes.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "tokenizer/internal/normalizer.h"
#include "tokenizer/internal/regex.h"
#include "tokenizer/tokenizer.h"

namespace ttt::tokenizer::internal {

// Which tokens are bos and eos, by content. `from_config` says the names come from
// tokenizer_config.json (then a missing name means "none"); otherwise common names are tried.
struct SpecialTokenNames {
  bool from_config = false;
  std::optional<std::string> bos;
  std::optional<std::string> eos;
  // tokenizer_config.json's add_bos_token, when it says.
  std::optional<bool> add_bos;
};

// Parses tokenizer_config.json text: its bos_token / eos_token (a string, {"content": ...} or
// null) and add_bos_token. `source` names the file in errors; INVALID_ARGUMENT when malformed.
absl::StatusOr<SpecialTokenNames> ParseSpecialTokenNames(std::string_view json_text,
                                                         const std::string& source);

// See the file comment. Thread-safe; the per-word merge cache is guarded by a mutex.
class BpeTokenizer final : public Tokenizer {
 public:
  // Parses tokenizer.json text; `source` names the file in errors. INVALID_ARGUMENT when
  // malformed (bad JSON, merges naming tokens outside the vocab, a regex that does not compile,
  // ...); UNIMPLEMENTED when well-formed but not byte-level BPE or using an unsupported
  // normalizer or pre-tokenizer.
  static absl::StatusOr<std::unique_ptr<BpeTokenizer>> Create(std::string_view json_text,
                                                              const std::string& source,
                                                              const SpecialTokenNames& names);

  using Tokenizer::Encode;
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                              SpecialTokens special) const override;
  std::string Decode(absl::Span<const int32_t> ids) const override;
  std::string TokenBytes(int32_t id, bool* at_text_start) const override;
  int32_t vocab_size() const override { return static_cast<int32_t>(id_to_bytes_.size()); }
  std::optional<int32_t> bos_id() const override { return bos_id_; }
  std::optional<int32_t> eos_id() const override { return eos_id_; }
  // Whether tokenizer.json's post-processor template puts the bos token before a single text
  // (TemplateProcessing, alone or in a Sequence, starting with it), as Llama 3's does.
  bool template_starts_with_bos() const { return template_starts_with_bos_; }

  // One pre-tokenizer stage: split each piece by `regex` (see tokenizers' SplitDelimiterBehavior),
  // after prepending a space to pieces that lack one when `add_prefix_space` (ByteLevel's option).
  enum class SplitBehavior {
    kIsolated,
    kRemoved,
    kMergedWithPrevious,
    kMergedWithNext,
    kContiguous
  };
  struct PreTokenizerStage {
    std::unique_ptr<Regex> regex;  // null: no split
    SplitBehavior behavior = SplitBehavior::kIsolated;
    bool invert = false;
    bool add_prefix_space = false;
  };
  struct AddedToken {
    std::string content;
    int32_t id;
    bool special;  // tokenizer.json's "special": not matched when encoding SpecialTokens::kAsText
  };
  struct Merge {
    int32_t rank;
    int32_t merged_id;
  };

 private:
  BpeTokenizer() = default;

  // Appends the ids of a text segment holding no added token.
  absl::Status EncodeSegment(std::string_view segment, std::vector<int32_t>* ids) const;
  // Appends the ids of one pre-tokenized piece (raw bytes).
  void EncodeWord(std::string_view word, std::vector<int32_t>* ids) const;
  std::vector<int32_t> MergeWord(std::string_view word) const;

  // Raw bytes of each id ("" for ids the files leave unassigned); added tokens hold their content.
  std::vector<std::string> id_to_bytes_;
  absl::flat_hash_map<std::string, int32_t> vocab_;  // raw bytes -> id
  absl::flat_hash_map<uint64_t, Merge> merges_;      // (left id << 32 | right id) -> merge
  std::array<int32_t, 256> byte_ids_{};              // the single-byte symbols
  std::vector<AddedToken> added_tokens_;
  std::array<std::vector<int>, 256> added_by_first_byte_;  // indices, longest content first
  std::unique_ptr<Normalizer> normalizer_;  // runs on each segment between added tokens
  std::vector<PreTokenizerStage> stages_;
  bool ignore_merges_ = false;  // Llama-3: a piece that is itself in the vocab is one token
  std::optional<int32_t> bos_id_;
  std::optional<int32_t> eos_id_;
  bool template_starts_with_bos_ = false;

  mutable absl::Mutex cache_mu_;
  mutable absl::flat_hash_map<std::string, std::vector<int32_t>> cache_ ABSL_GUARDED_BY(cache_mu_);
};

}  // namespace ttt::tokenizer::internal
