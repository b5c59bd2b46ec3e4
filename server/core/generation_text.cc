// GenerationText (see generation_text.h).
#include "server/core/generation_text.h"

#include <algorithm>
#include <utility>

#include "absl/status/status.h"

namespace ttt::server::core {

absl::StatusOr<std::unique_ptr<GenerationText>> GenerationText::Create(
    const tokenizer::Tokenizer* tokenizer, std::vector<std::string> stops) {
  if (!stops.empty() && tokenizer == nullptr) {
    return absl::FailedPreconditionError(
        "stop strings need text: the model has no tokenizer (stop on token ids client-side)");
  }
  return std::unique_ptr<GenerationText>(new GenerationText(tokenizer, std::move(stops)));
}

GenerationText::GenerationText(const tokenizer::Tokenizer* tokenizer,
                               std::vector<std::string> stops)
    : stops_(std::move(stops)) {
  if (tokenizer != nullptr) decoder_ = std::make_unique<tokenizer::StreamDecoder>(*tokenizer);
  for (const std::string& s : stops_) max_stop_ = std::max(max_stop_, s.size());
}

std::string GenerationText::Push(int32_t token) {
  if (decoder_ == nullptr) return "";
  text_ += decoder_->Push(token);
  return Take(/*final=*/false);
}

std::string GenerationText::Finish() {
  if (decoder_ == nullptr || stopped_) return "";
  text_ += decoder_->Flush();
  return Take(/*final=*/true);
}

std::string GenerationText::Take(bool final) {
  if (stopped_) return "";
  size_t limit = text_.size();
  for (const std::string& s : stops_) {
    // Only a match that ends in the new text can be new: earlier ones were looked for already.
    const size_t from = emitted_ >= s.size() ? emitted_ - s.size() + 1 : 0;
    const size_t p = text_.find(s, from);
    if (p != std::string::npos && p < limit) {
      limit = p;
      stopped_ = true;
    }
  }
  if (!stopped_ && !final && max_stop_ > 0) {
    // Hold back the last max_stop_ - 1 bytes, moved back to a character's start.
    limit = text_.size() >= max_stop_ - 1 ? text_.size() - (max_stop_ - 1) : 0;
    while (limit > emitted_ && limit < text_.size() &&
           (static_cast<unsigned char>(text_[limit]) & 0xC0) == 0x80) {
      --limit;
    }
  }
  if (limit <= emitted_) return "";
  std::string out = text_.substr(emitted_, limit - emitted_);
  emitted_ = limit;
  return out;
}

}  // namespace ttt::server::core
