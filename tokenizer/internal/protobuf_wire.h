// A minimal reader for the protobuf wire format (varints, fixed32/64 and length-delimited
// fields), enough to parse SentencePiece's ModelProto without libprotobuf: a process that links
// the server's libprotobuf must not also load another protobuf runtime.
#pragma once

#include <cstdint>
#include <string_view>

namespace ttt::tokenizer::internal {

// Iterates over the fields of one serialized message. Not thread-safe (it has a cursor); the
// bytes it reads must outlive it and the views it returns.
//
//   WireReader reader(bytes);
//   WireReader::Field field;
//   while (reader.Next(&field)) { ... field.number, field.varint / field.bytes ... }
//   if (!reader.ok()) { malformed }
class WireReader {
 public:
  enum WireType : uint32_t {
    kVarint = 0,
    kFixed64 = 1,
    kLengthDelimited = 2,
    kStartGroup = 3,
    kEndGroup = 4,
    kFixed32 = 5,
  };

  struct Field {
    uint32_t number = 0;
    WireType type = kVarint;
    uint64_t varint = 0;     // kVarint; kFixed32 and kFixed64 (the raw bits, little-endian)
    std::string_view bytes;  // kLengthDelimited: the payload (a string or a nested message)
  };

  explicit WireReader(std::string_view data) : data_(data) {}

  // Reads the next field into `*field`. False at the end of the message or on malformed input
  // (then ok() is false). Groups, deprecated since proto2, are rejected as malformed.
  bool Next(Field* field);

  bool ok() const { return ok_; }

  // The value of a fixed32 field as a float (IEEE 754 bits).
  static float AsFloat(const Field& field);

 private:
  bool ReadVarint(uint64_t* value);
  bool Fail() {
    ok_ = false;
    return false;
  }

  std::string_view data_;
  size_t pos_ = 0;
  bool ok_ = true;
};

}  // namespace ttt::tokenizer::internal
