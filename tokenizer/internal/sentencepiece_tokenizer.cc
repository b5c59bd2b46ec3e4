// SentencePiece through libsentencepiece: see sentencepiece_tokenizer.h.
#include "tokenizer/internal/sentencepiece_tokenizer.h"

#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "tokenizer/internal/utf8.h"

namespace ttt::tokenizer::internal {
namespace {

constexpr std::string_view kSpaceSymbol = "\xE2\x96\x81";  // U+2581 "▁"

// "<0x41>" -> 0x41; the library's byte-fallback pieces always have this form.
std::optional<char> PieceByte(std::string_view piece) {
  if (piece.size() != 6 || piece.substr(0, 3) != "<0x" || piece[5] != '>') return std::nullopt;
  int value = 0;
  for (char c : piece.substr(3, 2)) {
    value <<= 4;
    if (c >= '0' && c <= '9') {
      value |= c - '0';
    } else if (c >= 'A' && c <= 'F') {
      value |= c - 'A' + 10;
    } else if (c >= 'a' && c <= 'f') {
      value |= c - 'a' + 10;
    } else {
      return std::nullopt;
    }
  }
  return static_cast<char>(value);
}

}  // namespace

absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> SentencePieceTokenizer::Create(
    const std::filesystem::path& model_path) {
  std::string error;
  std::unique_ptr<SentencePieceModel> model = SentencePieceModel::Load(model_path.string(), &error);
  if (model == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(model_path.string(), ": not a SentencePiece model: ", error));
  }
  auto tokenizer =
      std::unique_ptr<SentencePieceTokenizer>(new SentencePieceTokenizer(std::move(model)));
  const SentencePieceModel& sp = *tokenizer->model_;
  tokenizer->vocab_size_ = sp.piece_size();
  if (sp.bos_id() >= 0) tokenizer->bos_id_ = sp.bos_id();
  if (sp.eos_id() >= 0) tokenizer->eos_id_ = sp.eos_id();
  // The unknown surface and the leading-space rule depend on trainer and normalizer settings
  // whose proto is not installed; ask the library's own decoder instead.
  tokenizer->unk_surface_ = sp.unk_id() >= 0 ? sp.Decode({sp.unk_id()}) : "";
  for (int id = 0; id < tokenizer->vocab_size_; ++id) {
    if (sp.IsControl(id) || sp.IsUnknown(id) || sp.IsByte(id)) continue;
    const std::string& piece = sp.IdToPiece(id);
    if (piece.size() > kSpaceSymbol.size() &&
        piece.compare(0, kSpaceSymbol.size(), kSpaceSymbol) == 0) {
      tokenizer->strip_leading_space_ = sp.Decode({id})[0] != ' ';
      break;
    }
  }
  return tokenizer;
}

absl::StatusOr<std::vector<int32_t>> SentencePieceTokenizer::Encode(std::string_view text) const {
  absl::Status status = ValidateUtf8(text);
  if (!status.ok()) return status;
  std::vector<int> ids;
  std::string error;
  if (!model_->Encode(text, &ids, &error)) {
    return absl::InternalError(absl::StrCat("sentencepiece encode: ", error));
  }
  return std::vector<int32_t>(ids.begin(), ids.end());
}

std::string SentencePieceTokenizer::Decode(absl::Span<const int32_t> ids) const {
  std::vector<int> valid;
  valid.reserve(ids.size());
  for (int32_t id : ids) {
    if (id >= 0 && id < vocab_size_) valid.push_back(id);  // the library does not bound-check
  }
  return model_->Decode(valid);
}

// Mirrors the library's Decode: control pieces are invisible; the first other piece of the
// text loses a leading "▁" (once, even when that leaves it empty).
std::string SentencePieceTokenizer::TokenBytes(int32_t id, bool* at_text_start) const {
  if (id < 0 || id >= vocab_size_ || model_->IsControl(id)) return "";
  const bool first_visible = *at_text_start;
  *at_text_start = false;
  if (model_->IsUnknown(id)) return unk_surface_;
  std::string_view piece = model_->IdToPiece(id);
  if (model_->IsByte(id)) {
    const std::optional<char> byte = PieceByte(piece);
    return byte.has_value() ? std::string(1, *byte) : "";
  }
  if (first_visible && strip_leading_space_ &&
      piece.substr(0, kSpaceSymbol.size()) == kSpaceSymbol) {
    piece.remove_prefix(kSpaceSymbol.size());
  }
  std::string text;
  for (size_t pos = 0; pos < piece.size();) {
    if (piece.compare(pos, kSpaceSymbol.size(), kSpaceSymbol) == 0) {
      text += ' ';
      pos += kSpaceSymbol.size();
    } else {
      text += piece[pos++];
    }
  }
  return text;
}

}  // namespace ttt::tokenizer::internal
