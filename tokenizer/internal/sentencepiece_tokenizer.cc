// Native SentencePiece: see sentencepiece_tokenizer.h. The encoders follow google/sentencepiece
// v0.1.97 (Debian 12's libsentencepiece) closely, down to score arithmetic and tie-breaking,
// so that ids match the library's exactly: unigram_model.cc (EncodeOptimized, the library's
// default encoder), bpe_model.cc, word_model.cc, char_model.cc, and
// sentencepiece_processor.cc for byte fallback and decoding.
#include "tokenizer/internal/sentencepiece_tokenizer.h"

#include <algorithm>
#include <cfloat>
#include <fstream>
#include <functional>
#include <queue>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "tokenizer/internal/utf8.h"
#include "util/status_macros.h"

namespace ttt::tokenizer::internal {
namespace {

// What <unk> decodes to when the model does not say (" ⁇ ").
constexpr std::string_view kDefaultUnknownSurface = " \xE2\x81\x87 ";
// unigram_model.h: an unknown character scores this much below the worst piece.
constexpr float kUnkPenalty = 10.0;

// "<0x41>" -> 0x41 (SentencePiece's PieceToByte); -1 when `piece` is not of that form.
int PieceToByte(std::string_view piece) {
  if (piece.size() != 6 || piece.substr(0, 3) != "<0x" || piece[5] != '>') return -1;
  int value = 0;
  for (char c : piece.substr(3, 2)) {
    value <<= 4;
    if (c >= '0' && c <= '9') {
      value |= c - '0';
    } else if (c >= 'A' && c <= 'F') {
      value |= c - 'A' + 10;
    } else if (c >= 'a' && c <= 'f') {
      value |= c - 'a' + 10;
    } else {
      return -1;
    }
  }
  return value;
}

// Debian's Abseil has its own string_view class, distinct from std::string_view.
absl::string_view AbslView(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// Appends `bytes` (a run of byte-fallback pieces) as the library does: each byte that does not
// start a valid UTF-8 character becomes one U+FFFD.
void AppendBytePieces(std::string_view bytes, std::string* text) {
  for (size_t pos = 0; pos < bytes.size();) {
    const Utf8Step step = NextUtf8(bytes, pos);
    if (step.kind == Utf8Step::kValid) {
      text->append(bytes.substr(pos, step.length));
      pos += step.length;
    } else {
      text->append(kReplacementChar);
      pos += 1;
    }
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> SentencePieceTokenizer::Create(
    const std::filesystem::path& model_path) {
  std::ifstream in(model_path, std::ios::binary);
  if (!in.is_open()) {
    return absl::FailedPreconditionError(absl::StrCat("cannot open ", model_path.string()));
  }
  std::ostringstream contents;
  contents << in.rdbuf();
  if (in.bad()) {
    return absl::FailedPreconditionError(absl::StrCat("cannot read ", model_path.string()));
  }
  return CreateFromBytes(contents.str(), model_path.string());
}

absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> SentencePieceTokenizer::CreateFromBytes(
    std::string_view bytes, const std::string& source) {
  const auto invalid = [&source](std::string_view what) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": not a SentencePiece model: ", AbslView(what)));
  };
  absl::StatusOr<SentencePieceModelProto> parsed = ParseSentencePieceModel(bytes);
  if (!parsed.ok()) return invalid(std::string(parsed.status().message()));

  auto tokenizer = std::unique_ptr<SentencePieceTokenizer>(new SentencePieceTokenizer());
  SentencePieceTokenizer& t = *tokenizer;
  t.model_ = *std::move(parsed);
  const SentencePieceModelProto& model = t.model_;
  if (model.pieces.empty()) return invalid("no pieces");
  if (model.pieces.size() > (1u << 30)) return invalid("too many pieces");

  // ModelInterface::InitializePieces.
  std::optional<int32_t> unk_id;
  std::vector<std::string> user_defined;
  t.byte_of_id_.assign(model.pieces.size(), -1);
  for (size_t i = 0; i < model.pieces.size(); ++i) {
    const SentencePieceEntry& entry = model.pieces[i];
    const int32_t id = static_cast<int32_t>(i);
    if (entry.piece.empty()) return invalid("piece must not be empty");
    // Decode hands pieces out as they are: one that is not UTF-8 would reach clients as text.
    if (!ValidateUtf8(entry.piece).ok()) {
      return invalid(absl::StrCat("piece ", id, " is not valid UTF-8"));
    }
    const bool is_normal = entry.type == PieceType::kNormal ||
                           entry.type == PieceType::kUserDefined ||
                           entry.type == PieceType::kUnused;
    if (!is_normal && entry.type != PieceType::kUnknown && entry.type != PieceType::kControl &&
        entry.type != PieceType::kByte) {
      return invalid(
          absl::StrCat("piece ", id, " has unknown type ", static_cast<int32_t>(entry.type)));
    }
    if (!(is_normal ? t.pieces_ : t.reserved_).emplace(entry.piece, id).second) {
      return invalid(absl::StrCat(AbslView(entry.piece), " is already defined"));
    }
    if (is_normal) t.max_piece_bytes_ = std::max(t.max_piece_bytes_, entry.piece.size());
    if (entry.type == PieceType::kUserDefined) user_defined.push_back(entry.piece);
    if (entry.type == PieceType::kUnknown) {
      if (unk_id.has_value()) return invalid("unk is already defined");
      unk_id = id;
    }
    if (entry.type == PieceType::kByte) {
      if (!model.byte_fallback) {
        return invalid(absl::StrCat("byte piece ", AbslView(entry.piece),
                                    " is found although byte_fallback is false"));
      }
      const int byte = PieceToByte(entry.piece);
      if (byte < 0) return invalid(absl::StrCat("bad byte piece ", AbslView(entry.piece)));
      t.byte_of_id_[i] = static_cast<int16_t>(byte);
    }
  }
  if (!unk_id.has_value()) return invalid("unk is not defined");
  if (model.has_unk_surface && !ValidateUtf8(model.unk_surface).ok()) {
    return invalid("TrainerSpec.unk_surface is not valid UTF-8");
  }
  t.unk_id_ = *unk_id;

  switch (model.model_type) {
    case SentencePieceModelType::kUnigram:
    case SentencePieceModelType::kBpe:
      if (t.pieces_.empty()) return invalid("no pieces are loaded");
      break;
    case SentencePieceModelType::kWord:
    case SentencePieceModelType::kChar:
      break;
    default:
      return invalid(absl::StrCat("unknown model_type ", static_cast<int32_t>(model.model_type)));
  }
  if (model.has_denormalizer && !model.denormalizer.precompiled_charsmap.empty()) {
    return absl::UnimplementedError(
        absl::StrCat(source, ": SentencePiece denormalizer rules are not supported"));
  }

  // unigram_model.cc: the score range of the normal pieces.
  float min_score = FLT_MAX, max_score = FLT_MIN;
  for (const SentencePieceEntry& entry : model.pieces) {
    if (entry.type != PieceType::kNormal) continue;
    min_score = std::min(min_score, entry.score);
    max_score = std::max(max_score, entry.score);
  }
  t.min_score_ = min_score == FLT_MAX ? 0.0f : min_score;
  t.max_score_ = max_score == FLT_MIN ? 0.0f : max_score;

  t.user_defined_ = std::make_unique<PrefixMatcher>(std::move(user_defined));
  absl::StatusOr<SentencePieceNormalizer> normalizer = SentencePieceNormalizer::Create(
      model.normalizer, model.treat_whitespace_as_suffix, t.user_defined_.get());
  if (!normalizer.ok()) return invalid(std::string(normalizer.status().message()));
  t.normalizer_.emplace(*std::move(normalizer));

  // SentencePieceProcessor::bos_id()/eos_id(): the named piece when it is a control piece.
  const int32_t bos = t.PieceToId(model.bos_piece), eos = t.PieceToId(model.eos_piece);
  if (t.type(bos) == PieceType::kControl) t.bos_id_ = bos;
  if (t.type(eos) == PieceType::kControl) t.eos_id_ = eos;
  t.unk_surface_ = model.has_unk_surface ? model.unk_surface : std::string(kDefaultUnknownSurface);
  return tokenizer;
}

int32_t SentencePieceTokenizer::PieceToId(std::string_view piece) const {
  if (const auto it = reserved_.find(AbslView(piece)); it != reserved_.end()) return it->second;
  if (const auto it = pieces_.find(AbslView(piece)); it != pieces_.end()) return it->second;
  return unk_id_;
}

std::vector<SentencePieceTokenizer::Segment> SentencePieceTokenizer::EncodeUnigram(
    std::string_view normalized) const {
  // The best path ending at each byte position (exclusive end): the id of its last piece and
  // where that piece starts.
  struct BestPathNode {
    int32_t id = -1;
    float best_path_score = 0;
    int64_t starts_at = -1;
  };
  const size_t size = normalized.size();
  const float unk_score = min_score_ - kUnkPenalty;
  std::vector<BestPathNode> best_path_ends_at(size + 1);
  size_t starts_at = 0;
  while (starts_at < size) {
    const float best_path_score_till_here = best_path_ends_at[starts_at].best_path_score;
    bool has_single_node = false;
    const size_t mblen = std::min(OneCharLen(normalized[starts_at]), size - starts_at);
    // Every piece that starts here, shortest first (the order of the library's trie walk).
    // Pieces are whole UTF-8 characters, so only character boundaries can end one.
    const size_t limit = std::min(size, starts_at + max_piece_bytes_);
    for (size_t end = starts_at + mblen; end <= limit;) {
      const auto it = pieces_.find(AbslView(normalized.substr(starts_at, end - starts_at)));
      if (it != pieces_.end() && type(it->second) != PieceType::kUnused) {
        const int32_t id = it->second;
        BestPathNode& target = best_path_ends_at[end];
        const size_t length = end - starts_at;
        // A user-defined piece gets a bonus so that it is always chosen. The library computes
        // in double here and compares before rounding to float.
        const double score = type(id) == PieceType::kUserDefined
                                 ? static_cast<double>(length * max_score_) - 0.1
                                 : static_cast<double>(model_.pieces[id].score);
        const double candidate = score + best_path_score_till_here;
        if (target.starts_at == -1 || candidate > target.best_path_score) {
          target.best_path_score = static_cast<float>(candidate);
          target.starts_at = static_cast<int64_t>(starts_at);
          target.id = id;
        }
        if (length == mblen) has_single_node = true;
      }
      if (end >= size) break;
      end += std::min(OneCharLen(normalized[end]), size - end);
    }
    if (!has_single_node) {
      BestPathNode& target = best_path_ends_at[starts_at + mblen];
      const float candidate = unk_score + best_path_score_till_here;
      if (target.starts_at == -1 || candidate > target.best_path_score) {
        target.best_path_score = candidate;
        target.starts_at = static_cast<int64_t>(starts_at);
        target.id = unk_id_;
      }
    }
    starts_at += mblen;
  }
  std::vector<Segment> results;
  for (size_t ends_at = size; ends_at > 0;) {
    const BestPathNode& node = best_path_ends_at[ends_at];
    const size_t begin = static_cast<size_t>(node.starts_at);
    results.emplace_back(normalized.substr(begin, ends_at - begin), node.id);
    ends_at = begin;
  }
  std::reverse(results.begin(), results.end());
  return results;
}

std::vector<SentencePieceTokenizer::Segment> SentencePieceTokenizer::EncodeBpe(
    std::string_view normalized) const {
  struct SymbolPair {
    int left;
    int right;
    float score;
    size_t size;
  };
  struct Symbol {
    int prev;
    int next;
    bool freeze;
    std::string_view piece;
  };
  // The highest score first; among equal scores the leftmost.
  const auto lower = [](const SymbolPair* a, const SymbolPair* b) {
    return a->score < b->score || (a->score == b->score && a->left > b->left);
  };
  std::vector<std::unique_ptr<SymbolPair>> pair_storage;
  std::priority_queue<SymbolPair*, std::vector<SymbolPair*>, decltype(lower)> agenda(lower);
  std::vector<Symbol> symbols;
  symbols.reserve(normalized.size());
  // For pieces of type UNUSED: the two symbols they were merged from, to split them again.
  absl::flat_hash_map<absl::string_view, std::pair<std::string_view, std::string_view>> rev_merge;

  const auto maybe_add_pair = [&](int left, int right) {
    if (left == -1 || right == -1 || symbols[left].freeze || symbols[right].freeze) return;
    const std::string_view piece(symbols[left].piece.data(),
                                 symbols[left].piece.size() + symbols[right].piece.size());
    const auto it = pieces_.find(AbslView(piece));
    if (it == pieces_.end()) return;
    pair_storage.push_back(std::make_unique<SymbolPair>(
        SymbolPair{left, right, model_.pieces[it->second].score, piece.size()}));
    agenda.push(pair_storage.back().get());
    if (type(it->second) == PieceType::kUnused) {
      rev_merge[AbslView(piece)] = {symbols[left].piece, symbols[right].piece};
    }
  };

  // Split into characters (a user-defined piece stays whole and is never merged).
  for (int index = 0; !normalized.empty(); ++index) {
    Symbol s;
    const size_t length = user_defined_->PrefixMatch(normalized, &s.freeze);
    s.piece = normalized.substr(0, length);
    s.prev = index == 0 ? -1 : index - 1;
    normalized.remove_prefix(length);
    s.next = normalized.empty() ? -1 : index + 1;
    symbols.push_back(s);
  }
  if (symbols.empty()) return {};
  for (size_t i = 1; i < symbols.size(); ++i) maybe_add_pair(static_cast<int>(i) - 1, i);

  while (!agenda.empty()) {
    const SymbolPair* top = agenda.top();
    agenda.pop();
    Symbol& left = symbols[top->left];
    Symbol& right = symbols[top->right];
    if (left.piece.empty() || right.piece.empty() ||
        left.piece.size() + right.piece.size() != top->size) {
      continue;  // stale: one side was merged since
    }
    left.piece = std::string_view(left.piece.data(), left.piece.size() + right.piece.size());
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top->left;
    right.piece = std::string_view();
    const int merged = top->left;
    maybe_add_pair(symbols[merged].prev, merged);
    maybe_add_pair(merged, symbols[merged].next);
  }

  std::vector<Segment> output;
  std::function<void(std::string_view)> resegment = [&](std::string_view w) {
    const int32_t id = PieceToId(w);
    if (type(id) != PieceType::kUnused) {
      output.emplace_back(w, id);
      return;
    }
    const auto it = rev_merge.find(AbslView(w));
    if (it == rev_merge.end()) {
      output.emplace_back(w, id);
      return;
    }
    resegment(it->second.first);
    resegment(it->second.second);
  };
  for (int index = 0; index != -1; index = symbols[index].next) resegment(symbols[index].piece);
  return output;
}

std::vector<SentencePieceTokenizer::Segment> SentencePieceTokenizer::EncodeWord(
    std::string_view normalized) const {
  // SplitIntoWords: a new word at the start and at each "▁".
  std::vector<Segment> output;
  const char* const text_begin = normalized.data();
  size_t word_begin = 0;
  for (size_t pos = 0; pos < normalized.size();) {
    const size_t mblen = std::min(OneCharLen(normalized[pos]), normalized.size() - pos);
    if (pos > 0 && normalized.substr(pos, mblen) == kSpaceSymbol) {
      const std::string_view w(text_begin + word_begin, pos - word_begin);
      output.emplace_back(w, PieceToId(w));
      word_begin = pos;
    }
    pos += mblen;
  }
  if (!normalized.empty()) {
    const std::string_view w = normalized.substr(word_begin);
    output.emplace_back(w, PieceToId(w));
  }
  return output;
}

std::vector<SentencePieceTokenizer::Segment> SentencePieceTokenizer::EncodeChar(
    std::string_view normalized) const {
  std::vector<Segment> output;
  while (!normalized.empty()) {
    bool found = false;
    const std::string_view w = normalized.substr(0, user_defined_->PrefixMatch(normalized, &found));
    output.emplace_back(w, PieceToId(w));
    normalized.remove_prefix(w.size());
  }
  return output;
}

absl::StatusOr<std::vector<int32_t>> SentencePieceTokenizer::Encode(std::string_view text,
                                                                    SpecialTokens) const {
  RETURN_IF_ERROR(ValidateUtf8(text));
  const std::string normalized = normalizer_->Normalize(text);
  if (normalized.empty()) return std::vector<int32_t>();
  std::vector<Segment> segments;
  switch (model_.model_type) {
    case SentencePieceModelType::kBpe:
      segments = EncodeBpe(normalized);
      break;
    case SentencePieceModelType::kWord:
      segments = EncodeWord(normalized);
      break;
    case SentencePieceModelType::kChar:
      segments = EncodeChar(normalized);
      break;
    default:
      segments = EncodeUnigram(normalized);
      break;
  }
  std::vector<int32_t> ids;
  ids.reserve(segments.size());
  // SentencePieceProcessor::PopulateSentencePieceText.
  bool is_prev_unk = false;
  for (const auto& [piece, id] : segments) {
    const bool is_unk = type(id) == PieceType::kUnknown;
    if (is_unk && model_.byte_fallback) {
      // An unknown piece becomes the byte pieces of its UTF-8 bytes.
      for (char byte : piece) {
        ids.push_back(PieceToId(absl::StrFormat("<0x%02X>", static_cast<uint8_t>(byte))));
      }
    } else if (!(is_unk && is_prev_unk)) {  // a run of unknown pieces becomes one
      ids.push_back(id);
    }
    is_prev_unk = is_unk;
  }
  return ids;
}

std::string SentencePieceTokenizer::PieceText(int32_t id, bool is_bos_ws,
                                              bool* consumed_bos_ws) const {
  *consumed_bos_ws = false;
  const PieceType piece_type = type(id);
  if (piece_type == PieceType::kControl) return "";
  if (piece_type == PieceType::kUnknown) return unk_surface_;
  std::string_view piece = model_.pieces[id].piece;
  const NormalizerSpec& spec = model_.normalizer;
  if (is_bos_ws && (spec.add_dummy_prefix || spec.remove_extra_whitespaces) &&
      piece.substr(0, kSpaceSymbol.size()) == kSpaceSymbol) {
    piece.remove_prefix(kSpaceSymbol.size());
    // Removing extra whitespace removes all leading whitespace; otherwise only the dummy
    // prefix's one space goes.
    *consumed_bos_ws = !spec.remove_extra_whitespaces;
  }
  std::string text;
  text.reserve(piece.size());
  for (size_t pos = 0; pos < piece.size();) {
    if (piece.compare(pos, kSpaceSymbol.size(), kSpaceSymbol) == 0) {
      text += ' ';
      pos += kSpaceSymbol.size();
    } else {
      text += piece[pos++];
    }
  }
  return text;
}

// SentencePieceProcessor::Decode (v0.1.97): runs of byte pieces become bytes (each byte that
// does not start a valid UTF-8 character -> U+FFFD); other pieces render via PieceText.
// At the start of the text (nothing decoded yet) a piece's leading "▁" is dropped: with
// remove_extra_whitespaces for every piece until the text is non-empty (["▁", "▁the"] ->
// "the"), otherwise once (["▁", "▁the"] -> " the").
std::string SentencePieceTokenizer::Decode(absl::Span<const int32_t> ids) const {
  std::string text, bytes;
  bool is_bos_ws = true, consumed_bos_ws = false;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size()) continue;
    if (byte_of_id_[id] >= 0) {
      bytes.push_back(static_cast<char>(byte_of_id_[id]));
      continue;
    }
    AppendBytePieces(bytes, &text);
    bytes.clear();
    if (consumed_bos_ws || !text.empty()) is_bos_ws = false;
    text += PieceText(id, is_bos_ws, &consumed_bos_ws);
  }
  AppendBytePieces(bytes, &text);
  return text;
}

// Decode one token at a time: `*at_text_start` is Decode's is_bos_ws.
std::string SentencePieceTokenizer::TokenBytes(int32_t id, bool* at_text_start) const {
  if (id < 0 || id >= vocab_size()) return "";
  bool consumed_bos_ws = false;
  const std::string text = byte_of_id_[id] >= 0 ? std::string(1, static_cast<char>(byte_of_id_[id]))
                                                : PieceText(id, *at_text_start, &consumed_bos_ws);
  if (consumed_bos_ws || !text.empty()) *at_text_start = false;
  return text;
}

}  // namespace ttt::tokenizer::internal
