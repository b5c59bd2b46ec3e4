// Tokenizer::Load, UTF-8 validation and StreamDecoder: see tokenizer.h.
#include "tokenizer/tokenizer.h"

#include <fstream>
#include <sstream>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "tokenizer/internal/bpe_tokenizer.h"
#include "tokenizer/internal/sentencepiece_tokenizer.h"
#include "tokenizer/internal/unicode_classes.h"
#include "tokenizer/internal/utf8.h"

namespace ttt::tokenizer {
namespace {

namespace fs = std::filesystem;
using internal::NextUtf8;
using internal::Utf8Step;

absl::StatusOr<std::string> ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in.is_open())
    return absl::FailedPreconditionError(absl::StrCat("cannot open ", path.string()));
  std::ostringstream contents;
  contents << in.rdbuf();
  if (in.bad()) return absl::FailedPreconditionError(absl::StrCat("cannot read ", path.string()));
  return std::move(contents).str();
}

bool IsFile(const fs::path& path) {
  std::error_code ec;
  return fs::is_regular_file(path, ec);
}

}  // namespace

absl::Status ValidateUtf8(std::string_view text) {
  for (size_t pos = 0; pos < text.size();) {
    const Utf8Step step = NextUtf8(text, pos);
    if (step.kind == Utf8Step::kInvalid) {
      return absl::InvalidArgumentError(absl::StrCat("invalid UTF-8 at byte offset ", pos));
    }
    if (step.kind == Utf8Step::kTruncated) {
      return absl::InvalidArgumentError(
          absl::StrCat("invalid UTF-8 at byte offset ", pos, ": truncated sequence at the end"));
    }
    pos += step.length;
  }
  return absl::OkStatus();
}

size_t IncompleteUtf8Tail(std::string_view text) {
  // A UTF-8 sequence is at most 4 bytes: a cut-off one starts within the last 3.
  for (size_t k = 1; k <= 3 && k <= text.size(); ++k) {
    const Utf8Step step = NextUtf8(text, text.size() - k);
    if (step.kind == Utf8Step::kTruncated) return k;  // runs to the end: its length is k
    if (step.kind == Utf8Step::kValid) return 0;      // a whole character ends the text
  }
  return 0;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const fs::path& model_dir) {
  const fs::path json_path = model_dir / "tokenizer.json";
  const fs::path model_path = model_dir / "tokenizer.model";
  const bool has_json = IsFile(json_path), has_model = IsFile(model_path);
  if (!has_json && !has_model) {
    return absl::NotFoundError(
        absl::StrCat("no tokenizer.json or tokenizer.model in ", model_dir.string()));
  }
  internal::SpecialTokenNames names;
  const fs::path config_path = model_dir / "tokenizer_config.json";
  if (IsFile(config_path)) {
    absl::StatusOr<std::string> config = ReadFile(config_path);
    if (!config.ok()) return config.status();
    absl::StatusOr<internal::SpecialTokenNames> parsed =
        internal::ParseSpecialTokenNames(*config, config_path.string());
    if (!parsed.ok()) return parsed.status();
    names = *std::move(parsed);
  }
  std::unique_ptr<Tokenizer> tokenizer;
  bool template_adds_bos = false;
  if (has_json) {
    absl::StatusOr<std::string> json = ReadFile(json_path);
    if (!json.ok()) return json.status();
    absl::StatusOr<std::unique_ptr<internal::BpeTokenizer>> bpe =
        internal::BpeTokenizer::Create(*json, json_path.string(), names);
    if (bpe.ok()) {
      template_adds_bos = (*bpe)->template_starts_with_bos();
      tokenizer = *std::move(bpe);
    } else if (!absl::IsUnimplemented(bpe.status()) || !has_model) {
      // A well-formed tokenizer.json of another kind defers to the SentencePiece model beside it.
      return bpe.status();
    }
  }
  if (tokenizer == nullptr) {
    absl::StatusOr<std::unique_ptr<internal::SentencePieceTokenizer>> sp =
        internal::SentencePieceTokenizer::Create(model_path);
    if (!sp.ok()) return sp.status();
    tokenizer = *std::move(sp);
  }
  tokenizer->adds_bos_ =
      tokenizer->bos_id().has_value() && names.add_bos.value_or(template_adds_bos);
  return tokenizer;
}

std::string UnicodeVersion() { return internal::UnicodeVersion(); }

std::string StreamDecoder::Push(int32_t id) {
  const std::string bytes = tokenizer_.TokenBytes(id, &at_text_start_);
  if (bytes.empty()) return "";
  pending_ += bytes;
  std::string text;
  size_t pos = 0;
  while (pos < pending_.size()) {
    const Utf8Step step = NextUtf8(pending_, pos);
    if (step.kind == Utf8Step::kTruncated) break;  // may complete with the next token
    if (step.kind == Utf8Step::kValid) {
      text.append(pending_, pos, step.length);
    } else {
      text.append(internal::kReplacementChar);
    }
    pos += step.length;
  }
  pending_.erase(0, pos);
  return text;
}

std::string StreamDecoder::Flush() {
  std::string text;
  internal::AppendUtf8Lossy(pending_, &text);
  pending_.clear();
  return text;
}

void StreamDecoder::Reset() {
  pending_.clear();
  at_text_start_ = true;
}

}  // namespace ttt::tokenizer
