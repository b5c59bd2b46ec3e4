// ModelProto parsing: see sentencepiece_model.h. Field numbers are sentencepiece_model.proto's
// (checked against `protoc --decode_raw` of models/ttt-brown/tokenizer.model).
#include "tokenizer/internal/sentencepiece_model.h"

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "tokenizer/internal/protobuf_wire.h"

namespace ttt::tokenizer::internal {
namespace {

using Field = WireReader::Field;

absl::Status Malformed(const char* message) {
  return absl::InvalidArgumentError(absl::StrCat("malformed protobuf in ", message));
}

// Proto2 scalars: the last occurrence wins; a wrong wire type makes the message malformed.
bool IsVarint(const Field& field) { return field.type == WireReader::kVarint; }

absl::Status ParsePiece(std::string_view bytes, SentencePieceEntry* entry) {
  WireReader reader(bytes);
  Field field;
  while (reader.Next(&field)) {
    if (field.number == 1 && field.type == WireReader::kLengthDelimited) {
      entry->piece = std::string(field.bytes);
    } else if (field.number == 2 && field.type == WireReader::kFixed32) {
      entry->score = WireReader::AsFloat(field);
    } else if (field.number == 3 && IsVarint(field)) {
      entry->type = static_cast<PieceType>(static_cast<int32_t>(field.varint));
    } else if (field.number <= 3) {
      return Malformed("SentencePiece (wrong wire type)");
    }
  }
  return reader.ok() ? absl::OkStatus() : Malformed("SentencePiece");
}

absl::Status ParseTrainerSpec(std::string_view bytes, SentencePieceModelProto* model) {
  WireReader reader(bytes);
  Field field;
  while (reader.Next(&field)) {
    switch (field.number) {
      case 3:
        if (!IsVarint(field)) return Malformed("TrainerSpec.model_type");
        model->model_type = static_cast<SentencePieceModelType>(static_cast<int32_t>(field.varint));
        break;
      case 24:
        if (!IsVarint(field)) return Malformed("TrainerSpec.treat_whitespace_as_suffix");
        model->treat_whitespace_as_suffix = field.varint != 0;
        break;
      case 35:
        if (!IsVarint(field)) return Malformed("TrainerSpec.byte_fallback");
        model->byte_fallback = field.varint != 0;
        break;
      case 44:
        if (field.type != WireReader::kLengthDelimited) return Malformed("TrainerSpec.unk_surface");
        model->has_unk_surface = true;
        model->unk_surface = std::string(field.bytes);
        break;
      case 46:
      case 47:
        if (field.type != WireReader::kLengthDelimited) return Malformed("TrainerSpec piece");
        (field.number == 46 ? model->bos_piece : model->eos_piece) = std::string(field.bytes);
        break;
      default:
        break;
    }
  }
  return reader.ok() ? absl::OkStatus() : Malformed("TrainerSpec");
}

absl::Status ParseNormalizerSpec(std::string_view bytes, NormalizerSpec* spec) {
  WireReader reader(bytes);
  Field field;
  while (reader.Next(&field)) {
    const bool bytes_field = field.type == WireReader::kLengthDelimited;
    switch (field.number) {
      case 1:
        if (!bytes_field) return Malformed("NormalizerSpec.name");
        spec->name = std::string(field.bytes);
        break;
      case 2:
        if (!bytes_field) return Malformed("NormalizerSpec.precompiled_charsmap");
        spec->precompiled_charsmap = std::string(field.bytes);
        break;
      case 3:
      case 4:
      case 5: {
        if (!IsVarint(field)) return Malformed("NormalizerSpec");
        const bool value = field.varint != 0;
        (field.number == 3   ? spec->add_dummy_prefix
         : field.number == 4 ? spec->remove_extra_whitespaces
                             : spec->escape_whitespaces) = value;
        break;
      }
      default:
        break;
    }
  }
  return reader.ok() ? absl::OkStatus() : Malformed("NormalizerSpec");
}

}  // namespace

absl::StatusOr<SentencePieceModelProto> ParseSentencePieceModel(std::string_view bytes) {
  SentencePieceModelProto model;
  WireReader reader(bytes);
  Field field;
  while (reader.Next(&field)) {
    if (field.number > 5) continue;  // unknown fields are skipped, as protobuf does
    if (field.type != WireReader::kLengthDelimited) return Malformed("ModelProto (wire type)");
    absl::Status status;
    switch (field.number) {
      case 1:
        model.pieces.emplace_back();
        status = ParsePiece(field.bytes, &model.pieces.back());
        break;
      case 2:
        status = ParseTrainerSpec(field.bytes, &model);
        break;
      case 3:
        status = ParseNormalizerSpec(field.bytes, &model.normalizer);
        break;
      case 5:
        model.has_denormalizer = true;
        status = ParseNormalizerSpec(field.bytes, &model.denormalizer);
        break;
      default:  // 4: self_test_data
        break;
    }
    if (!status.ok()) return status;
  }
  if (!reader.ok()) return Malformed("ModelProto");
  return model;
}

}  // namespace ttt::tokenizer::internal
