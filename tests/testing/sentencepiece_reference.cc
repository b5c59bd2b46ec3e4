// See sentencepiece_reference.h. Must not include any Abseil header (directly or indirectly).
#include "tests/testing/sentencepiece_reference.h"

#include <sentencepiece_processor.h>

#include <utility>

namespace ttt::tokenizer::reference {

SentencePieceReference::SentencePieceReference(
    std::unique_ptr<sentencepiece::SentencePieceProcessor> processor)
    : processor_(std::move(processor)) {}

SentencePieceReference::~SentencePieceReference() = default;

std::unique_ptr<SentencePieceReference> SentencePieceReference::Load(const std::string& path,
                                                                     std::string* error) {
  auto processor = std::make_unique<sentencepiece::SentencePieceProcessor>();
  const auto status = processor->Load(path);
  if (!status.ok()) {
    *error = status.ToString();
    return nullptr;
  }
  return std::unique_ptr<SentencePieceReference>(new SentencePieceReference(std::move(processor)));
}

bool SentencePieceReference::Encode(std::string_view text, std::vector<int>* ids,
                                    std::string* error) const {
  const auto status = processor_->Encode(text, ids);
  if (!status.ok()) *error = status.ToString();
  return status.ok();
}

std::string SentencePieceReference::Decode(const std::vector<int>& ids) const {
  return processor_->DecodeIds(ids);
}

int SentencePieceReference::piece_size() const { return processor_->GetPieceSize(); }
int SentencePieceReference::bos_id() const { return processor_->bos_id(); }
int SentencePieceReference::eos_id() const { return processor_->eos_id(); }

}  // namespace ttt::tokenizer::reference
