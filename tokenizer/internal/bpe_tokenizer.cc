// Byte-level BPE from tokenizer.json: see bpe_tokenizer.h. The pipeline mirrors Hugging Face
// tokenizers (added-token split -> pre-tokenizer -> BPE) but works on raw bytes throughout:
// vocab and merges are translated out of the GPT-2 byte-to-unicode alphabet once, at load.
#include "tokenizer/internal/bpe_tokenizer.h"

#include <algorithm>
#include <exception>
#include <nlohmann/json.hpp>
#include <queue>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "tokenizer/internal/utf8.h"
#include "util/status_macros.h"

namespace ttt::tokenizer::internal {
namespace {

using Json = nlohmann::json;

// GPT-2's pre-tokenizer regex, used by the ByteLevel pre-tokenizer when `use_regex` is set.
constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

constexpr size_t kMaxCachedWordBytes = 256;
constexpr size_t kMaxCacheEntries = 1 << 16;

// GPT-2's bytes_to_unicode(): printable Latin-1 bytes stand for themselves, the other 68 bytes
// for U+0100.. in byte order. Index: byte; value: code point.
std::array<char32_t, 256> ByteToCodePoint() {
  std::array<char32_t, 256> table{};
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    table[b] = printable ? static_cast<char32_t>(b) : next++;
  }
  return table;
}

// The inverse: code point (< 324) -> byte, or -1.
const std::array<int, 324>& CodePointToByte() {
  static const std::array<int, 324> table = [] {
    std::array<int, 324> t;
    t.fill(-1);
    const auto forward = ByteToCodePoint();
    for (int b = 0; b < 256; ++b) t[forward[b]] = b;
    return t;
  }();
  return table;
}

// Translates a token written in the byte-level alphabet to its raw bytes; nullopt when it holds
// a character outside that alphabet. REQUIRES: `symbol` is valid UTF-8 (JSON strings are).
std::optional<std::string> SymbolToBytes(std::string_view symbol) {
  std::string bytes;
  for (size_t pos = 0; pos < symbol.size();) {
    const Utf8Step step = NextUtf8(symbol, pos);
    if (step.kind != Utf8Step::kValid || step.length > 2) return std::nullopt;
    char32_t cp = static_cast<uint8_t>(symbol[pos]);
    if (step.length == 2) cp = ((cp & 0x1F) << 6) | (static_cast<uint8_t>(symbol[pos + 1]) & 0x3F);
    if (cp >= CodePointToByte().size() || CodePointToByte()[cp] < 0) return std::nullopt;
    bytes.push_back(static_cast<char>(CodePointToByte()[cp]));
    pos += step.length;
  }
  return bytes;
}

// Debian's Abseil has its own string_view class, distinct from std::string_view.
absl::string_view AbslView(std::string_view s) { return absl::string_view(s.data(), s.size()); }

uint64_t PairKey(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

// Errors name the file; `Malformed` is for what cannot be a valid tokenizer.json,
// `Unsupported` for valid files this module does not handle.
class ErrorFactory {
 public:
  explicit ErrorFactory(const std::string& source) : source_(source) {}
  absl::Status Malformed(const std::string& what) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": ", what));
  }
  absl::Status Unsupported(const std::string& what) const {
    return absl::UnimplementedError(absl::StrCat(source_, ": ", what));
  }

 private:
  const std::string& source_;
};

bool IsNullOrEmpty(const Json& object, const char* key) {
  const auto it = object.find(key);
  return it == object.end() || it->is_null() || (it->is_string() && it->get<std::string>().empty());
}

// Ids index a dense table (id -> bytes), so an id may not lie far beyond the tokens the file
// defines: one stray 300000000 would ask for gigabytes. Real files are dense (added tokens follow
// the vocab); this leaves room for as many gaps as tokens.
class IdBound {
 public:
  IdBound(const Json& vocab, const Json& added_tokens)
      : token_count_(static_cast<int64_t>(vocab.size()) +
                     (added_tokens.is_array() ? static_cast<int64_t>(added_tokens.size()) : 0)) {}

  int64_t limit() const { return 2 * token_count_ + 256; }

  std::string Beyond(std::string_view where, int64_t id) const {
    return absl::StrFormat(
        "%s has id %d, beyond the ids this file can use (below %d: twice its %d tokens plus 256); "
        "number the tokens densely",
        where, id, limit(), token_count_);
  }

 private:
  int64_t token_count_;
};

bool BoolOr(const Json& object, const char* key, bool fallback) {
  const auto it = object.find(key);
  return it != object.end() && it->is_boolean() ? it->get<bool>() : fallback;
}

absl::StatusOr<BpeTokenizer::PreTokenizerStage> RegexStage(std::string_view pattern, bool literal,
                                                           const ErrorFactory& errors) {
  auto regex = Regex::Compile(pattern, literal);
  if (!regex.ok()) {
    return errors.Malformed(absl::StrCat("pre_tokenizer pattern ", std::string(pattern), ": ",
                                         regex.status().message()));
  }
  BpeTokenizer::PreTokenizerStage stage;
  stage.regex = *std::move(regex);
  return stage;
}

// Appends the stages of one pre_tokenizer node. ByteLevel must come last: stages after it
// would see the byte-level alphabet, which this module does not model.
absl::Status ParsePreTokenizer(const Json& node, const ErrorFactory& errors,
                               std::vector<BpeTokenizer::PreTokenizerStage>* stages,
                               bool* saw_byte_level) {
  if (!node.is_object() || !node.contains("type") || !node["type"].is_string()) {
    return errors.Malformed("pre_tokenizer without a type");
  }
  const std::string type = node["type"].get<std::string>();
  if (*saw_byte_level) {
    return errors.Unsupported(absl::StrCat("pre_tokenizer ", type, " after ByteLevel"));
  }
  if (type == "Sequence") {
    const auto it = node.find("pretokenizers");
    if (it == node.end() || !it->is_array()) {
      return errors.Malformed("Sequence pre_tokenizer without a pretokenizers list");
    }
    for (const Json& child : *it) {
      RETURN_IF_ERROR(ParsePreTokenizer(child, errors, stages, saw_byte_level));
    }
    return absl::OkStatus();
  }
  if (type == "ByteLevel") {
    BpeTokenizer::PreTokenizerStage stage;
    if (BoolOr(node, "use_regex", true)) {
      ASSIGN_OR_RETURN(stage, RegexStage(kGpt2Pattern, /*literal=*/false, errors));
    }
    stage.add_prefix_space = BoolOr(node, "add_prefix_space", false);
    stages->push_back(std::move(stage));
    *saw_byte_level = true;
    return absl::OkStatus();
  }
  if (type == "Digits") {
    const bool individual = BoolOr(node, "individual_digits", false);
    auto stage = RegexStage(individual ? R"(\p{N})" : R"(\p{N}+)", /*literal=*/false, errors);
    if (!stage.ok()) return stage.status();
    stages->push_back(*std::move(stage));
    return absl::OkStatus();
  }
  if (type == "Split") {
    const auto pattern = node.find("pattern");
    if (pattern == node.end() || !pattern->is_object()) {
      return errors.Malformed("Split pre_tokenizer without a pattern");
    }
    absl::StatusOr<BpeTokenizer::PreTokenizerStage> stage;
    if (pattern->contains("Regex") && (*pattern)["Regex"].is_string()) {
      stage = RegexStage((*pattern)["Regex"].get<std::string>(), /*literal=*/false, errors);
    } else if (pattern->contains("String") && (*pattern)["String"].is_string()) {
      stage = RegexStage((*pattern)["String"].get<std::string>(), /*literal=*/true, errors);
    } else {
      return errors.Malformed("Split pattern is neither {\"Regex\": ...} nor {\"String\": ...}");
    }
    if (!stage.ok()) return stage.status();
    const std::string behavior = node.contains("behavior") && node["behavior"].is_string()
                                     ? node["behavior"].get<std::string>()
                                     : "Isolated";
    using Behavior = BpeTokenizer::SplitBehavior;
    static const auto* const kBehaviors = new std::vector<std::pair<std::string, Behavior>>{
        {"Isolated", Behavior::kIsolated},
        {"Removed", Behavior::kRemoved},
        {"MergedWithPrevious", Behavior::kMergedWithPrevious},
        {"MergedWithNext", Behavior::kMergedWithNext},
        {"Contiguous", Behavior::kContiguous}};
    const auto found = std::find_if(kBehaviors->begin(), kBehaviors->end(),
                                    [&](const auto& entry) { return entry.first == behavior; });
    if (found == kBehaviors->end()) {
      return errors.Malformed(absl::StrCat("unknown Split behavior ", behavior));
    }
    stage->behavior = found->second;
    stage->invert = BoolOr(node, "invert", false);
    stages->push_back(*std::move(stage));
    return absl::OkStatus();
  }
  return errors.Unsupported(absl::StrCat("unsupported pre_tokenizer type ", type));
}

// Splits `piece` by a stage's regex the way tokenizers' NormalizedString::split does.
absl::Status SplitPiece(const BpeTokenizer::PreTokenizerStage& stage, std::string_view piece,
                        std::vector<std::string>* out) {
  ASSIGN_OR_RETURN(auto matches, stage.regex->FindAll(piece));
  struct Span {
    size_t begin, end;
    bool is_match;
  };
  std::vector<Span> spans;
  size_t last = 0;
  for (const auto& [begin, end] : matches) {
    if (begin > last) spans.push_back({last, begin, false});
    spans.push_back({begin, end, true});
    last = end;
  }
  if (last < piece.size()) spans.push_back({last, piece.size(), false});
  if (stage.invert) {
    for (Span& span : spans) span.is_match = !span.is_match;
  }

  using Behavior = BpeTokenizer::SplitBehavior;
  std::vector<Span> result;
  bool previous_match = false;
  switch (stage.behavior) {
    case Behavior::kIsolated:
      result = spans;
      break;
    case Behavior::kRemoved:
      for (const Span& span : spans) {
        if (!span.is_match) result.push_back(span);
      }
      break;
    case Behavior::kMergedWithPrevious:
      for (const Span& span : spans) {
        if (span.is_match && !previous_match && !result.empty()) {
          result.back().end = span.end;
        } else {
          result.push_back(span);
        }
        previous_match = span.is_match;
      }
      break;
    case Behavior::kMergedWithNext:
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->is_match && !previous_match && !result.empty()) {
          result.back().begin = it->begin;
        } else {
          result.push_back(*it);
        }
        previous_match = it->is_match;
      }
      std::reverse(result.begin(), result.end());
      break;
    case Behavior::kContiguous:
      for (const Span& span : spans) {
        if (span.is_match && previous_match) {
          result.back().end = span.end;
        } else {
          result.push_back(span);
        }
        previous_match = span.is_match;
      }
      break;
  }
  for (const Span& span : result) {
    if (span.end > span.begin) out->emplace_back(piece.substr(span.begin, span.end - span.begin));
  }
  return absl::OkStatus();
}

std::optional<std::string> TokenName(const Json& config, const char* key) {
  const auto it = config.find(key);
  if (it == config.end()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) {
    return (*it)["content"].get<std::string>();
  }
  return std::nullopt;
}

// Whether `processor` (tokenizer.json's post_processor) puts token `bos` first in a single
// text's template: {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": NAME}},
// ...], "special_tokens": {NAME: {"ids": [bos]}}}, alone or inside a "Sequence".
bool TemplateStartsWith(const Json& processor, int32_t bos) {
  if (!processor.is_object()) return false;
  const std::string type = processor.value("type", "");
  if (type == "Sequence" && processor.contains("processors") &&
      processor["processors"].is_array()) {
    for (const Json& p : processor["processors"]) {
      if (TemplateStartsWith(p, bos)) return true;
    }
    return false;
  }
  if (type != "TemplateProcessing" || !processor.contains("single")) return false;
  const Json& single = processor["single"];
  if (!single.is_array() || single.empty() || !single[0].is_object()) return false;
  const Json& first = single[0];
  if (!first.contains("SpecialToken") || !first["SpecialToken"].is_object()) return false;
  const Json& name = first["SpecialToken"]["id"];
  if (!name.is_string() || !processor.contains("special_tokens")) return false;
  const Json& specials = processor["special_tokens"];
  if (!specials.is_object() || !specials.contains(name.get<std::string>())) return false;
  const Json& ids = specials[name.get<std::string>()]["ids"];
  return ids.is_array() && ids.size() == 1 && ids[0].is_number_integer() &&
         ids[0].get<int64_t>() == bos;
}

}  // namespace

absl::StatusOr<SpecialTokenNames> ParseSpecialTokenNames(std::string_view json_text,
                                                         const std::string& source) {
  const Json config = Json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (!config.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not a JSON object"));
  }
  SpecialTokenNames names;
  names.from_config = true;
  names.bos = TokenName(config, "bos_token");
  names.eos = TokenName(config, "eos_token");
  const auto add_bos = config.find("add_bos_token");
  if (add_bos != config.end() && add_bos->is_boolean()) names.add_bos = add_bos->get<bool>();
  return names;
}

absl::StatusOr<std::unique_ptr<BpeTokenizer>> BpeTokenizer::Create(std::string_view json_text,
                                                                   const std::string& source,
                                                                   const SpecialTokenNames& names) {
  const ErrorFactory errors(source);
  Json root;
  try {
    root = Json::parse(json_text);
  } catch (const std::exception& e) {
    return errors.Malformed(absl::StrCat("not valid JSON: ", e.what()));
  }
  if (!root.is_object() || !root.contains("model") || !root["model"].is_object()) {
    return errors.Malformed("no \"model\" object");
  }
  const Json& model = root["model"];
  if (model.contains("type") && model["type"] != "BPE") {
    return errors.Unsupported(absl::StrCat("model type ", model["type"].dump(), " is not BPE"));
  }
  if (BoolOr(model, "byte_fallback", false) || !IsNullOrEmpty(model, "continuing_subword_prefix") ||
      !IsNullOrEmpty(model, "end_of_word_suffix")) {
    return errors.Unsupported("BPE with byte_fallback or subword affixes is not byte-level BPE");
  }

  auto tokenizer = std::unique_ptr<BpeTokenizer>(new BpeTokenizer());
  BpeTokenizer& t = *tokenizer;
  t.ignore_merges_ = BoolOr(model, "ignore_merges", false);

  const Json null_json;
  bool saw_byte_level = false;
  const Json& pre = root.contains("pre_tokenizer") ? root["pre_tokenizer"] : null_json;
  if (!pre.is_null()) {
    RETURN_IF_ERROR(ParsePreTokenizer(pre, errors, &t.stages_, &saw_byte_level));
  }
  if (!saw_byte_level) return errors.Unsupported("no ByteLevel pre_tokenizer: not byte-level BPE");
  auto normalizer = Normalizer::Parse(root.contains("normalizer") ? root["normalizer"] : null_json);
  if (!normalizer.ok()) {
    return absl::Status(normalizer.status().code(),
                        absl::StrCat(source, ": ", normalizer.status().message()));
  }
  t.normalizer_ = *std::move(normalizer);

  // Vocab: byte-level symbols -> raw bytes.
  if (!model.contains("vocab") || !model["vocab"].is_object()) {
    return errors.Malformed("model.vocab is not an object");
  }
  const Json& vocab = model["vocab"];
  const Json& added = root.contains("added_tokens") ? root["added_tokens"] : null_json;
  const IdBound id_bound(vocab, added);
  for (const auto& [symbol, id_json] : vocab.items()) {
    if (!id_json.is_number_integer() || id_json.get<int64_t>() < 0) {
      return errors.Malformed(absl::StrCat("model.vocab[\"", symbol, "\"] is not a valid id"));
    }
    if (id_json.get<int64_t>() >= id_bound.limit()) {
      return errors.Malformed(
          id_bound.Beyond(absl::StrCat("model.vocab[\"", symbol, "\"]"), id_json.get<int64_t>()));
    }
    const auto id = static_cast<int32_t>(id_json.get<int64_t>());
    if (static_cast<size_t>(id) >= t.id_to_bytes_.size()) t.id_to_bytes_.resize(id + 1);
    std::optional<std::string> bytes = SymbolToBytes(symbol);
    // A symbol outside the alphabet cannot come out of the byte-level pipeline; it still decodes.
    t.id_to_bytes_[id] = bytes.has_value() ? *bytes : symbol;
    if (bytes.has_value()) t.vocab_.emplace(*std::move(bytes), id);
  }
  for (int b = 0; b < 256; ++b) {
    const auto it = t.vocab_.find(std::string(1, static_cast<char>(b)));
    if (it == t.vocab_.end()) {
      return errors.Malformed(
          absl::StrFormat("model.vocab lacks the byte-level symbol for byte 0x%02X", b));
    }
    t.byte_ids_[b] = it->second;
  }

  // Merges, in rank order: "left right" strings (older files) or [left, right] lists (newer).
  if (!model.contains("merges") || !model["merges"].is_array()) {
    return errors.Malformed("model.merges is not a list");
  }
  int32_t rank = 0;
  for (const Json& entry : model["merges"]) {
    std::string left, right;
    if (entry.is_string()) {
      const std::string text = entry.get<std::string>();
      const size_t space = text.find(' ');
      if (space == std::string::npos || text.find(' ', space + 1) != std::string::npos) {
        return errors.Malformed(absl::StrCat("merge #", rank, " \"", text, "\" is not \"a b\""));
      }
      left = text.substr(0, space);
      right = text.substr(space + 1);
    } else if (entry.is_array() && entry.size() == 2 && entry[0].is_string() &&
               entry[1].is_string()) {
      left = entry[0].get<std::string>();
      right = entry[1].get<std::string>();
    } else {
      return errors.Malformed(absl::StrCat("merge #", rank, " is neither \"a b\" nor [a, b]"));
    }
    const std::optional<std::string> left_bytes = SymbolToBytes(left);
    const std::optional<std::string> right_bytes = SymbolToBytes(right);
    const auto find = [&](const std::optional<std::string>& bytes) -> std::optional<int32_t> {
      if (!bytes.has_value()) return std::nullopt;
      const auto it = t.vocab_.find(*bytes);
      return it == t.vocab_.end() ? std::nullopt : std::optional<int32_t>(it->second);
    };
    const std::optional<int32_t> left_id = find(left_bytes), right_id = find(right_bytes);
    const std::optional<int32_t> merged_id =
        left_id && right_id ? find(*left_bytes + *right_bytes) : std::nullopt;
    if (!merged_id.has_value()) {
      return errors.Malformed(absl::StrCat("merge #", rank, " (", left, " ", right,
                                           ") names a token outside model.vocab"));
    }
    t.merges_.emplace(PairKey(*left_id, *right_id), Merge{rank, *merged_id});  // first rank wins
    ++rank;
  }

  // Added tokens: matched verbatim before pre-tokenization, decoded as their content.
  if (!added.is_null()) {
    if (!added.is_array()) return errors.Malformed("added_tokens is not a list");
    for (const Json& entry : added) {
      if (!entry.is_object() || !entry.contains("id") || !entry["id"].is_number_integer() ||
          entry["id"].get<int64_t>() < 0 || !entry.contains("content") ||
          !entry["content"].is_string() || entry["content"].get<std::string>().empty()) {
        return errors.Malformed(
            absl::StrCat("added_tokens entry ", entry.dump(), " lacks a valid id or content"));
      }
      if (entry["id"].get<int64_t>() >= id_bound.limit()) {
        return errors.Malformed(id_bound.Beyond("added_tokens entry", entry["id"].get<int64_t>()));
      }
      const auto id = static_cast<int32_t>(entry["id"].get<int64_t>());
      std::string content = entry["content"].get<std::string>();
      if (static_cast<size_t>(id) >= t.id_to_bytes_.size()) t.id_to_bytes_.resize(id + 1);
      t.id_to_bytes_[id] = content;
      const bool special = entry.contains("special") && entry["special"].is_boolean() &&
                           entry["special"].get<bool>();  // tokenizers' default: false
      t.added_tokens_.push_back({std::move(content), id, special});
    }
  }
  for (size_t i = 0; i < t.added_tokens_.size(); ++i) {
    const auto first = static_cast<uint8_t>(t.added_tokens_[i].content[0]);
    t.added_by_first_byte_[first].push_back(static_cast<int>(i));
  }
  for (auto& candidates : t.added_by_first_byte_) {
    std::stable_sort(candidates.begin(), candidates.end(), [&](int a, int b) {
      return t.added_tokens_[a].content.size() > t.added_tokens_[b].content.size();
    });
  }

  // bos/eos by name: tokenizer_config.json's, else the names the common families use.
  const auto id_of = [&](const std::string& content) -> std::optional<int32_t> {
    for (const AddedToken& token : t.added_tokens_) {
      if (token.content == content) return token.id;
    }
    const auto it = t.vocab_.find(content);
    return it == t.vocab_.end() ? std::nullopt : std::optional<int32_t>(it->second);
  };
  const auto resolve = [&](const std::optional<std::string>& name,
                           std::initializer_list<const char*> fallbacks) -> std::optional<int32_t> {
    if (names.from_config) return name.has_value() ? id_of(*name) : std::nullopt;
    for (const char* candidate : fallbacks) {
      if (auto id = id_of(candidate)) return id;
    }
    return std::nullopt;
  };
  t.bos_id_ = resolve(names.bos, {"<|begin_of_text|>", "<s>", "<|startoftext|>"});
  t.eos_id_ = resolve(names.eos, {"<|end_of_text|>", "</s>", "<|endoftext|>"});
  t.template_starts_with_bos_ = t.bos_id_.has_value() && root.contains("post_processor") &&
                                TemplateStartsWith(root["post_processor"], *t.bos_id_);
  return tokenizer;
}

absl::StatusOr<std::vector<int32_t>> BpeTokenizer::Encode(std::string_view text,
                                                          SpecialTokens special) const {
  const bool parse_special = special == SpecialTokens::kParse;
  absl::Status status = ValidateUtf8(text);
  if (!status.ok()) return status;
  std::vector<int32_t> ids;
  size_t segment_begin = 0;
  for (size_t pos = 0; pos < text.size();) {
    const AddedToken* match = nullptr;
    for (int index : added_by_first_byte_[static_cast<uint8_t>(text[pos])]) {
      const AddedToken& token = added_tokens_[index];
      if (text.compare(pos, token.content.size(), token.content) == 0) {
        match = &token;  // candidates are sorted longest first
        break;
      }
    }
    if (match == nullptr) {
      ++pos;
      continue;
    }
    if (match->special && !parse_special) {
      // As tokenizers' encode_special_tokens: the match is found and then left as text, so a
      // shorter added token inside it is not matched either.
      pos += match->content.size();
      continue;
    }
    status = EncodeSegment(text.substr(segment_begin, pos - segment_begin), &ids);
    if (!status.ok()) return status;
    ids.push_back(match->id);
    pos += match->content.size();
    segment_begin = pos;
  }
  status = EncodeSegment(text.substr(segment_begin), &ids);
  if (!status.ok()) return status;
  return ids;
}

absl::Status BpeTokenizer::EncodeSegment(std::string_view segment,
                                         std::vector<int32_t>* ids) const {
  if (segment.empty()) return absl::OkStatus();
  std::vector<std::string> pieces;
  if (normalizer_->is_identity()) {
    pieces.emplace_back(segment);
  } else {
    absl::StatusOr<std::string> normalized = normalizer_->Normalize(segment);
    if (!normalized.ok()) return normalized.status();
    if (normalized->empty()) return absl::OkStatus();
    pieces.push_back(*std::move(normalized));
  }
  for (const PreTokenizerStage& stage : stages_) {
    std::vector<std::string> next;
    for (std::string& piece : pieces) {
      if (stage.add_prefix_space && piece[0] != ' ') piece.insert(0, 1, ' ');
      if (stage.regex == nullptr) {
        next.push_back(std::move(piece));
        continue;
      }
      RETURN_IF_ERROR(SplitPiece(stage, piece, &next));
    }
    pieces = std::move(next);
  }
  for (const std::string& piece : pieces) EncodeWord(piece, ids);
  return absl::OkStatus();
}

void BpeTokenizer::EncodeWord(std::string_view word, std::vector<int32_t>* ids) const {
  if (word.empty()) return;
  if (word.size() == 1) {
    ids->push_back(byte_ids_[static_cast<uint8_t>(word[0])]);
    return;
  }
  if (ignore_merges_) {
    const auto it = vocab_.find(AbslView(word));
    if (it != vocab_.end()) {
      ids->push_back(it->second);
      return;
    }
  }
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  if (cacheable) {
    absl::MutexLock lock(&cache_mu_);
    const auto it = cache_.find(AbslView(word));
    if (it != cache_.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> merged = MergeWord(word);
  ids->insert(ids->end(), merged.begin(), merged.end());
  if (cacheable) {
    absl::MutexLock lock(&cache_mu_);
    if (cache_.size() >= kMaxCacheEntries) cache_.clear();  // crude bound; words repeat a lot
    cache_.emplace(std::string(word), std::move(merged));
  }
}

// Applies merges lowest rank first (leftmost on ties), as tokenizers' Word::merge_all does, in
// O(n log n): symbols form a linked list and a heap holds candidate pairs, stale ones skipped.
std::vector<int32_t> BpeTokenizer::MergeWord(std::string_view word) const {
  const int n = static_cast<int>(word.size());
  std::vector<int32_t> id(n);
  std::vector<int> prev(n), next(n);
  for (int i = 0; i < n; ++i) {
    id[i] = byte_ids_[static_cast<uint8_t>(word[i])];
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  struct Candidate {
    int32_t rank;
    int pos;
    int32_t left, right, merged;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
  const auto consider = [&](int pos) {
    if (pos < 0 || next[pos] < 0) return;
    const auto it = merges_.find(PairKey(id[pos], id[next[pos]]));
    if (it != merges_.end()) {
      heap.push({it->second.rank, pos, id[pos], id[next[pos]], it->second.merged_id});
    }
  };
  for (int i = 0; i + 1 < n; ++i) consider(i);
  std::vector<bool> alive(n, true);
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    const int right = next[c.pos];
    if (!alive[c.pos] || right < 0 || id[c.pos] != c.left || id[right] != c.right) continue;
    id[c.pos] = c.merged;
    alive[right] = false;
    next[c.pos] = next[right];
    if (next[right] >= 0) prev[next[right]] = c.pos;
    consider(prev[c.pos]);
    consider(c.pos);
  }
  std::vector<int32_t> out;
  for (int i = 0; i >= 0; i = next[i]) out.push_back(id[i]);
  return out;
}

std::string BpeTokenizer::TokenBytes(int32_t id, bool* at_text_start) const {
  if (id < 0 || id >= vocab_size()) return "";
  *at_text_start = false;  // byte-level BPE has no start-of-text rule
  return id_to_bytes_[id];
}

std::string BpeTokenizer::Decode(absl::Span<const int32_t> ids) const {
  std::string bytes;
  for (int32_t id : ids) {
    if (id >= 0 && id < vocab_size()) bytes += id_to_bytes_[id];
  }
  std::string text;
  AppendUtf8Lossy(bytes, &text);
  return text;
}

}  // namespace ttt::tokenizer::internal
