// Debian's libsentencepiece as the reference for tests/tokenizer/sentencepiece_reference_test.cc,
// behind an Abseil-free face: Debian's sentencepiece_processor.h declares `absl::string_view` as
// std::string_view, which clashes with Debian's Abseil (its own string_view class), so only
// sentencepiece_reference.cc, which includes no Abseil header, may include it. The test binary
// links libsentencepiece (and its private protobuf 3.14) but no libprotobuf 3.21.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}  // namespace sentencepiece

namespace ttt::tokenizer::reference {

// Thread-compatible.
class SentencePieceReference {
 public:
  // Null with `*error` set when the library cannot load `path`.
  static std::unique_ptr<SentencePieceReference> Load(const std::string& path, std::string* error);
  ~SentencePieceReference();

  // False with `*error` set when the library fails.
  bool Encode(std::string_view text, std::vector<int>* ids, std::string* error) const;
  // REQUIRES: every id in [0, piece_size()).
  std::string Decode(const std::vector<int>& ids) const;

  int piece_size() const;
  int bos_id() const;  // -1 when the model has none
  int eos_id() const;

 private:
  explicit SentencePieceReference(std::unique_ptr<sentencepiece::SentencePieceProcessor> processor);
  std::unique_ptr<sentencepiece::SentencePieceProcessor> processor_;
};

}  // namespace ttt::tokenizer::reference
