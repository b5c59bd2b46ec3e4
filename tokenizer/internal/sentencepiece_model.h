// SentencePiece's model file (`tokenizer.model`): the parts of its ModelProto
// (sentencepiece_model.proto) that encoding and decoding use, read with the hand-written wire
// reader in protobuf_wire.h. No libprotobuf and no libsentencepiece: the server links
// libprotobuf 3.21 and Debian's libsentencepiece carries its own protobuf 3.14 runtime, and the
// two cannot share a process.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace ttt::tokenizer::internal {

// ModelProto.SentencePiece.Type.
enum class PieceType : int32_t {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

// TrainerSpec.ModelType.
enum class SentencePieceModelType : int32_t { kUnigram = 1, kBpe = 2, kWord = 3, kChar = 4 };

struct SentencePieceEntry {
  std::string piece;                    // field 1
  float score = 0;                      // field 2
  PieceType type = PieceType::kNormal;  // field 3
};

// NormalizerSpec (also used for the denormalizer), with proto2 defaults.
struct NormalizerSpec {
  std::string name;                      // 1
  std::string precompiled_charsmap;      // 2: empty means identity
  bool add_dummy_prefix = true;          // 3
  bool remove_extra_whitespaces = true;  // 4
  bool escape_whitespaces = true;        // 5
};

struct SentencePieceModelProto {
  std::vector<SentencePieceEntry> pieces;  // ModelProto field 1; the index is the id
  // TrainerSpec (field 2):
  SentencePieceModelType model_type = SentencePieceModelType::kUnigram;  // 3
  bool treat_whitespace_as_suffix = false;                               // 24
  bool byte_fallback = false;                                            // 35
  bool has_unk_surface = false;
  std::string unk_surface;         // 44
  std::string bos_piece = "<s>";   // 46
  std::string eos_piece = "</s>";  // 47
  NormalizerSpec normalizer;       // ModelProto field 3
  bool has_denormalizer = false;
  NormalizerSpec denormalizer;  // ModelProto field 5
};

// INVALID_ARGUMENT ("malformed protobuf ...") when `bytes` is not a well-formed ModelProto.
// Unknown fields are skipped; semantic checks (an unknown piece exists, ...) are the caller's.
absl::StatusOr<SentencePieceModelProto> ParseSentencePieceModel(std::string_view bytes);

}  // namespace ttt::tokenizer::internal
