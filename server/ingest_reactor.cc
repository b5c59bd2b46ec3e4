// Ingest: a bidi stream into one session. Each request message is validated, its text buffered
// until a flush / token ids / end of document / end of stream, and its tokens submitted to the
// session's writer; exactly one response per message once the engine applied it. Text still
// buffered when the client half-closes is applied before the stream ends; the OK status is its
// acknowledgement (the last message was already answered). Reading pauses while
// max_inflight_messages submissions are outstanding, so backpressure reaches the client.
//
// Acknowledgements on an error: every message the engine applied is answered, in order, before
// the stream ends with the error of the first message that failed, whichever way it failed
// (refused on arrival, by the engine or the store, or by the credential being revoked), and
// nothing after that message is applied. A client that resends from the message after its last
// response therefore applies nothing twice (docs/contract.md, "Ingest acknowledgements"). The
// one exception is the store's: a sync-durability flush whose write failed is applied here but
// not durable, so not acknowledged. A stream the client cancels stops applying at once; text it
// left buffered is dropped, not flushed.
#include <cmath>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <grpcpp/alarm.h>

#include "absl/strings/str_cat.h"
#include "server/internal/reactors.h"
#include "server/internal/response_queue.h"
#include "tokenizer/tokenizer.h"

namespace ttt::server::internal {
namespace {

namespace pb = tttserve::v1;

class IngestReactor final : public grpc::ServerBidiReactor<pb::IngestRequest, pb::IngestResponse>,
                            public ResponseQueue<IngestReactor, pb::IngestResponse> {
 public:
  IngestReactor(TttServiceImpl* svc, grpc::CallbackServerContext* ctx)
      : svc_(svc), ctx_(ctx), start_(Clock::now()),
        cancel_(std::make_shared<engine::CancelToken>()) {
    std::lock_guard<std::mutex> lock(mu_);
    absl::Status st = StartLocked();
    if (!st.ok()) {
      FailLocked(st);
      MaybeFinishLocked();
      return;
    }
    ArmRecheckLocked();
    StartRead(&req_);
  }

  void OnReadDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!ok) {
      // gRPC marks the call cancelled before this reaction when the read failed for that reason
      // (ServerContext::IsCancelled), so a cancellation is never taken for a half-close.
      if (ctx_->IsCancelled()) {
        reads_done_ = true;
        CancelLocked(*cancel_, "the client cancelled the stream");
        MaybeFinishLocked();
        return;
      }
      return EndOfStreamLocked();
    }
    if (failed_ || finish_called_) return;
    absl::Status st;
    try {
      st = HandleLocked(req_);
    } catch (const std::exception& e) {
      st = absl::InternalError(absl::StrCat("ingest failed: ", e.what()));
    }
    if (!st.ok()) {
      FailLocked(st);
      MaybeFinishLocked();
      return;
    }
    MaybeReadLocked();
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mu_);
    WriteDoneLocked(ok, *cancel_);
    MaybeFinishLocked();
  }

  void OnCancel() override {
    std::lock_guard<std::mutex> lock(mu_);
    CancelLocked(*cancel_, "the client cancelled the stream");
    MaybeFinishLocked();
  }

  void OnDone() override {
    bool del;
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
      del = DeletableLocked();
    }
    if (del) delete this;
  }

 private:
  // The caller, and its tenant's stream quota.
  absl::Status StartLocked() {
    auto tenant = TenantOf(svc_->authorizer(), ctx_, "Ingest");
    if (!tenant.ok()) return tenant.status();
    tenant_ = *tenant;
    auto stream = svc_->quotas()->AcquireStream(tenant_);
    if (!stream.ok()) return stream.status();
    if (*stream) stream_.emplace(std::move(**stream));
    return absl::OkStatus();
  }

  // A stream outlives the credential it opened with: each later message, and an idle stream every
  // kRecheckInterval, asks the authorizer again (the tokens file is re-read while the server
  // runs), so a revoked or re-scoped token, or one moved to another tenant, writes nothing more
  // once the server has read the new file, and its open streams end. The code (UNAUTHENTICATED
  // for a removed token, PERMISSION_DENIED for a scope or tenant it lost) and message are the
  // authorizer's, prefixed. Cheap: a hash and a lookup.
  absl::Status StillAuthorized(const std::string& where) const {
    if (!svc_->authorizer().enabled()) return absl::OkStatus();
    auto caller = CallerOf(svc_->authorizer(), ctx_, "Ingest");
    absl::Status why;
    if (!caller.ok()) {
      why = caller.status();
    } else if (caller->tenant != tenant_) {
      why = absl::PermissionDeniedError(
          absl::StrCat("it now names tenant ", caller->tenant, ", not ", tenant_));
    } else {
      return absl::OkStatus();
    }
    const std::string message =
        absl::StrCat(where, ": the credential this stream opened with was revoked or changed (",
                     why.message(), "); everything applied before is acknowledged");
    return absl::Status(why.code(), message);
  }

  // How often an open stream's credential is checked again without a message: the tokens
  // file's poll period, so a revoked token's idle stream ends within about twice that.
  static constexpr std::chrono::seconds kRecheckInterval{1};

  // Arms the next check of the credential (authentication on, stream not finished).
  // REQUIRES: mu_ held.
  void ArmRecheckLocked() {
    if (!svc_->authorizer().enabled() || finish_called_) return;
    // A fresh alarm each time: this may run inside the previous one's callback, which gRPC keeps
    // alive until it returns.
    recheck_ = std::make_unique<grpc::Alarm>();
    recheck_pending_ = true;
    recheck_->Set(std::chrono::system_clock::now() + kRecheckInterval,
                  [this](bool fired) { OnRecheck(fired); });
  }

  // gRPC's executor thread. The alarm is never cancelled (that could run this callback inline,
  // under mu_): a finished stream's last alarm just fires, and the reactor goes after it.
  void OnRecheck(bool fired) {
    bool del;
    {
      std::lock_guard<std::mutex> lock(mu_);
      recheck_pending_ = false;
      if (fired && !finish_called_ && !failed_) {
        absl::Status st = StillAuthorized("the open Ingest stream");
        if (st.ok()) {
          ArmRecheckLocked();
        } else {
          FailLocked(st);
          MaybeFinishLocked();
        }
      }
      del = DeletableLocked();
    }
    if (del) delete this;
  }

  // gRPC is done with the call and no engine callback or alarm is due.
  bool DeletableLocked() const { return done_ && outstanding_ == 0 && !recheck_pending_; }

  // The client half-closed: buffered text is flushed, then the stream ends once drained. Every
  // message has its response already (or due), so this submission gets none of its own.
  void EndOfStreamLocked() {
    reads_done_ = true;
    if (!failed_ && !text_buf_.empty() && writer_) {
      auto tokens = EncodeTextLocked(text_buf_, "text buffered at the end of the stream");
      text_buf_.clear();
      absl::Status st =
          tokens.ok() ? Submit(kNoResponse, std::move(*tokens), false,
                               /*durable=*/svc_->limits().sync_durability)  // an implicit flush
                      : tokens.status();
      if (!st.ok()) FailLocked(st);
    }
    MaybeFinishLocked();
  }

  // Starts the next read unless too many submissions are outstanding (then OnApplied resumes).
  void MaybeReadLocked() {
    if (failed_ || reads_done_ || finish_called_) return;
    if (outstanding_ < svc_->limits().max_inflight_messages) {
      read_paused_ = false;
      StartRead(&req_);
    } else {
      read_paused_ = true;  // backpressure: resume when the engine catches up
    }
  }

  // One request message: re-check the credential, validate, take the writer on the first,
  // buffer text, submit tokens.
  absl::Status HandleLocked(const pb::IngestRequest& req) {
    const int64_t index = msg_index_++;
    const std::string where = absl::StrCat("Ingest message ", index);
    absl::Status st = index == 0 ? absl::OkStatus() : StillAuthorized(where);
    if (st.ok()) st = BindSessionLocked(req, where);
    if (st.ok()) st = ValidateIngestMessage(req, svc_->limits(), where);
    if (st.ok()) st = BufferTextLocked(req, where);
    if (!st.ok()) return st;
    if (req.report_loss()) report_loss_ = true;
    auto tokens = TakeTokensLocked(req, where);
    if (!tokens.ok()) return tokens.status();
    const bool durable =
        svc_->limits().sync_durability && (req.flush() || req.end_of_document());
    return Submit(index, std::move(*tokens), req.end_of_document(), durable);
  }

  // The first message names the session and takes its writer lease; later ones may repeat it.
  absl::Status BindSessionLocked(const pb::IngestRequest& req, const std::string& where) {
    if (writer_) {
      if (req.has_expected_tokens_received() || req.has_text_options()) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, " sets ",
            req.has_text_options() ? "text_options" : "expected_tokens_received",
            ": only the first message of a stream may"));
      }
      if (req.session_id().empty() || req.session_id() == writer_->session_id()) {
        return absl::OkStatus();
      }
      return absl::InvalidArgumentError(absl::StrCat(
          where, " names session ", req.session_id(), " but this stream writes ",
          writer_->session_id(), "; open one stream per session"));
    }
    if (req.session_id().empty()) {
      return absl::InvalidArgumentError(
          "the first Ingest message must name the session (session_id)");
    }
    absl::Status routed = CheckSessionHeader(ctx_, {req.session_id()});
    if (!routed.ok()) return routed;
    auto writer = svc_->sessions()->OpenWriter(tenant_, req.session_id(), "an Ingest");
    if (!writer.ok()) return writer.status();
    writer_ = std::move(*writer);
    encoding_ = TextEncodingOf(svc_->tokenizer(), req.text_options());
    bos_due_ = encoding_.bos_at_start.has_value() && writer_->counters().position == 0;
    return CheckExpectedLocked(req);
  }

  // `text`'s ids as this stream encodes text; bos first when they start the session's context.
  absl::StatusOr<std::vector<int32_t>> EncodeTextLocked(const std::string& text,
                                                        const std::string& where) {
    auto ids = Tokenize(svc_->tokenizer(), text, where, encoding_.special);
    if (ids.ok() && bos_due_ && !ids->empty()) ids->insert(ids->begin(), *encoding_.bos_at_start);
    return ids;
  }

  // An idempotent resend: the session must have received exactly what the client believes.
  // Under the writer lease nothing else changes the counters, so the check holds for every
  // submission of this stream. REQUIRES: writer_ taken by this message.
  absl::Status CheckExpectedLocked(const pb::IngestRequest& req) const {
    if (!req.has_expected_tokens_received()) return absl::OkStatus();
    const int64_t have = writer_->counters().tokens_received;
    if (have == req.expected_tokens_received()) return absl::OkStatus();
    return absl::FailedPreconditionError(absl::StrCat(
        "session ", writer_->session_id(), " has received ", have, " tokens, not ",
        req.expected_tokens_received(), " as expected_tokens_received says; nothing of this "
        "stream was applied: resend from token ", have, " with expected_tokens_received=", have));
  }

  // Text waits in text_buf_ (bounded by max_buffered_text_bytes) until it is tokenized.
  absl::Status BufferTextLocked(const pb::IngestRequest& req, const std::string& where) {
    if (req.text().empty()) return absl::OkStatus();
    if (svc_->tokenizer() == nullptr) {
      return absl::FailedPreconditionError(
          absl::StrCat(where, ": the model has no tokenizer; send token_ids instead of text"));
    }
    const int64_t limit = svc_->limits().max_buffered_text_bytes;
    if (static_cast<int64_t>(text_buf_.size() + req.text().size()) > limit) {
      return absl::ResourceExhaustedError(absl::StrCat(
          where, ": more than ", limit,
          " bytes of text buffered; send flush or end_of_document at least that often"));
    }
    text_buf_ += req.text();
    return absl::OkStatus();
  }

  // The tokens this message submits: the buffered text when something ends it (token ids, a
  // flush, the end of a document), then the message's own token ids. A flush inside a character
  // tokenizes up to the last whole one; the character's first bytes wait for the next message,
  // as if the flush had come right before it. Token ids or the end of a document end the text:
  // a character cut there is malformed UTF-8.
  absl::StatusOr<std::vector<int32_t>> TakeTokensLocked(const pb::IngestRequest& req,
                                                        const std::string& where) {
    std::vector<int32_t> tokens;
    if (!text_buf_.empty() &&
        (!req.token_ids().empty() || req.flush() || req.end_of_document())) {
      const bool text_goes_on = req.token_ids().empty() && !req.end_of_document();
      const size_t carry = text_goes_on ? tokenizer::IncompleteUtf8Tail(text_buf_) : 0;
      const std::string whole = text_buf_.substr(0, text_buf_.size() - carry);
      if (!whole.empty()) {
        auto text_tokens = EncodeTextLocked(whole, where);
        if (!text_tokens.ok()) return text_tokens.status();
        tokens = std::move(*text_tokens);
      }
      text_buf_.erase(0, whole.size());
    }
    tokens.insert(tokens.end(), req.token_ids().begin(), req.token_ids().end());
    return tokens;
  }

  // Submit's index for tokens that no request message is waiting for (the end-of-stream flush).
  static constexpr int64_t kNoResponse = -1;

  // Submits tokens to the writer; once applied, message `index` is answered (unless kNoResponse).
  // REQUIRES: mu_ held.
  absl::Status Submit(int64_t index, std::vector<int32_t> tokens, bool end_of_document,
                      bool durable) {
    // The ingest rate counts tokens as tokenized; a refused message is not applied (the client
    // resends it, and what follows, after the retry time).
    absl::Status rate =
        svc_->quotas()->TakeIngestTokens(tenant_, static_cast<int64_t>(tokens.size()));
    if (!rate.ok()) return rate;
    if (!tokens.empty()) bos_due_ = false;  // the context has begun
    const int64_t buffered = static_cast<int64_t>(text_buf_.size());
    const auto submitted = Clock::now();
    ++outstanding_;
    absl::Status st = writer_->Ingest(
        std::move(tokens), end_of_document, cancel_,
        [this, index, buffered, submitted](absl::StatusOr<session::IngestProgress> r) {
          OnApplied(index, buffered, submitted, std::move(r));
        },
        durable);
    if (!st.ok()) --outstanding_;
    return st;
  }

  // Engine thread.
  void OnApplied(int64_t index, int64_t buffered, Clock::time_point submitted,
                 absl::StatusOr<session::IngestProgress> r) {
    bool del;
    {
      std::lock_guard<std::mutex> lock(mu_);
      --outstanding_;
      if (r.ok()) {
        RecordProgressLocked(*r, submitted);
        // Answered even when a later message has failed meanwhile: the error status waits for
        // this response (MaybeFinishLocked). A cancelled stream has nobody left to answer.
        if (index != kNoResponse && !finish_called_ && !ctx_->IsCancelled()) {
          out_.push_back(ResponseLocked(index, buffered, r->counters));
          MaybeWriteLocked();
        }
      } else {
        FailLocked(r.status());
        // The submissions queued behind this one must not apply: nobody would acknowledge them.
        // Submissions of one session run in order, so none of them has started yet.
        cancel_->Cancel();
      }
      if (read_paused_) MaybeReadLocked();
      MaybeFinishLocked();
      del = DeletableLocked();
    }
    if (del) delete this;
  }

  void RecordProgressLocked(const session::IngestProgress& p, Clock::time_point submitted) {
    stream_tokens_ += p.tokens;
    nll_sum_ += p.nll_sum;
    nll_count_ += p.nll_count;
    svc_->metrics()->AddTokensIngested(p.tokens);
    svc_->metrics()->ObserveIngestChunk(SecondsSince(submitted));
  }

  pb::IngestResponse ResponseLocked(int64_t index, int64_t buffered,
                                    const session::Counters& counters) const {
    pb::IngestResponse resp;
    resp.set_message_index(index);
    resp.set_stream_tokens(stream_tokens_);
    resp.set_buffered_text_bytes(buffered);
    ToProto(counters, resp.mutable_counters());
    if (report_loss_ && nll_count_ > 0) {
      const double loss = nll_sum_ / static_cast<double>(nll_count_);
      resp.set_loss(loss);
      resp.set_perplexity(std::exp(loss));
      resp.set_loss_tokens(nll_count_);
    }
    return resp;
  }

  void MaybeFinishLocked() {
    if (finish_called_ || writing_) return;
    // Acknowledge everything already accepted before reporting an error (nothing applied is
    // lost, and the client learns exactly how far it got).
    const bool drained = outstanding_ == 0 && out_.empty();
    grpc::Status status;
    if (failed_) {
      if (!drained) return;
      status = ToGrpcStatus(fail_);
    } else {
      if (!reads_done_ || !drained) return;
      status = grpc::Status::OK;
    }
    finish_called_ = true;
    writer_.reset();  // release the session before the client hears the end of the stream
    stream_.reset();  // and the stream quota (the client may open its next stream at once)
    if (failed_) AddRetryTrailers(fail_, ctx_);
    RecordCall(svc_->metrics(), *ctx_, "Ingest", status, start_);
    Finish(status);
  }

  TttServiceImpl* const svc_;
  grpc::CallbackServerContext* const ctx_;
  const Clock::time_point start_;
  const std::shared_ptr<engine::CancelToken> cancel_;
  std::string tenant_;
  std::optional<auth::Quotas::StreamLease> stream_;  // guarded by mu_; --quotas_file streams

  std::mutex mu_;
  pb::IngestRequest req_;
  std::unique_ptr<session::Writer> writer_;
  std::string text_buf_;     // text awaiting flush / end_of_document / stream end
  TextEncoding encoding_;    // the first message's text_options
  bool bos_due_ = false;     // the session was at position 0 and this stream applied nothing yet
  int64_t msg_index_ = 0;
  int64_t outstanding_ = 0;  // submissions whose engine callback is due
  int64_t stream_tokens_ = 0;
  double nll_sum_ = 0.0;
  int64_t nll_count_ = 0;
  bool report_loss_ = false;
  bool reads_done_ = false;
  bool read_paused_ = false;
  bool done_ = false;
  std::unique_ptr<grpc::Alarm> recheck_;  // the next check of the credential (authentication on)
  bool recheck_pending_ = false;          // its callback is due
};

}  // namespace

grpc::ServerBidiReactor<pb::IngestRequest, pb::IngestResponse>* NewIngestReactor(
    TttServiceImpl* svc, grpc::CallbackServerContext* ctx) {
  return new IngestReactor(svc, ctx);
}

}  // namespace ttt::server::internal
