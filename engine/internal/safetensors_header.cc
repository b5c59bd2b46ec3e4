// The safetensors JSON header: see safetensors_header.h. Every value read from the file is
// checked before use; nothing read from it is printed whole.
#include "engine/internal/safetensors_header.h"

#include <algorithm>
#include <optional>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "util/status_macros.h"

namespace ttt::engine::internal {
namespace {

using Json = nlohmann::json;

// How much of a name or value read from a file an error message quotes.
constexpr size_t kQuoteBytes = 64;

constexpr DtypeInfo kDtypes[] = {
    {"F32", at::kFloat, 4},  {"F16", at::kHalf, 2}, {"BF16", at::kBFloat16, 2},
    {"I64", at::kLong, 8},   {"I32", at::kInt, 4},  {"U8", at::kByte, 1},
    {"F64", at::kDouble, 8},  // a factored state's coefficients (engine/sequence.cc)
};

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) absl::StrAppend(&s, i ? ", " : "", shape[i]);
  return s + "]";
}

// A non-negative JSON integer that fits in uint64_t, or nullopt.
std::optional<uint64_t> AsCount(const Json& v) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer() && v.get<int64_t>() >= 0)
    return static_cast<uint64_t>(v.get<int64_t>());
  return std::nullopt;
}

// A JSON value for an error message: numbers, booleans and null as written, strings quoted and
// cut, arrays and objects by their size only. Never dump() a container read from a file: it
// recurses once per nesting level and echoes the value whole.
std::string Describe(const Json& v) {
  auto count = [](size_t n, const char* one, const char* many) {
    return absl::StrCat(n, " ", n == 1 ? one : many);
  };
  switch (v.type()) {
    case Json::value_t::string:
      return QuoteForError(v.get_ref<const std::string&>(), '"');
    case Json::value_t::array:
      return absl::StrCat("(an array of ", count(v.size(), "element", "elements"), ")");
    case Json::value_t::object:
      return absl::StrCat("(an object of ", count(v.size(), "member", "members"), ")");
    default:  // a number, boolean or null: short and flat
      return v.dump();
  }
}

// Refuses JSON whose arrays and objects nest deeper than `limit`, by a scan of the bytes (brackets
// inside strings do not count) before the JSON library builds anything: hostile nesting costs
// memory per level to parse and stack per level to print or compare.
absl::Status CheckNesting(std::string_view json, int limit) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < json.size(); ++i) {
    const char c = json[i];
    if (in_string) {
      if (c == '\\') {
        ++i;  // the escaped character cannot end the string
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > limit) {
        return absl::InvalidArgumentError(
            absl::StrCat("header has arrays or objects nested deeper than ", limit,
                         " levels (at byte ", i, " of the header)"));
      }
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return absl::OkStatus();
}

// "__metadata__": null or an object of strings.
absl::Status ReadMetadata(const Json& value, std::map<std::string, std::string>* metadata) {
  if (value.is_null()) return absl::OkStatus();
  if (!value.is_object()) {
    return absl::InvalidArgumentError("\"__metadata__\" must be an object of strings");
  }
  for (auto m = value.begin(); m != value.end(); ++m) {
    if (!m.value().is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat("metadata value of ", QuoteForError(m.key(), '\''),
                       " must be a string, got ", Describe(m.value())));
    }
    (*metadata)[m.key()] = m.value().get<std::string>();
  }
  return absl::OkStatus();
}

// The "shape" list into entry->shape; its byte count for elements of `element_size` bytes.
absl::StatusOr<uint64_t> ReadShape(const Json& shape, uint64_t element_size, TensorEntry* entry) {
  if (!shape.is_array()) {
    return absl::InvalidArgumentError("\"shape\" must be a list of non-negative integers");
  }
  uint64_t nbytes = element_size;
  for (const Json& d : shape) {
    std::optional<uint64_t> dim = AsCount(d);
    if (!dim || *dim > static_cast<uint64_t>(INT64_MAX)) {
      return absl::InvalidArgumentError(
          absl::StrCat("shape dimension ", Describe(d), " is not a non-negative integer"));
    }
    if (__builtin_mul_overflow(nbytes, *dim, &nbytes)) {
      return absl::InvalidArgumentError("shape is too large");
    }
    entry->shape.push_back(static_cast<int64_t>(*dim));
  }
  return nbytes;
}

// "data_offsets" [begin, end] into entry->begin/end, inside a data section of `data_size` bytes.
absl::Status ReadOffsets(const Json& offsets, uint64_t data_size, TensorEntry* entry) {
  if (!offsets.is_array() || offsets.size() != 2) {
    return absl::InvalidArgumentError("\"data_offsets\" must be [begin, end]");
  }
  const std::string shown = absl::StrCat("[", Describe(offsets[0]), ",", Describe(offsets[1]), "]");
  std::optional<uint64_t> begin = AsCount(offsets[0]);
  std::optional<uint64_t> end = AsCount(offsets[1]);
  if (!begin || !end || *begin > *end) {
    return absl::InvalidArgumentError(absl::StrCat(
        "\"data_offsets\" ", shown, " must be non-negative integers with begin <= end"));
  }
  if (*end > data_size) {
    return absl::InvalidArgumentError(absl::StrCat("\"data_offsets\" ", shown,
                                                   " run past the end of the data section (",
                                                   data_size, " bytes); truncated?"));
  }
  entry->begin = *begin;
  entry->end = *end;
  return absl::OkStatus();
}

// One tensor's entry {"dtype", "shape", "data_offsets"}; errors lack the tensor's name.
absl::StatusOr<TensorEntry> ReadEntry(const Json& value, uint64_t data_size) {
  if (!value.is_object()) return absl::InvalidArgumentError("entry must be an object");
  auto dtype_it = value.find("dtype");
  auto shape_it = value.find("shape");
  auto offsets_it = value.find("data_offsets");
  if (dtype_it == value.end() || shape_it == value.end() || offsets_it == value.end()) {
    return absl::InvalidArgumentError("entry needs \"dtype\", \"shape\" and \"data_offsets\"");
  }
  if (!dtype_it->is_string()) return absl::InvalidArgumentError("\"dtype\" must be a string");
  const DtypeInfo* dtype = DtypeByName(dtype_it->get<std::string>());
  if (dtype == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("unsupported dtype ", Describe(*dtype_it),
                     " (supported: F32, F16, BF16, I64, I32, U8, F64)"));
  }
  TensorEntry entry;
  entry.dtype = dtype->type;
  ASSIGN_OR_RETURN(const uint64_t nbytes, ReadShape(*shape_it, dtype->size, &entry));
  RETURN_IF_ERROR(ReadOffsets(*offsets_it, data_size, &entry));
  if (entry.end - entry.begin != nbytes) {
    return absl::InvalidArgumentError(absl::StrCat("holds ", entry.end - entry.begin, " bytes but ",
                                                   dtype->name, " ", ShapeString(entry.shape),
                                                   " needs ", nbytes));
  }
  return entry;
}

// Refuses overlapping byte ranges after sorting `entries` into file order (empty tensors occupy
// nothing and may sit anywhere in range).
absl::Status SortAndCheckOverlap(std::vector<TensorEntry>* entries) {
  std::sort(entries->begin(), entries->end(), [](const TensorEntry& a, const TensorEntry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.name < b.name;
  });
  const TensorEntry* prev = nullptr;
  for (const TensorEntry& e : *entries) {
    if (e.begin == e.end) continue;
    if (prev != nullptr && e.begin < prev->end) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", QuoteForError(e.name, '\''), " bytes [", e.begin, ", ", e.end,
                       ") overlap tensor ", QuoteForError(prev->name, '\''), " bytes [",
                       prev->begin, ", ", prev->end, ")"));
    }
    prev = &e;
  }
  return absl::OkStatus();
}

}  // namespace

const DtypeInfo* DtypeByName(absl::string_view name) {
  for (const DtypeInfo& d : kDtypes) {
    if (name == d.name) return &d;
  }
  return nullptr;
}

const DtypeInfo* DtypeByType(at::ScalarType type) {
  for (const DtypeInfo& d : kDtypes) {
    if (type == d.type) return &d;
  }
  return nullptr;
}

// `text` between `quote` characters, cut to kQuoteBytes (never inside a UTF-8 character) and
// followed by its full length when cut: an error message stays short whatever a client sent.
std::string QuoteForError(absl::string_view text, char quote) {
  const absl::string_view q(&quote, 1);
  if (text.size() <= kQuoteBytes) return absl::StrCat(q, text, q);
  size_t cut = kQuoteBytes;
  while (cut > 0 && (static_cast<uint8_t>(text[cut]) & 0xC0) == 0x80) --cut;
  return absl::StrCat(q, text.substr(0, cut), "...", q, " (", text.size(), " bytes)");
}

absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(std::string_view header,
                                                         uint64_t data_size) {
  RETURN_IF_ERROR(CheckNesting(header, kSafetensorsMaxHeaderDepth));
  const Json json = Json::parse(header.begin(), header.end(), /*cb=*/nullptr,
                                /*allow_exceptions=*/false);
  if (json.is_discarded()) return absl::InvalidArgumentError("header is not valid JSON");
  if (!json.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("header must be a JSON object, got ", json.type_name()));
  }
  SafetensorsHeader out;
  for (auto it = json.begin(); it != json.end(); ++it) {
    if (it.key() == kMetadataKey) {
      RETURN_IF_ERROR(ReadMetadata(it.value(), &out.metadata));
      continue;
    }
    absl::StatusOr<TensorEntry> entry = ReadEntry(it.value(), data_size);
    if (!entry.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", QuoteForError(it.key(), '\''), ": ", entry.status().message()));
    }
    entry->name = it.key();
    out.entries.push_back(*std::move(entry));
  }
  RETURN_IF_ERROR(SortAndCheckOverlap(&out.entries));
  return out;
}

}  // namespace ttt::engine::internal
