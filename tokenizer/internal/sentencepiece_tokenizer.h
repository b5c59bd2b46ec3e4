// SentencePiece (`tokenizer.model`, Llama-2 style) through Debian's libsentencepiece. Encoding
// and Decode are the library's; TokenBytes reproduces its per-piece decoding rules so streamed
// text matches Decode.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "tokenizer/internal/sentencepiece_model.h"
#include "tokenizer/tokenizer.h"

namespace ttt::tokenizer::internal {

// Thread-safe: the processor's encode/decode methods are const and reentrant.
class SentencePieceTokenizer final : public Tokenizer {
 public:
  // INVALID_ARGUMENT naming the file when the library cannot load it.
  static absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> Create(
      const std::filesystem::path& model_path);

  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text) const override;
  std::string Decode(absl::Span<const int32_t> ids) const override;
  std::string TokenBytes(int32_t id, bool* at_text_start) const override;
  int32_t vocab_size() const override { return vocab_size_; }
  std::optional<int32_t> bos_id() const override { return bos_id_; }
  std::optional<int32_t> eos_id() const override { return eos_id_; }

 private:
  explicit SentencePieceTokenizer(std::unique_ptr<SentencePieceModel> model)
      : model_(std::move(model)) {}

  std::unique_ptr<SentencePieceModel> model_;
  int32_t vocab_size_ = 0;
  std::optional<int32_t> bos_id_;
  std::optional<int32_t> eos_id_;
  std::string unk_surface_;  // what <unk> decodes to (" \u2047 " unless the model says otherwise)
  // Whether a piece's leading "▁" is dropped at the start of the text (the library does so
  // when the model adds a dummy prefix or removes extra whitespace).
  bool strip_leading_space_ = true;
};

}  // namespace ttt::tokenizer::internal
