// The text protocol of one Ingest stream, apart from its transport: text buffered across
// messages until something ends it (token ids, a flush, the end of a document, the end of the
// stream), a UTF-8 character split by a flush carried over to the next message, tokenization,
// the tenant's ingest rate charged per submission, and the stream's running totals (tokens
// applied, loss and perplexity over the applied tokens). The reactor converts each protobuf
// message into an IngestMessage, submits what Accept returns to the session's writer and
// reports applied progress back here.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "tokenizer/tokenizer.h"

namespace ttt::server::core {

// One Ingest request message, in plain types (views into the request, valid during Accept).
struct IngestMessage {
  std::string_view text;
  absl::Span<const int32_t> token_ids;
  bool flush = false;
  bool end_of_document = false;
  bool report_loss = false;
};

// What one message (or the end of the stream) hands to the session's writer.
struct IngestSubmission {
  std::vector<int32_t> tokens;  // may be empty: the message's response still waits for it
  bool end_of_document = false;
  bool durable = false;             // sync durability: acknowledged once in the session file
  int64_t buffered_text_bytes = 0;  // text still buffered behind it (its response says so)
};

// The mean negative log-likelihood of the applied tokens that had a prediction.
struct IngestLoss {
  double loss = 0.0;
  double perplexity = 0.0;  // exp(loss)
  int64_t tokens = 0;
};

// Thread-compatible: one per stream, called under the reactor's mutex.
class IngestStream {
 public:
  struct Options {
    const tokenizer::Tokenizer* tokenizer = nullptr;  // null: the model has no tokenizer
    int64_t max_buffered_text_bytes = int64_t{16} << 20;
    bool sync_durability = false;  // --durability=sync
    // The first message's text_options (docs/contract.md, "Text: special tokens and bos"):
    // whether special tokens written in the text become their id, and the bos id to put before
    // text that starts a context (the caller resolves add_bos against the tokenizer; nullopt:
    // no bos ever).
    tokenizer::SpecialTokens special = tokenizer::SpecialTokens::kAsText;
    std::optional<int32_t> bos;
    // Where contexts start within the stream: at its first tokens when the session was at
    // position 0 as the stream opened, and after each end_of_document when the session resets
    // there (its reset_at_document_end).
    bool starts_context = false;
    bool resets_at_document_end = false;
  };
  // Takes `tokens` from the tenant's ingest rate; an error refuses the submission (the client
  // resends it, and what follows, after the retry time the status carries).
  using ChargeTokens = std::function<absl::Status(int64_t tokens)>;

  // REQUIRES: options.tokenizer, when not null, outlives the object.
  IngestStream(Options options, ChargeTokens charge);

  // Buffers `msg`'s text and returns what it submits: the buffered text when the message ends it
  // (token ids, a flush, the end of a document), then its own token ids. A flush inside a
  // character tokenizes up to the last whole one and carries the character's first bytes to the
  // next message; token ids or the end of a document end the text, so a character cut there is
  // malformed UTF-8. Errors are prefixed with `where` ("Ingest message 3"): FAILED_PRECONDITION
  // for text without a tokenizer, RESOURCE_EXHAUSTED beyond max_buffered_text_bytes,
  // INVALID_ARGUMENT for malformed UTF-8, or the charge's refusal.
  absl::StatusOr<IngestSubmission> Accept(const IngestMessage& msg, const std::string& where);

  // The client half-closed: the text still buffered as an implicit flush (durable under sync
  // durability), or nullopt when none is.
  absl::StatusOr<std::optional<IngestSubmission>> TakeRest();

  // A submission was applied: `tokens` more in the stream, their loss terms summed.
  void Applied(int64_t tokens, double nll_sum, int64_t nll_count);

  // Tokens applied by this stream so far.
  int64_t stream_tokens() const { return stream_tokens_; }
  // The loss over the applied tokens: once a message asked for it (report_loss) and some token
  // had a prediction.
  std::optional<IngestLoss> loss() const;

 private:
  absl::Status Buffer(std::string_view text, const std::string& where);
  absl::StatusOr<std::vector<int32_t>> TakeTokens(const IngestMessage& msg,
                                                  const std::string& where);
  absl::StatusOr<std::vector<int32_t>> EncodeText(const std::string& text,
                                                  const std::string& where);
  absl::StatusOr<IngestSubmission> Charged(IngestSubmission submission);

  const Options options_;
  const ChargeTokens charge_;
  std::string text_;  // text awaiting a flush / end_of_document / token ids / stream end
  bool report_loss_ = false;
  // options_.bos is set and no token has been submitted since a context started (the stream's
  // start, or a resetting end_of_document).
  bool bos_due_;
  int64_t stream_tokens_ = 0;
  double nll_sum_ = 0.0;
  int64_t nll_count_ = 0;
};

// Text to token ids with the model's tokenizer: FAILED_PRECONDITION without one,
// INVALID_ARGUMENT for malformed UTF-8 (the message names the byte offset). `where` prefixes
// every message ("Ingest message 3"). `special`: whether special tokens written in the text become
// their id (kAsText for text from users). Adds no bos.
absl::StatusOr<std::vector<int32_t>> Tokenize(const tokenizer::Tokenizer* tok,
                                              const std::string& text, const std::string& where,
                                              tokenizer::SpecialTokens special);

}  // namespace ttt::server::core
