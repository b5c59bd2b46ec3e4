// IngestStream (see ingest_stream.h).
#include "server/core/ingest_stream.h"

#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "util/status_macros.h"

namespace ttt::server::core {

absl::StatusOr<std::vector<int32_t>> Tokenize(const tokenizer::Tokenizer* tok,
                                              const std::string& text, const std::string& where,
                                              tokenizer::SpecialTokens special) {
  if (tok == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat(where, ": the model has no tokenizer; send token_ids instead of text"));
  }
  absl::Status utf8 = tokenizer::ValidateUtf8(text);
  if (!utf8.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": text is not valid UTF-8 (", utf8.message(), ")"));
  }
  auto ids = tok->Encode(text, special);
  if (!ids.ok()) {
    return absl::Status(ids.status().code(), absl::StrCat(where, ": ", ids.status().message()));
  }
  return ids;
}

IngestStream::IngestStream(Options options, ChargeTokens charge)
    : options_(std::move(options)),
      charge_(std::move(charge)),
      bos_due_(options_.bos.has_value() && options_.starts_context) {}

absl::StatusOr<IngestSubmission> IngestStream::Accept(const IngestMessage& msg,
                                                      const std::string& where) {
  RETURN_IF_ERROR(Buffer(msg.text, where));
  if (msg.report_loss) report_loss_ = true;
  auto tokens = TakeTokens(msg, where);
  if (!tokens.ok()) return tokens.status();
  IngestSubmission submission;
  submission.tokens = std::move(*tokens);
  submission.end_of_document = msg.end_of_document;
  // Sync durability: every acknowledgement of a message that applies something means committed,
  // flush or not (issue 23); text still buffered is not applied, so there is nothing to commit.
  submission.durable =
      options_.sync_durability && (!submission.tokens.empty() || msg.end_of_document || msg.flush);
  return Charged(std::move(submission));
}

absl::StatusOr<std::optional<IngestSubmission>> IngestStream::TakeRest() {
  if (text_.empty()) return std::nullopt;
  auto tokens = EncodeText(text_, "text buffered at the end of the stream");
  text_.clear();
  if (!tokens.ok()) return tokens.status();
  IngestSubmission submission;
  submission.tokens = std::move(*tokens);
  submission.durable = options_.sync_durability;  // an implicit flush
  ASSIGN_OR_RETURN(auto charged, Charged(std::move(submission)));
  return std::optional<IngestSubmission>(std::move(charged));
}

void IngestStream::Applied(int64_t tokens, double nll_sum, int64_t nll_count) {
  stream_tokens_ += tokens;
  nll_sum_ += nll_sum;
  nll_count_ += nll_count;
}

std::optional<IngestLoss> IngestStream::loss() const {
  if (!report_loss_ || nll_count_ == 0) return std::nullopt;
  IngestLoss loss;
  loss.loss = nll_sum_ / static_cast<double>(nll_count_);
  loss.perplexity = std::exp(loss.loss);
  loss.tokens = nll_count_;
  return loss;
}

absl::Status IngestStream::Buffer(std::string_view text, const std::string& where) {
  if (text.empty()) return absl::OkStatus();
  if (options_.tokenizer == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat(where, ": the model has no tokenizer; send token_ids instead of text"));
  }
  const int64_t limit = options_.max_buffered_text_bytes;
  if (static_cast<int64_t>(text_.size() + text.size()) > limit) {
    return absl::ResourceExhaustedError(
        absl::StrCat(where, ": more than ", limit,
                     " bytes of text buffered; send flush or end_of_document at least that often"));
  }
  text_ += text;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> IngestStream::TakeTokens(const IngestMessage& msg,
                                                              const std::string& where) {
  std::vector<int32_t> tokens;
  if (!text_.empty() && (!msg.token_ids.empty() || msg.flush || msg.end_of_document)) {
    const bool text_goes_on = msg.token_ids.empty() && !msg.end_of_document;
    const size_t carry = text_goes_on ? tokenizer::IncompleteUtf8Tail(text_) : 0;
    const std::string whole = text_.substr(0, text_.size() - carry);
    if (!whole.empty()) {
      ASSIGN_OR_RETURN(tokens, EncodeText(whole, where));
    }
    text_.erase(0, whole.size());
  }
  tokens.insert(tokens.end(), msg.token_ids.begin(), msg.token_ids.end());
  return tokens;
}

// Text's ids as this stream encodes it: bos first when they are the first tokens of a context
// (the stream's, or a reset's). Token ids sent as such get no bos (the client chose them).
absl::StatusOr<std::vector<int32_t>> IngestStream::EncodeText(const std::string& text,
                                                              const std::string& where) {
  ASSIGN_OR_RETURN(auto ids, Tokenize(options_.tokenizer, text, where, options_.special));
  if (bos_due_ && !ids.empty()) ids.insert(ids.begin(), *options_.bos);
  return ids;
}

// The ingest rate counts tokens as tokenized; a refused submission is not applied.
absl::StatusOr<IngestSubmission> IngestStream::Charged(IngestSubmission submission) {
  RETURN_IF_ERROR(charge_(static_cast<int64_t>(submission.tokens.size())));
  if (!submission.tokens.empty()) bos_due_ = false;  // the context has begun
  // The session resets after this submission's tokens: what follows starts a context again,
  // exactly as at position 0.
  if (submission.end_of_document && options_.resets_at_document_end) {
    bos_due_ = options_.bos.has_value();
  }
  submission.buffered_text_bytes = static_cast<int64_t>(text_.size());
  return submission;
}

}  // namespace ttt::server::core
