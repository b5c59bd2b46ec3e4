// See sentencepiece_model.h. Must not include any Abseil header (directly or indirectly).
#include "tokenizer/internal/sentencepiece_model.h"

#include <sentencepiece_processor.h>

#include <utility>

namespace ttt::tokenizer::internal {

SentencePieceModel::SentencePieceModel(
    std::unique_ptr<sentencepiece::SentencePieceProcessor> processor)
    : processor_(std::move(processor)) {}

SentencePieceModel::~SentencePieceModel() = default;

std::unique_ptr<SentencePieceModel> SentencePieceModel::Load(const std::string& path,
                                                             std::string* error) {
  auto processor = std::make_unique<sentencepiece::SentencePieceProcessor>();
  const auto status = processor->Load(path);
  if (!status.ok()) {
    *error = status.ToString();
    return nullptr;
  }
  return std::unique_ptr<SentencePieceModel>(new SentencePieceModel(std::move(processor)));
}

bool SentencePieceModel::Encode(std::string_view text, std::vector<int>* ids,
                                std::string* error) const {
  const auto status = processor_->Encode(text, ids);
  if (!status.ok()) *error = status.ToString();
  return status.ok();
}

std::string SentencePieceModel::Decode(const std::vector<int>& ids) const {
  return processor_->DecodeIds(ids);
}

int SentencePieceModel::piece_size() const { return processor_->GetPieceSize(); }
int SentencePieceModel::bos_id() const { return processor_->bos_id(); }
int SentencePieceModel::eos_id() const { return processor_->eos_id(); }
int SentencePieceModel::unk_id() const { return processor_->unk_id(); }
bool SentencePieceModel::IsControl(int id) const { return processor_->IsControl(id); }
bool SentencePieceModel::IsUnknown(int id) const { return processor_->IsUnknown(id); }
bool SentencePieceModel::IsByte(int id) const { return processor_->IsByte(id); }
const std::string& SentencePieceModel::IdToPiece(int id) const { return processor_->IdToPiece(id); }

}  // namespace ttt::tokenizer::internal
