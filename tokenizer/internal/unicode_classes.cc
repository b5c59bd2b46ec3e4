// Unicode properties from utf8proc, and the rewrite of PCRE2 classes to follow them: see
// unicode_classes.h.
#include "tokenizer/internal/unicode_classes.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"

namespace ttt::tokenizer::internal {
namespace {

constexpr char32_t kMaxCodePoint = 0x10FFFF;
constexpr char32_t kSurrogateFirst = 0xD800, kSurrogateLast = 0xDFFF;

// Bit i stands for utf8proc's general category i (UTF8PROC_CATEGORY_CN = 0 ... _CO = 29).
using CategoryMask = uint32_t;
constexpr int kCategoryCount = 30;
constexpr const char* kCategoryNames[kCategoryCount] = {
    "Cn", "Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No", "Pc", "Pd", "Ps",
    "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So", "Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co"};

constexpr CategoryMask Bits(int first, int last) {
  CategoryMask mask = 0;
  for (int i = first; i <= last; ++i) mask |= CategoryMask{1} << i;
  return mask;
}

// The mask a property name stands for; nullopt for names that are not general categories.
std::optional<CategoryMask> PropertyMask(std::string_view name) {
  if (name == "L") return Bits(UTF8PROC_CATEGORY_LU, UTF8PROC_CATEGORY_LO);
  if (name == "L&") return Bits(UTF8PROC_CATEGORY_LU, UTF8PROC_CATEGORY_LT);
  if (name == "M") return Bits(UTF8PROC_CATEGORY_MN, UTF8PROC_CATEGORY_ME);
  if (name == "N") return Bits(UTF8PROC_CATEGORY_ND, UTF8PROC_CATEGORY_NO);
  if (name == "P") return Bits(UTF8PROC_CATEGORY_PC, UTF8PROC_CATEGORY_PO);
  if (name == "S") return Bits(UTF8PROC_CATEGORY_SM, UTF8PROC_CATEGORY_SO);
  if (name == "Z") return Bits(UTF8PROC_CATEGORY_ZS, UTF8PROC_CATEGORY_ZP);
  if (name == "C") return Bits(UTF8PROC_CATEGORY_CC, UTF8PROC_CATEGORY_CO) | Bits(0, 0);
  for (int i = 0; i < kCategoryCount; ++i) {
    if (name == kCategoryNames[i]) return Bits(i, i);
  }
  return std::nullopt;
}

int Utf8procCategory(char32_t cp) { return utf8proc_category(static_cast<utf8proc_int32_t>(cp)); }

// A character whose category PCRE2's tables and utf8proc's disagree on.
struct Disagreement {
  char32_t code_point;
  int pcre2_category;
  int utf8proc_category;
};

// Asks PCRE2 the category of every character utf8proc assigns (private use aside), once per
// process (about 50 ms): one match per character against \p{Lu}()|\p{Ll}()|..., whose set
// group names the category; no match means unassigned (Cn).
std::vector<Disagreement> ProbePcre2Categories() {
  std::string pattern = "^(?:";
  for (int i = 1; i < kCategoryCount; ++i) {
    absl::StrAppendFormat(&pattern, "%s\\p{%s}()", i > 1 ? "|" : "", kCategoryNames[i]);
  }
  pattern += ")";
  int error = 0;
  PCRE2_SIZE offset = 0;
  std::unique_ptr<pcre2_code, decltype(&pcre2_code_free)> code(
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                    PCRE2_UTF | PCRE2_UCP, &error, &offset, nullptr),
      &pcre2_code_free);
  std::vector<Disagreement> disagreements;
  if (code == nullptr) return disagreements;  // cannot happen: every name above is PCRE2's
  pcre2_jit_compile(code.get(), PCRE2_JIT_COMPLETE);
  std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> match(
      pcre2_match_data_create_from_pattern(code.get(), nullptr), &pcre2_match_data_free);
  for (char32_t cp = 0; cp <= kMaxCodePoint; ++cp) {
    if (cp == kSurrogateFirst) cp = kSurrogateLast + 1;
    const int ours = Utf8procCategory(cp);
    if (ours == UTF8PROC_CATEGORY_CN || ours == UTF8PROC_CATEGORY_CO) continue;
    utf8proc_uint8_t bytes[4];
    const utf8proc_ssize_t length = utf8proc_encode_char(static_cast<utf8proc_int32_t>(cp), bytes);
    const int rc = pcre2_match(code.get(), bytes, static_cast<PCRE2_SIZE>(length), 0,
                               PCRE2_NO_UTF_CHECK, match.get(), nullptr);
    const int theirs = rc > 1 ? rc - 1 : UTF8PROC_CATEGORY_CN;  // the highest set group
    if (theirs != ours) disagreements.push_back({cp, theirs, ours});
  }
  return disagreements;
}

const std::vector<Disagreement>& Disagreements() {
  static const auto* const disagreements = new std::vector<Disagreement>(ProbePcre2Categories());
  return *disagreements;
}

using Ranges = std::vector<std::pair<char32_t, char32_t>>;  // sorted, disjoint, inclusive

void AddCodePoint(char32_t cp, Ranges* ranges) {
  if (!ranges->empty() && ranges->back().second + 1 == cp) {
    ranges->back().second = cp;
  } else {
    ranges->emplace_back(cp, cp);
  }
}

template <typename Predicate>
Ranges RangesWhere(Predicate predicate) {
  Ranges ranges;
  for (char32_t cp = 0; cp <= kMaxCodePoint; ++cp) {
    if (predicate(cp)) AddCodePoint(cp, &ranges);
  }
  return ranges;
}

// Every code point PCRE2 accepts in a class (all but the surrogates) outside `ranges`.
Ranges Complement(const Ranges& ranges) {
  Ranges out;
  char32_t next = 0;
  const auto add_gap = [&](char32_t first, char32_t last) {
    if (first <= last && last < kSurrogateFirst) out.emplace_back(first, last);
    if (first <= last && last >= kSurrogateFirst) {
      if (first < kSurrogateFirst) out.emplace_back(first, kSurrogateFirst - 1);
      if (last > kSurrogateLast)
        out.emplace_back(std::max<char32_t>(first, kSurrogateLast + 1), last);
    }
  };
  for (const auto& [first, last] : ranges) {
    if (first > next) add_gap(next, first - 1);
    next = last + 1;
  }
  if (next <= kMaxCodePoint) add_gap(next, kMaxCodePoint);
  return out;
}

// Class items: \x{41}-\x{5A}\x{61}...
std::string Items(const Ranges& ranges) {
  std::string out;
  for (const auto& [first, last] : ranges) {
    if (first == last) {
      absl::StrAppendFormat(&out, "\\x{%X}", static_cast<uint32_t>(first));
    } else {
      absl::StrAppendFormat(&out, "\\x{%X}-\\x{%X}", static_cast<uint32_t>(first),
                            static_cast<uint32_t>(last));
    }
  }
  return out;
}

const Ranges& WhiteSpaceRanges() {
  static const auto* const ranges =
      new Ranges(RangesWhere([](char32_t cp) { return IsWhiteSpace(cp); }));
  return *ranges;
}

bool InMask(CategoryMask mask, int category) { return (mask >> category) & 1; }

// A general-category escape and what PCRE2 gets wrong about it.
struct CategoryClass {
  std::string positive;  // PCRE2's own test: \p{L}
  std::string negative;  // \P{L}
  CategoryMask mask;
  Ranges added;      // utf8proc says in, PCRE2 says out
  bool removed_any;  // some character PCRE2 says in, utf8proc says out
  Ranges Explicit() const {
    return RangesWhere([&](char32_t cp) {
      return (cp < kSurrogateFirst || cp > kSurrogateLast) && InMask(mask, Utf8procCategory(cp));
    });
  }
};

CategoryClass MakeCategoryClass(std::string_view name, CategoryMask mask) {
  CategoryClass result{
      absl::StrFormat("\\p{%s}", name), absl::StrFormat("\\P{%s}", name), mask, {}, false};
  for (const Disagreement& d : Disagreements()) {
    const bool ours = InMask(mask, d.utf8proc_category);
    const bool theirs = InMask(mask, d.pcre2_category);
    if (ours && !theirs) AddCodePoint(d.code_point, &result.added);
    if (theirs && !ours) result.removed_any = true;
  }
  return result;
}

std::string Rewrite(const CategoryClass& c, bool negated, bool in_class) {
  const bool exact = c.added.empty() && !c.removed_any;
  if (exact) return negated ? c.negative : c.positive;
  if (!negated && !c.removed_any) {
    const std::string items = c.positive + Items(c.added);
    return in_class ? items : "[" + items + "]";
  }
  if (negated && !c.removed_any && !in_class) {
    return "(?:(?![" + Items(c.added) + "])" + c.negative + ")";
  }
  const Ranges explicit_ranges = negated ? Complement(c.Explicit()) : c.Explicit();
  return in_class ? Items(explicit_ranges) : "[" + Items(explicit_ranges) + "]";
}

std::string RewriteWhiteSpace(bool negated, bool in_class) {
  if (in_class) return Items(negated ? Complement(WhiteSpaceRanges()) : WhiteSpaceRanges());
  return (negated ? "[^" : "[") + Items(WhiteSpaceRanges()) + "]";
}

// If pattern[pos] starts \s \S \d \D \p.. \P.. naming a general category: its rewrite and length.
std::optional<std::pair<std::string, size_t>> RewriteEscape(std::string_view pattern, size_t pos,
                                                            bool in_class) {
  const char kind = pattern[pos + 1];
  if (kind == 's' || kind == 'S')
    return std::make_pair(RewriteWhiteSpace(kind == 'S', in_class), 2);
  if (kind == 'd' || kind == 'D') {
    return std::make_pair(
        Rewrite(MakeCategoryClass("Nd", *PropertyMask("Nd")), kind == 'D', in_class), size_t{2});
  }
  if (kind != 'p' && kind != 'P') return std::nullopt;
  bool negated = kind == 'P';
  std::string_view name;
  size_t length;
  if (pos + 2 < pattern.size() && pattern[pos + 2] == '{') {
    const size_t close = pattern.find('}', pos + 3);
    if (close == std::string_view::npos) return std::nullopt;
    name = pattern.substr(pos + 3, close - pos - 3);
    length = close + 1 - pos;
    if (!name.empty() && name[0] == '^') {
      negated = !negated;
      name.remove_prefix(1);
    }
  } else if (pos + 2 < pattern.size()) {
    name = pattern.substr(pos + 2, 1);
    length = 3;
  } else {
    return std::nullopt;
  }
  const std::optional<CategoryMask> mask = PropertyMask(name);
  if (!mask.has_value()) return std::nullopt;
  return std::make_pair(Rewrite(MakeCategoryClass(name, *mask), negated, in_class), length);
}

}  // namespace

std::string UnicodeVersion() { return utf8proc_unicode_version(); }

bool IsWhiteSpace(char32_t code_point) {
  if ((code_point >= 0x09 && code_point <= 0x0D) || code_point == 0x85) return true;
  if (code_point > kMaxCodePoint) return false;
  switch (Utf8procCategory(code_point)) {
    case UTF8PROC_CATEGORY_ZS:
    case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP:
      return true;
    default:
      return false;
  }
}

std::string TranslateUnicodeClasses(std::string_view pattern) {
  std::string out;
  bool in_class = false;
  for (size_t pos = 0; pos < pattern.size();) {
    const char c = pattern[pos];
    if (c == '\\' && pos + 1 < pattern.size()) {
      if (pattern[pos + 1] == 'Q') {  // \Q...\E is literal text
        const size_t end = pattern.find("\\E", pos + 2);
        const size_t stop = end == std::string_view::npos ? pattern.size() : end + 2;
        out.append(pattern.substr(pos, stop - pos));
        pos = stop;
        continue;
      }
      if (auto rewrite = RewriteEscape(pattern, pos, in_class)) {
        out += rewrite->first;
        pos += rewrite->second;
      } else {
        out.append(pattern.substr(pos, 2));
        pos += 2;
      }
      continue;
    }
    if (!in_class && c == '[') {
      // A class starts; a ']' right after "[" or "[^" is a literal member.
      in_class = true;
      size_t member = pos + 1;
      if (member < pattern.size() && pattern[member] == '^') ++member;
      if (member < pattern.size() && pattern[member] == ']') ++member;
      out.append(pattern.substr(pos, member - pos));
      pos = member;
      continue;
    }
    if (in_class && c == '[' && pos + 1 < pattern.size() && pattern[pos + 1] == ':') {
      const size_t end = pattern.find(":]", pos + 2);  // a POSIX class such as [:alpha:]
      if (end != std::string_view::npos) {
        out.append(pattern.substr(pos, end + 2 - pos));
        pos = end + 2;
        continue;
      }
    }
    if (in_class && c == ']') in_class = false;
    out.push_back(c);
    ++pos;
  }
  return out;
}

}  // namespace ttt::tokenizer::internal
