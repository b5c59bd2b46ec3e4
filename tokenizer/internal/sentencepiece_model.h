// A thin, Abseil-free face over libsentencepiece's SentencePieceProcessor. It exists because
// Debian's sentencepiece_processor.h declares `absl::string_view` as std::string_view, which
// clashes with Debian's Abseil (its own string_view class): the library header may only be
// included by a translation unit that includes no Abseil header, sentencepiece_model.cc.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}  // namespace sentencepiece

namespace ttt::tokenizer::internal {

// Thread-safe for concurrent const calls, as the processor is.
class SentencePieceModel {
 public:
  // Null with `*error` set when the library cannot load `path`.
  static std::unique_ptr<SentencePieceModel> Load(const std::string& path, std::string* error);
  ~SentencePieceModel();

  // False with `*error` set when the library fails.
  bool Encode(std::string_view text, std::vector<int>* ids, std::string* error) const;
  // REQUIRES: every id in [0, piece_size()).
  std::string Decode(const std::vector<int>& ids) const;

  int piece_size() const;
  int bos_id() const;  // -1 when the model has none
  int eos_id() const;
  int unk_id() const;
  // REQUIRES for these four: id in [0, piece_size()).
  bool IsControl(int id) const;
  bool IsUnknown(int id) const;
  bool IsByte(int id) const;
  const std::string& IdToPiece(int id) const;

 private:
  explicit SentencePieceModel(std::unique_ptr<sentencepiece::SentencePieceProcessor> processor);
  std::unique_ptr<sentencepiece::SentencePieceProcessor> processor_;
};

}  // namespace ttt::tokenizer::internal
