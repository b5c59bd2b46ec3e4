// Ingest: a bidi stream into one session; the transport of the text protocol in
// core/ingest_stream.h. Each request message is validated and handed to the stream, and what it
// submits goes to the session's writer; exactly one response per message once the engine applied
// it. Text still buffered when the client half-closes is applied before the stream ends; the OK
// status is its acknowledgement (the last message was already answered). Reading pauses while
// max_inflight_messages submissions are outstanding, so backpressure reaches the client.
//
// Acknowledgements on an error: every message the engine applied is answered, in order, before
// the stream ends with the error of the first message that failed, whichever way it failed
// (refused on arrival, by the engine or the store, or by the credential being revoked), and
// nothing after that message is applied. A client that resends from the message after its last
// response therefore applies nothing twice (docs/contract.md, "Ingest acknowledgements"); a
// sync-durability message whose write failed is undone by the session manager (the session goes
// back to its last durable copy), so it is neither applied nor acknowledged. A stream the client
// cancels stops applying at once; text it left buffered is dropped, not flushed.
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/core/ingest_stream.h"
#include "server/internal/reactors.h"
#include "server/internal/stream_credential.h"
#include "server/internal/streaming_reactor.h"
#include "util/status_macros.h"

namespace ttt::server::internal {
namespace {

namespace pb = tttserve::v1;

class IngestReactor final
    : public StreamingReactor<grpc::ServerBidiReactor<pb::IngestRequest, pb::IngestResponse>,
                              pb::IngestResponse> {
 public:
  IngestReactor(TttServiceImpl* svc, grpc::CallbackServerContext* ctx)
      : StreamingReactor("the client cancelled the stream"),
        svc_(svc),
        ctx_(ctx),
        start_(Clock::now()),
        credential_(svc->authorizer(), ctx, "Ingest") {
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
    // gRPC marks the call cancelled before this reaction when the read failed for that reason
    // (ServerContext::IsCancelled), so a cancellation is never taken for a half-close.
    if (!ok && ctx_->IsCancelled()) {
      reads_done_ = true;
      CancelLocked();
    } else if (!ok) {
      EndOfStreamLocked();
    } else if (!failed_ && !finish_called_) {
      absl::Status st = Guarded("ingest", [&] { return HandleLocked(req_); });
      if (!st.ok()) FailLocked(st);
      MaybeReadLocked();
    }
    MaybeFinishLocked();
  }

 private:
  // `starts_context`: the session is at position 0 as the stream opens; `resets`: its
  // reset_at_document_end.
  static core::IngestStream::Options StreamOptions(const TttServiceImpl& svc,
                                                   const TextEncoding& encoding,
                                                   bool starts_context, bool resets) {
    core::IngestStream::Options options;
    options.tokenizer = svc.tokenizer();
    options.max_buffered_text_bytes = svc.limits().max_buffered_text_bytes;
    options.sync_durability = svc.limits().sync_durability;
    options.special = encoding.special;
    options.bos = encoding.bos_at_start;
    options.starts_context = starts_context;
    options.resets_at_document_end = resets;
    return options;
  }

  // The caller, and its tenant's stream quota.
  absl::Status StartLocked() {
    RETURN_IF_ERROR(credential_.Open());
    return AcquireStream(*svc_->quotas(), credential_.tenant(), &stream_);
  }

  // Arms the next check of an idle stream's credential. REQUIRES: mu_ held.
  void ArmRecheckLocked() {
    if (finish_called_) return;
    if (credential_.Arm([this](bool fired) { OnRecheck(fired); })) lifetime_.Due();
  }

  // gRPC's executor thread: a revoked credential ends the stream (StreamCredential).
  void OnRecheck(bool fired) {
    ReactThenMaybeDelete(this, mu_, lifetime_, [&] {
      lifetime_.Ran();
      if (!fired || finish_called_ || failed_) return;
      absl::Status st = credential_.Check("the open Ingest stream");
      if (st.ok()) return ArmRecheckLocked();
      FailLocked(st);
      MaybeFinishLocked();
    });
  }

  // The client half-closed: buffered text is flushed, then the stream ends once drained. Every
  // message has its response already (or due), so this submission gets none of its own.
  void EndOfStreamLocked() {
    reads_done_ = true;
    if (failed_ || !writer_) return;
    auto rest = text_->TakeRest();
    absl::Status st = rest.status();
    if (rest.ok() && rest->has_value()) st = SubmitLocked(kNoResponse, std::move(**rest));
    if (!st.ok()) FailLocked(st);
  }

  // Starts the next read unless too many submissions are outstanding (then OnApplied resumes).
  void MaybeReadLocked() {
    if (failed_ || reads_done_ || finish_called_) return;
    read_paused_ = outstanding_ >= svc_->limits().max_inflight_messages;
    if (!read_paused_) StartRead(&req_);
  }

  // One request message: re-check the credential, validate, take the writer on the first, then
  // the text protocol's submission to the writer.
  absl::Status HandleLocked(const pb::IngestRequest& req) {
    const int64_t index = msg_index_++;
    const std::string where = absl::StrCat("Ingest message ", index);
    absl::Status st = index == 0 ? absl::OkStatus() : credential_.Check(where);
    if (st.ok()) st = BindSessionLocked(req, where);
    if (st.ok()) st = ValidateIngestMessage(req, svc_->limits(), where);
    if (!st.ok()) return st;
    auto submission = text_->Accept(
        {req.text(), req.token_ids(), req.flush(), req.end_of_document(), req.report_loss()},
        where);
    if (!submission.ok()) return submission.status();
    return SubmitLocked(index, std::move(*submission));
  }

  // The first message names the session, takes its writer lease (checking the client's
  // expected_tokens_received) and sets the stream's text options; later ones may repeat the name.
  absl::Status BindSessionLocked(const pb::IngestRequest& req, const std::string& where) {
    if (writer_) return CheckIngestSession(req, writer_->session_id(), where);
    ASSIGN_OR_RETURN(writer_, OpenIngestWriter(ctx_, *svc_->sessions(), credential_.tenant(), req));
    // The text protocol starts here: it needs the first message's text_options, and where
    // contexts start in this stream (for the bos): now, if the session is at position 0, and
    // after each end_of_document if the session resets there.
    ASSIGN_OR_RETURN(const session::SessionInfo info,
                     svc_->sessions()->GetSession(credential_.tenant(), writer_->session_id()));
    text_.emplace(
        StreamOptions(*svc_, TextEncodingOf(svc_->tokenizer(), req.text_options()),
                      writer_->counters().position == 0, info.options.reset_at_document_end),
        [this](int64_t n) { return svc_->quotas()->TakeIngestTokens(credential_.tenant(), n); });
    return absl::OkStatus();
  }

  // Submit's index for tokens that no request message is waiting for (the end-of-stream flush).
  static constexpr int64_t kNoResponse = -1;

  // Hands `s` to the writer; once applied, message `index` is answered (unless kNoResponse).
  absl::Status SubmitLocked(int64_t index, core::IngestSubmission s) {
    const auto submitted = Clock::now();
    const int64_t buffered = s.buffered_text_bytes;
    ++outstanding_;
    lifetime_.Due();
    absl::Status st = writer_->Ingest(
        std::move(s.tokens), s.end_of_document, cancel_,
        [this, index, buffered, submitted](absl::StatusOr<session::IngestProgress> r) {
          OnApplied(index, buffered, submitted, std::move(r));
        },
        s.durable);
    if (!st.ok()) {
      --outstanding_;
      lifetime_.Ran();
    }
    return st;
  }

  // Engine thread.
  void OnApplied(int64_t index, int64_t buffered, Clock::time_point submitted,
                 absl::StatusOr<session::IngestProgress> r) {
    ReactThenMaybeDelete(this, mu_, lifetime_, [&] {
      lifetime_.Ran();
      --outstanding_;
      if (r.ok()) {
        text_->Applied(r->tokens, r->nll_sum, r->nll_count);
        svc_->metrics()->AddTokensIngested(r->tokens);
        svc_->metrics()->ObserveIngestChunk(SecondsSince(submitted));
        // Answered even when a later message has failed meanwhile: the error status waits for
        // this response (MaybeFinishLocked). A cancelled stream has nobody left to answer.
        if (index != kNoResponse && !finish_called_ && !ctx_->IsCancelled()) {
          out_.push_back(IngestResponseFor(index, buffered, r->counters, *text_));
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
    });
  }

  void MaybeFinishLocked() override {
    if (finish_called_ || writing_) return;
    // Acknowledge everything already accepted before reporting an error (nothing applied is
    // lost, and the client learns exactly how far it got).
    if (outstanding_ > 0 || !out_.empty() || (!failed_ && !reads_done_)) return;
    finish_called_ = true;
    writer_.reset();  // release the session before the client hears the end of the stream
    stream_.reset();  // and the stream quota (the client may open its next stream at once)
    const grpc::Status status = failed_ ? ToGrpcStatus(fail_) : grpc::Status::OK;
    if (failed_) AddRetryTrailers(fail_, ctx_);
    RecordCall(svc_->metrics(), *ctx_, "Ingest", status, start_);
    Finish(status);
  }

  TttServiceImpl* const svc_;
  grpc::CallbackServerContext* const ctx_;
  const Clock::time_point start_;
  // Guarded by mu_ (the base's), as the base's members.
  StreamCredential credential_;
  std::optional<core::IngestStream> text_;  // from the first message on (BindSessionLocked)
  std::optional<auth::Quotas::StreamLease> stream_;  // --quotas_file streams
  pb::IngestRequest req_;
  std::unique_ptr<session::Writer> writer_;
  int64_t msg_index_ = 0;
  int64_t outstanding_ = 0;  // submissions whose engine callback is due
  bool reads_done_ = false;
  bool read_paused_ = false;
};

}  // namespace

grpc::ServerBidiReactor<pb::IngestRequest, pb::IngestResponse>* NewIngestReactor(
    TttServiceImpl* svc, grpc::CallbackServerContext* ctx) {
  return new IngestReactor(svc, ctx);
}

}  // namespace ttt::server::internal
