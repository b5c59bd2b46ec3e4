// The protobuf wire format: see protobuf_wire.h and
// https://protobuf.dev/programming-guides/encoding/.
#include "tokenizer/internal/protobuf_wire.h"

#include <cstring>

namespace ttt::tokenizer::internal {

bool WireReader::ReadVarint(uint64_t* value) {
  uint64_t result = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (pos_ >= data_.size()) return Fail();
    const uint8_t byte = static_cast<uint8_t>(data_[pos_++]);
    result |= static_cast<uint64_t>(byte & 0x7F) << shift;
    if ((byte & 0x80) == 0) {
      *value = result;
      return true;
    }
  }
  return Fail();  // more than 10 bytes
}

bool WireReader::Next(Field* field) {
  if (!ok_ || pos_ >= data_.size()) return false;
  uint64_t tag = 0;
  if (!ReadVarint(&tag)) return false;
  const uint64_t number = tag >> 3;
  if (number == 0 || number > (1u << 29) - 1) return Fail();
  field->number = static_cast<uint32_t>(number);
  field->type = static_cast<WireType>(tag & 7);
  field->varint = 0;
  field->bytes = {};
  switch (field->type) {
    case kVarint:
      return ReadVarint(&field->varint);
    case kFixed64:
    case kFixed32: {
      const size_t size = field->type == kFixed64 ? 8 : 4;
      if (data_.size() - pos_ < size) return Fail();
      for (size_t i = 0; i < size; ++i) {
        field->varint |= static_cast<uint64_t>(static_cast<uint8_t>(data_[pos_ + i])) << (8 * i);
      }
      pos_ += size;
      return true;
    }
    case kLengthDelimited: {
      uint64_t length = 0;
      if (!ReadVarint(&length)) return false;
      if (length > data_.size() - pos_) return Fail();
      field->bytes = data_.substr(pos_, length);
      pos_ += length;
      return true;
    }
    default:
      return Fail();
  }
}

float WireReader::AsFloat(const Field& field) {
  const uint32_t bits = static_cast<uint32_t>(field.varint);
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

}  // namespace ttt::tokenizer::internal
