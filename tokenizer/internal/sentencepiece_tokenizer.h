// SentencePiece (`tokenizer.model`, Llama-2 style), implemented natively: the model file is
// read with a hand-written protobuf wire reader (sentencepiece_model.h), text is normalized as
// libsentencepiece does (sentencepiece_normalizer.h), and unigram (Viterbi), BPE (merge by
// score), word and char models encode as theirs do, with byte fallback. No libsentencepiece and
// no libprotobuf, so the tokenizer can share a process with the gRPC server's libprotobuf.
// tests/tokenizer/sentencepiece_reference_test.cc checks ids and decoded text against Debian's
// library.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "tokenizer/internal/sentencepiece_model.h"
#include "tokenizer/internal/sentencepiece_normalizer.h"
#include "tokenizer/tokenizer.h"

namespace ttt::tokenizer::internal {

// Immutable after Create; thread-safe.
class SentencePieceTokenizer final : public Tokenizer {
 public:
  // INVALID_ARGUMENT naming the file when it is not a valid SentencePiece model; UNIMPLEMENTED
  // naming it when it needs a feature this module lacks (a denormalizer rule set).
  static absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> Create(
      const std::filesystem::path& model_path);
  // The same from the file's bytes; `source` names it in errors.
  static absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> CreateFromBytes(
      std::string_view bytes, const std::string& source);

  using Tokenizer::Encode;
  // `special` changes nothing: control pieces are never matched in text (libsentencepiece's rule)
  // and user-defined pieces always are.
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                              SpecialTokens special) const override;
  std::string Decode(absl::Span<const int32_t> ids) const override;
  std::string TokenBytes(int32_t id, bool* at_text_start) const override;
  int32_t vocab_size() const override { return static_cast<int32_t>(model_.pieces.size()); }
  std::optional<int32_t> bos_id() const override { return bos_id_; }
  std::optional<int32_t> eos_id() const override { return eos_id_; }

 private:
  // A piece of the normalized text (a view into it) and its id.
  using Segment = std::pair<std::string_view, int32_t>;

  SentencePieceTokenizer() = default;

  // ModelInterface::PieceToId: reserved (control, unknown, byte) pieces first, then the others;
  // unk_id_ when neither has it.
  int32_t PieceToId(std::string_view piece) const;
  PieceType type(int32_t id) const { return model_.pieces[id].type; }

  std::vector<Segment> EncodeUnigram(std::string_view normalized) const;
  std::vector<Segment> EncodeBpe(std::string_view normalized) const;
  std::vector<Segment> EncodeWord(std::string_view normalized) const;
  std::vector<Segment> EncodeChar(std::string_view normalized) const;

  // The text of one non-byte piece, as libsentencepiece's DecodeSentencePiece renders it.
  // `is_bos_ws`: at the start of the text, where a leading "▁" is dropped;
  // `*consumed_bos_ws` says whether that ended the start (see Decode).
  std::string PieceText(int32_t id, bool is_bos_ws, bool* consumed_bos_ws) const;

  SentencePieceModelProto model_;
  std::unique_ptr<PrefixMatcher> user_defined_;  // user-defined pieces; used by normalizer_
  std::optional<SentencePieceNormalizer> normalizer_;
  absl::flat_hash_map<std::string, int32_t> pieces_;    // normal, user-defined, unused
  absl::flat_hash_map<std::string, int32_t> reserved_;  // control, unknown, byte
  size_t max_piece_bytes_ = 0;                          // longest key of pieces_
  int32_t unk_id_ = 0;
  std::optional<int32_t> bos_id_;
  std::optional<int32_t> eos_id_;
  std::vector<int16_t> byte_of_id_;  // the byte of a BYTE piece, -1 for other pieces
  float min_score_ = 0;              // over normal pieces (unigram's unknown penalty base)
  float max_score_ = 0;              // over normal pieces (user-defined piece bonus)
  std::string unk_surface_;          // what <unk> decodes to
};

}  // namespace ttt::tokenizer::internal
