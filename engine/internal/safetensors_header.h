// The JSON header of a safetensors file, read and validated: the dtype table shared with the
// writer, the nesting check that runs before the JSON library sees the bytes, and error messages
// that quote at most a short prefix of anything read from the file. No file access: the caller
// (SafetensorsFile) checks the length field and owns the bytes.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/internal/safetensors.h"

namespace ttt::engine::internal {

inline constexpr char kMetadataKey[] = "__metadata__";

struct DtypeInfo {
  const char* name;  // as the header writes it
  at::ScalarType type;
  uint64_t size;  // bytes per element
};
// nullptr for dtypes this reader does not support.
const DtypeInfo* DtypeByName(absl::string_view name);
const DtypeInfo* DtypeByType(at::ScalarType type);

struct SafetensorsHeader {
  std::vector<TensorEntry> entries;  // in file order (by begin offset, then name)
  std::map<std::string, std::string> metadata;
};

// Parses and validates the JSON `header` of a file whose data section holds `data_size` bytes:
// nesting at most kSafetensorsMaxHeaderDepth (checked first), a JSON object of tensor entries
// with supported dtypes, shapes whose byte count matches their offsets, offsets inside the data
// section and not overlapping, "__metadata__" an object of strings. INVALID_ARGUMENT naming the
// tensor otherwise (the caller adds the file's name).
absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(std::string_view header,
                                                         uint64_t data_size);

// `text` between `quote` characters for an error message: cut to 64 bytes (never inside a UTF-8
// character) and followed by its full length when cut.
std::string QuoteForError(absl::string_view text, char quote);

}  // namespace ttt::engine::internal
