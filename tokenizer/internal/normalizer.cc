// Hugging Face normalizers over utf8proc: see normalizer.h. Each step mirrors the tokenizers
// crate's (normalizers/{unicode,strip,replace,prepend,utils}.rs) on the text alone; offsets are
// not tracked because the server never maps tokens back to input positions.
#include "tokenizer/internal/normalizer.h"

#include <utf8proc.h>

#include <algorithm>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "tokenizer/internal/unicode_classes.h"
#include "util/status_macros.h"

namespace ttt::tokenizer::internal {

struct Normalizer::Step {
  enum class Kind { kUnicodeForm, kLowercase, kStrip, kReplace, kPrepend };
  Kind kind;
  int utf8proc_options = 0;      // kUnicodeForm
  bool left = false;             // kStrip
  bool right = false;            // kStrip
  std::unique_ptr<Regex> regex;  // kReplace
  std::string text;              // kReplace: the replacement; kPrepend: the prefix
};

namespace {

using Json = nlohmann::json;
using Step = Normalizer::Step;

bool IsAscii(std::string_view text) {
  return std::all_of(text.begin(), text.end(), [](char c) { return (c & 0x80) == 0; });
}

// Calls `visit(code_point, byte_length)` for each character. REQUIRES: valid UTF-8.
template <typename Visit>
void ForEachCodePoint(std::string_view text, Visit visit) {
  const auto* bytes = reinterpret_cast<const utf8proc_uint8_t*>(text.data());
  for (size_t pos = 0; pos < text.size();) {
    utf8proc_int32_t cp = 0;
    const utf8proc_ssize_t length =
        utf8proc_iterate(bytes + pos, static_cast<utf8proc_ssize_t>(text.size() - pos), &cp);
    visit(cp, static_cast<size_t>(length));
    pos += static_cast<size_t>(length);
  }
}

void AppendCodePoint(utf8proc_int32_t cp, std::string* out) {
  utf8proc_uint8_t buffer[4];
  const utf8proc_ssize_t length = utf8proc_encode_char(cp, buffer);
  out->append(reinterpret_cast<const char*>(buffer), static_cast<size_t>(length));
}

absl::StatusOr<std::string> MapWithUtf8proc(std::string_view text, int options) {
  utf8proc_uint8_t* result = nullptr;
  const utf8proc_ssize_t length = utf8proc_map(
      reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
      static_cast<utf8proc_ssize_t>(text.size()), &result, static_cast<utf8proc_option_t>(options));
  if (length < 0) {
    return absl::InternalError(absl::StrCat("utf8proc: ", utf8proc_errmsg(length)));
  }
  std::string normalized(reinterpret_cast<const char*>(result), static_cast<size_t>(length));
  std::free(result);
  return normalized;
}

// A Unicode form's quick check (UAX #15), per code point: whether it may change in that form
// (decomposes, or for the composing forms may compose with what precedes it: NFC_QC "No" or
// "Maybe"), else its canonical combining class. A text whose characters may none of them
// change, and whose combining marks are in canonical order, is already in the form. A starter
// (class 0) that may not change is a boundary: nothing before it composes or reorders with it
// or with what follows, so a text normalizes span by span, cut just before one. Built once per
// form (~10 ms, 1.1 MB).
class QuickCheck {
 public:
  explicit QuickCheck(int options) : class_(kCodePoints, kMayChange) {
    const bool composes = (options & UTF8PROC_COMPOSE) != 0;
    for (utf8proc_int32_t cp = 0; cp < kCodePoints; ++cp) {
      if (cp >= 0xD800 && cp <= 0xDFFF) continue;  // never in valid UTF-8
      const utf8proc_property_t* property = utf8proc_get_property(cp);
      const bool composition_second =
          (property->comb_index != UINT16_MAX && (property->comb_index & 0x8000) != 0) ||
          (cp >= 0x1161 && cp <= 0x1175) || (cp >= 0x11A8 && cp <= 0x11C2);  // Hangul V, T
      if (composes && composition_second) continue;
      if (!UnchangedAlone(cp, property, options)) continue;
      class_[cp] = static_cast<uint8_t>(property->combining_class);  // at most 240
    }
  }

  // The byte offset of the first character at or after `pos` that needs normalizing (text.size()
  // when none does): one that may change, or a combining mark out of canonical order.
  // `*boundary` is set to the offset of each boundary passed. REQUIRES: valid UTF-8, `pos` at
  // a boundary or the text's start. Decodes inline rather than through utf8proc_iterate: this
  // scan is the whole cost of normalizing text that is already normal, the common case.
  size_t SkipNormal(std::string_view text, size_t pos, size_t* boundary) const {
    const auto* bytes = reinterpret_cast<const uint8_t*>(text.data());
    const size_t size = text.size();
    uint8_t last_class = 0;
    while (pos < size) {
      if (bytes[pos] < 0x80) {  // ASCII: boundaries under every form
        while (pos < size && bytes[pos] < 0x80) ++pos;
        *boundary = pos - 1;
        last_class = 0;
        continue;
      }
      size_t length;
      const uint8_t combining_class = class_[Decode(bytes + pos, &length)];
      if (combining_class == kMayChange) return pos;
      if (combining_class == 0) {
        *boundary = pos;
      } else if (combining_class < last_class) {
        return pos;  // to be reordered
      }
      last_class = combining_class;
      pos += length;
    }
    return size;
  }

  // The byte offset of the first boundary after `pos`, or text.size(). REQUIRES: valid UTF-8,
  // `pos` at a character SkipNormal stopped at (never ASCII).
  size_t NextBoundary(std::string_view text, size_t pos) const {
    const auto* bytes = reinterpret_cast<const uint8_t*>(text.data());
    size_t length;
    Decode(bytes + pos, &length);
    for (pos += length; pos < text.size(); pos += length) {
      if (bytes[pos] < 0x80 || class_[Decode(bytes + pos, &length)] == 0) return pos;
    }
    return text.size();
  }

 private:
  static constexpr uint8_t kMayChange = 0xFF;  // above every combining class
  static constexpr utf8proc_int32_t kCodePoints = 0x110000;

  static bool UnchangedAlone(utf8proc_int32_t cp, const utf8proc_property_t* property,
                             int options) {
    const bool hangul_syllable = cp >= 0xAC00 && cp <= 0xD7A3;
    if (property->decomp_seqindex == UINT16_MAX && !hangul_syllable) return true;
    utf8proc_uint8_t bytes[4];
    const auto length = utf8proc_encode_char(cp, bytes);
    const std::string_view alone(reinterpret_cast<const char*>(bytes), length);
    const absl::StatusOr<std::string> normalized = MapWithUtf8proc(alone, options);
    return normalized.ok() && *normalized == alone;
  }

  // REQUIRES: `bytes` starts a valid multi-byte UTF-8 sequence.
  static uint32_t Decode(const uint8_t* bytes, size_t* length) {
    const uint8_t lead = bytes[0];
    if (lead < 0xE0) {
      *length = 2;
      return ((lead & 0x1Fu) << 6) | (bytes[1] & 0x3Fu);
    }
    if (lead < 0xF0) {
      *length = 3;
      return ((lead & 0x0Fu) << 12) | ((bytes[1] & 0x3Fu) << 6) | (bytes[2] & 0x3Fu);
    }
    *length = 4;
    return ((lead & 0x07u) << 18) | ((bytes[1] & 0x3Fu) << 12) | ((bytes[2] & 0x3Fu) << 6) |
           (bytes[3] & 0x3Fu);
  }

  std::vector<uint8_t> class_;  // by code point: kMayChange, else the combining class
};

// REQUIRES: `options` is one of the four forms' (see kForms below).
const QuickCheck& QuickCheckFor(int options) {
  const auto build = [](int form) { return new QuickCheck(form); };
  switch (options) {
    case UTF8PROC_STABLE | UTF8PROC_COMPOSE: {
      static const QuickCheck* const nfc = build(options);
      return *nfc;
    }
    case UTF8PROC_STABLE | UTF8PROC_DECOMPOSE: {
      static const QuickCheck* const nfd = build(options);
      return *nfd;
    }
    case UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT: {
      static const QuickCheck* const nfkc = build(options);
      return *nfkc;
    }
    default: {
      static const QuickCheck* const nfkd = build(options);
      return *nfkd;
    }
  }
}

// Appends `span` in the form: utf8proc's decomposition and recomposition on the stack for the
// short spans text has (a character and its marks), without utf8proc_map's two passes and heap
// buffer; MapWithUtf8proc for longer ones.
absl::Status AppendNormalized(std::string_view span, int options, std::string* out) {
  utf8proc_int32_t buffer[128];
  const auto flags = static_cast<utf8proc_option_t>(options);
  const utf8proc_ssize_t code_points =
      utf8proc_decompose(reinterpret_cast<const utf8proc_uint8_t*>(span.data()),
                         static_cast<utf8proc_ssize_t>(span.size()), buffer, 128, flags);
  // utf8proc_reencode writes UTF-8 in place plus a terminating byte: room for one more.
  if (code_points >= 0 && code_points < 128) {
    const utf8proc_ssize_t bytes = utf8proc_reencode(buffer, code_points, flags);
    if (bytes >= 0) {
      out->append(reinterpret_cast<const char*>(buffer), static_cast<size_t>(bytes));
      return absl::OkStatus();
    }
  }
  ASSIGN_OR_RETURN(const std::string normalized, MapWithUtf8proc(span, options));
  out->append(normalized);
  return absl::OkStatus();
}

// Normalizes only the spans that need it: from the boundary before a character that may change
// (or a mark out of order) to the next boundary. The rest is copied as it is, and text that is
// already normal is left untouched, so the cost is a scan unless the text needs the change.
absl::Status UnicodeForm(int options, std::string* text) {
  const QuickCheck& check = QuickCheckFor(options);
  const std::string_view in = *text;
  std::string out;
  size_t copied = 0;    // in[0, copied) is settled: appended to `out` once a span has changed
  size_t boundary = 0;  // the last boundary from `copied` on, else `copied`
  size_t pos = check.SkipNormal(in, 0, &boundary);
  while (pos < in.size()) {
    const size_t span_end = check.NextBoundary(in, pos);
    if (out.empty()) out.reserve(in.size() + in.size() / 8);
    out.append(in.substr(copied, boundary - copied));
    RETURN_IF_ERROR(AppendNormalized(in.substr(boundary, span_end - boundary), options, &out));
    copied = boundary = span_end;
    pos = check.SkipNormal(in, span_end, &boundary);
  }
  if (copied == 0) return absl::OkStatus();  // already normal
  out.append(in.substr(copied));
  *text = std::move(out);
  return absl::OkStatus();
}

// Rust's char::to_lowercase, which tokenizers' Lowercase applies per character: the simple
// mapping, except U+0130 (capital I with dot), the one character whose full lowercase mapping
// without conditions (SpecialCasing.txt) is two characters.
std::string Lowercase(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  if (IsAscii(text)) {
    for (char c : text) out.push_back(c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : c);
    return out;
  }
  ForEachCodePoint(text, [&](utf8proc_int32_t cp, size_t) {
    if (cp == 0x130) {
      out.append("i\xCC\x87");  // U+0069 U+0307
    } else {
      AppendCodePoint(utf8proc_tolower(cp), &out);
    }
  });
  return out;
}

// Rust's str::trim_start / trim_end: White_Space characters.
std::string Strip(std::string_view text, bool left, bool right) {
  size_t begin = 0, end = text.size();
  if (left) {
    bool stripping = true;
    ForEachCodePoint(text, [&](utf8proc_int32_t cp, size_t length) {
      if (stripping && IsWhiteSpace(cp)) {
        begin += length;
      } else {
        stripping = false;
      }
    });
  }
  if (right) {
    size_t kept_end = begin;  // end of the last non-white-space character after `begin`
    size_t pos = begin;
    ForEachCodePoint(text.substr(begin), [&](utf8proc_int32_t cp, size_t length) {
      pos += length;
      if (!IsWhiteSpace(cp)) kept_end = pos;
    });
    end = kept_end;
  }
  return std::string(text.substr(begin, end - begin));
}

absl::StatusOr<std::string> Replace(const Step& step, std::string_view text) {
  ASSIGN_OR_RETURN(auto matches, step.regex->FindAll(text));
  std::string out;
  size_t last = 0;
  for (const auto& [begin, end] : matches) {
    out.append(text.substr(last, begin - last));
    out.append(step.text);
    last = end;
  }
  out.append(text.substr(last));
  return out;
}

const Json* StringField(const Json& node, const char* key) {
  const auto it = node.find(key);
  return it != node.end() && it->is_string() ? &*it : nullptr;
}

bool BoolField(const Json& node, const char* key, bool fallback) {
  const auto it = node.find(key);
  return it != node.end() && it->is_boolean() ? it->get<bool>() : fallback;
}

absl::StatusOr<std::unique_ptr<Step>> ParseReplace(const Json& node) {
  const auto pattern = node.find("pattern");
  const Json* content = StringField(node, "content");
  if (pattern == node.end() || !pattern->is_object() || content == nullptr) {
    return absl::InvalidArgumentError(
        "Replace normalizer needs a pattern ({\"String\": ...} or {\"Regex\": ...}) and a content");
  }
  const Json* regex = StringField(*pattern, "Regex");
  const Json* literal = StringField(*pattern, "String");
  if (regex == nullptr && literal == nullptr) {
    return absl::InvalidArgumentError(
        "Replace normalizer pattern is neither {\"String\": ...} nor {\"Regex\": ...}");
  }
  auto compiled = regex != nullptr ? Regex::Compile(regex->get<std::string>(), /*literal=*/false)
                                   : Regex::Compile(literal->get<std::string>(), /*literal=*/true);
  if (!compiled.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("Replace normalizer pattern: ", compiled.status().message()));
  }
  auto step = std::make_unique<Step>();
  step->kind = Step::Kind::kReplace;
  step->regex = *std::move(compiled);
  step->text = content->get<std::string>();
  return step;
}

absl::Status AppendSteps(const Json& node, std::vector<std::unique_ptr<Step>>* steps) {
  if (node.is_null()) return absl::OkStatus();
  const Json* type_field = node.is_object() ? StringField(node, "type") : nullptr;
  if (type_field == nullptr) return absl::InvalidArgumentError("normalizer without a type");
  const std::string type = type_field->get<std::string>();
  if (type == "Sequence") {
    const auto children = node.find("normalizers");
    if (children == node.end() || !children->is_array()) {
      return absl::InvalidArgumentError("Sequence normalizer without a normalizers list");
    }
    for (const Json& child : *children) {
      RETURN_IF_ERROR(AppendSteps(child, steps));
    }
    return absl::OkStatus();
  }
  static constexpr std::pair<const char*, int> kForms[] = {
      {"NFC", UTF8PROC_STABLE | UTF8PROC_COMPOSE},
      {"NFD", UTF8PROC_STABLE | UTF8PROC_DECOMPOSE},
      {"NFKC", UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT},
      {"NFKD", UTF8PROC_STABLE | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT}};
  auto step = std::make_unique<Step>();
  for (const auto& [name, options] : kForms) {
    if (type == name) {
      step->kind = Step::Kind::kUnicodeForm;
      step->utf8proc_options = options;
      QuickCheckFor(options);  // built at load rather than on the first request
    }
  }
  if (type == "Lowercase") {
    step->kind = Step::Kind::kLowercase;
  } else if (type == "Strip") {
    step->kind = Step::Kind::kStrip;
    step->left = BoolField(node, "strip_left", true);
    step->right = BoolField(node, "strip_right", true);
  } else if (type == "Prepend") {
    const Json* prepend = StringField(node, "prepend");
    if (prepend == nullptr) return absl::InvalidArgumentError("Prepend normalizer without prepend");
    step->kind = Step::Kind::kPrepend;
    step->text = prepend->get<std::string>();
  } else if (type == "Replace") {
    ASSIGN_OR_RETURN(step, ParseReplace(node));
  } else if (step->utf8proc_options == 0) {
    return absl::UnimplementedError(absl::StrCat(
        "unsupported normalizer type ", type,
        " (supported: NFC, NFD, NFKC, NFKD, Lowercase, Strip, Replace, Prepend, Sequence)"));
  }
  steps->push_back(std::move(step));
  return absl::OkStatus();
}

}  // namespace

Normalizer::~Normalizer() = default;

absl::StatusOr<std::unique_ptr<Normalizer>> Normalizer::Parse(const Json& node) {
  auto normalizer = std::unique_ptr<Normalizer>(new Normalizer());
  RETURN_IF_ERROR(AppendSteps(node, &normalizer->steps_));
  return normalizer;
}

absl::StatusOr<std::string> Normalizer::Normalize(std::string_view text) const {
  std::string current(text);
  for (const std::unique_ptr<Step>& step : steps_) {
    switch (step->kind) {
      case Step::Kind::kUnicodeForm: {
        RETURN_IF_ERROR(UnicodeForm(step->utf8proc_options, &current));
        break;
      }
      case Step::Kind::kLowercase:
        current = Lowercase(current);
        break;
      case Step::Kind::kStrip:
        current = Strip(current, step->left, step->right);
        break;
      case Step::Kind::kReplace: {
        ASSIGN_OR_RETURN(current, Replace(*step, current));
        break;
      }
      case Step::Kind::kPrepend:
        if (!current.empty()) current.insert(0, step->text);  // tokenizers skips empty text
        break;
    }
  }
  return current;
}

}  // namespace ttt::tokenizer::internal
