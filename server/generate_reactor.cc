// Generate: a server stream, one response per token as the engine produces it, then a final one
// with the finish reason; the transport of core/generation_text.h. With a tokenizer each
// response carries the text decoded so far, held back where it could still become the start of a
// stop string; a matched stop string ends the generation.
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "server/core/generation_text.h"
#include "server/internal/reactors.h"
#include "server/internal/streaming_reactor.h"
#include "util/status_macros.h"

namespace ttt::server::internal {
namespace {

namespace pb = tttserve::v1;

class GenerateReactor final
    : public StreamingReactor<grpc::ServerWriteReactor<pb::GenerateResponse>,
                              pb::GenerateResponse> {
 public:
  GenerateReactor(TttServiceImpl* svc, grpc::CallbackServerContext* ctx,
                  const pb::GenerateRequest* req)
      : StreamingReactor("the client cancelled the call"),
        svc_(svc),
        ctx_(ctx),
        start_(Clock::now()) {
    std::lock_guard<std::mutex> lock(mu_);
    absl::Status st = Guarded("generate", [&] { return StartLocked(ctx, *req); });
    if (!st.ok()) {
      if (lifetime_.due() > 0) lifetime_.Ran();  // the engine refused it: no callback comes
      FailLocked(st);
      MaybeFinishLocked();
    }
  }

 private:
  // Converts and checks the request (the server's part: prompt size, stop strings), then hands
  // it to the session manager, which validates the sampling parameters and max_tokens.
  absl::Status StartLocked(grpc::CallbackServerContext* ctx, const pb::GenerateRequest& req) {
    ASSIGN_OR_RETURN(auto caller, CallerOf(svc_->authorizer(), ctx, "Generate"));
    if (req.commit()) {  // a committing Generate writes to the session
      absl::Status may =
          svc_->authorizer().RequireScope(caller, auth::Scope::kWrite, "commit a Generate");
      if (!may.ok()) return may;
    }
    const std::string& tenant = caller.tenant;
    RETURN_IF_ERROR(CheckSessionHeader(ctx, {req.session_id()}));
    RETURN_IF_ERROR(AcquireStream(*svc_->quotas(), tenant, &stream_));
    const TextEncoding encoding = TextEncodingOf(svc_->tokenizer(), req.text_options());
    ASSIGN_OR_RETURN(const bool starts_context,
                     TextStartsContext(*svc_->sessions(), tenant, req.session_id(),
                                       req.prompt_text(), encoding));
    auto prompt = InputTokens(svc_->limits(), svc_->tokenizer(), req.prompt_text(),
                              req.prompt_token_ids(), "the prompt", encoding, starts_context);
    if (!prompt.ok()) return prompt.status();
    session::GenerateParams params = GenerateParamsFromProto(req);
    params.prompt = std::move(*prompt);
    RETURN_IF_ERROR(ValidateStops(req));
    auto text = core::GenerationText::Create(
        svc_->tokenizer(), std::vector<std::string>(req.stop().begin(), req.stop().end()));
    if (!text.ok()) return text.status();
    text_ = std::move(*text);
    last_token_ = Clock::now();
    lifetime_.Due();  // OnEngineDone
    return svc_->sessions()->Generate(
        tenant, req.session_id(), std::move(params), cancel_,
        [this](int32_t token, float logprob) { return OnToken(token, logprob); },
        [this](absl::Status st, session::FinishReason reason, int64_t n) {
          OnEngineDone(std::move(st), reason, n);
        });
  }

  // Engine thread. Returns false to stop (a stop string matched).
  bool OnToken(int32_t token, float logprob) {
    std::lock_guard<std::mutex> lock(mu_);
    ObserveTokenTimingLocked();
    ++generated_;
    pb::GenerateResponse resp;
    resp.set_token_id(token);
    resp.set_logprob(logprob);
    if (text_->has_text()) resp.set_text(text_->Push(token));
    if (!failed_) {
      out_.push_back(std::move(resp));
      MaybeWriteSoonLocked();  // gRPC's transport work off the engine thread
    }
    return !text_->stopped();
  }

  void ObserveTokenTimingLocked() {
    const auto now = Clock::now();
    if (generated_ == 0) {
      svc_->metrics()->ObserveTimeToFirstToken(std::chrono::duration<double>(now - start_).count());
    } else {
      svc_->metrics()->ObserveInterToken(std::chrono::duration<double>(now - last_token_).count());
    }
    last_token_ = now;
  }

  // Engine thread: the generation ended; the last message carries the rest of the text, the
  // finish reason (STOP when a stop string matched) and the token count.
  void OnEngineDone(absl::Status st, session::FinishReason reason, int64_t n) {
    ReactThenMaybeDelete(this, mu_, lifetime_, [&] {
      lifetime_.Ran();
      svc_->metrics()->AddTokensGenerated(n);
      if (st.ok()) {
        pb::GenerateResponse resp;
        if (text_->has_text() && !text_->stopped()) resp.set_text(text_->Finish());
        if (text_->stopped()) reason = session::FinishReason::kStop;
        resp.set_finish_reason(ToProto(reason));
        resp.set_tokens_generated(static_cast<int32_t>(n));
        if (!failed_) out_.push_back(std::move(resp));
        MaybeWriteLocked();
      } else {
        FailLocked(st);
      }
      MaybeFinishLocked();
    });
  }

  void MaybeFinishLocked() override {
    // The engine's callback is the only one due: the generation still runs.
    if (finish_called_ || writing_ || lifetime_.due() > 0) return;
    if (!failed_ && !out_.empty()) return;
    finish_called_ = true;
    stream_.reset();  // before the client hears the end: it may open its next stream at once
    const grpc::Status status = failed_ ? ToGrpcStatus(fail_) : grpc::Status::OK;
    RecordCall(svc_->metrics(), *ctx_, "Generate", status, start_);
    Finish(status);
  }

  TttServiceImpl* const svc_;
  grpc::CallbackServerContext* const ctx_;
  const Clock::time_point start_;
  // Guarded by mu_ (the base's), as the base's members. lifetime_ counts OnEngineDone.
  std::optional<auth::Quotas::StreamLease> stream_;  // --quotas_file streams
  std::unique_ptr<core::GenerationText> text_;       // set before the engine starts
  int64_t generated_ = 0;
  Clock::time_point last_token_;
};

}  // namespace

grpc::ServerWriteReactor<pb::GenerateResponse>* NewGenerateReactor(TttServiceImpl* svc,
                                                                   grpc::CallbackServerContext* ctx,
                                                                   const pb::GenerateRequest* req) {
  return new GenerateReactor(svc, ctx, req);
}

}  // namespace ttt::server::internal
