// Generate: a server stream, one response per token as the engine produces it, then a final one
// with the finish reason. With a tokenizer each response carries the text decoded so far, held
// back where it could still become the start of a stop string; a matched stop string ends the
// generation.
#include <algorithm>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/internal/reactors.h"
#include "server/internal/response_queue.h"
#include "tokenizer/tokenizer.h"

namespace ttt::server::internal {
namespace {

namespace pb = tttserve::v1;

class GenerateReactor final : public grpc::ServerWriteReactor<pb::GenerateResponse>,
                              public ResponseQueue<GenerateReactor, pb::GenerateResponse> {
 public:
  GenerateReactor(TttServiceImpl* svc, grpc::CallbackServerContext* ctx,
                  const pb::GenerateRequest* req)
      : svc_(svc),
        ctx_(ctx),
        start_(Clock::now()),
        cancel_(std::make_shared<engine::CancelToken>()) {
    std::lock_guard<std::mutex> lock(mu_);
    absl::Status st;
    try {
      st = StartLocked(ctx, *req);
    } catch (const std::exception& e) {
      st = absl::InternalError(absl::StrCat("generate failed: ", e.what()));
    }
    if (!st.ok()) {
      engine_running_ = false;
      FailLocked(st);
      MaybeFinishLocked();
    }
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mu_);
    WriteDoneLocked(ok, *cancel_);
    MaybeFinishLocked();
  }

  void OnCancel() override {
    std::lock_guard<std::mutex> lock(mu_);
    CancelLocked(*cancel_, "the client cancelled the call");
    MaybeFinishLocked();
  }

  void OnDone() override {
    bool del;
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
      del = !engine_running_;
    }
    if (del) delete this;
  }

 private:
  // Converts and checks the request (the server's part: prompt size, stop strings), then hands
  // it to the session manager, which validates the sampling parameters and max_tokens.
  absl::Status StartLocked(grpc::CallbackServerContext* ctx, const pb::GenerateRequest& req) {
    auto caller = CallerOf(svc_->authorizer(), ctx, "Generate");
    if (!caller.ok()) return caller.status();
    if (req.commit()) {  // a committing Generate writes to the session
      absl::Status may = svc_->authorizer().RequireScope(*caller, auth::Scope::kWrite,
                                                         "commit a Generate");
      if (!may.ok()) return may;
    }
    const std::string& tenant = caller->tenant;
    absl::Status routed = CheckSessionHeader(ctx, {req.session_id()});
    if (!routed.ok()) return routed;
    auto stream = svc_->quotas()->AcquireStream(tenant);
    if (!stream.ok()) return stream.status();
    if (*stream) stream_.emplace(std::move(**stream));
    const TextEncoding encoding = TextEncodingOf(svc_->tokenizer(), req.text_options());
    auto starts = TextStartsContext(*svc_->sessions(), tenant, req.session_id(),
                                    req.prompt_text(), encoding);
    if (!starts.ok()) return starts.status();
    auto prompt = InputTokens(svc_->limits(), svc_->tokenizer(), req.prompt_text(),
                              req.prompt_token_ids(), "the prompt", encoding, *starts);
    if (!prompt.ok()) return prompt.status();
    session::GenerateParams params = GenerateParamsFromProto(req);
    params.prompt = std::move(*prompt);
    absl::Status stops = ValidateStops(req);
    if (!stops.ok()) return stops;
    for (const auto& s : req.stop()) {
      max_stop_ = std::max(max_stop_, s.size());
      stops_.push_back(s);
    }
    if (!stops_.empty() && svc_->tokenizer() == nullptr) {
      return absl::FailedPreconditionError(
          "stop strings need text: the model has no tokenizer (stop on token ids client-side)");
    }
    if (svc_->tokenizer() != nullptr) {
      decoder_ = std::make_unique<tokenizer::StreamDecoder>(*svc_->tokenizer());
    }
    last_token_ = Clock::now();
    engine_running_ = true;
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
    if (decoder_) {
      text_ += decoder_->Push(token);
      resp.set_text(TakeText(/*final=*/false));
    }
    if (!failed_) {
      out_.push_back(std::move(resp));
      MaybeWriteLocked();
    }
    return !stop_hit_;
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

  // The text that may be sent now: up to a matched stop string, and otherwise holding back
  // what could still become the start of one. REQUIRES: mu_ held.
  std::string TakeText(bool final) {
    if (stop_hit_) return "";
    size_t limit = text_.size();
    for (const auto& s : stops_) {
      const size_t from = emitted_ >= s.size() ? emitted_ - s.size() + 1 : 0;
      const size_t p = text_.find(s, from);
      if (p != std::string::npos && p < limit) {
        limit = p;
        stop_hit_ = true;
      }
    }
    if (!stop_hit_ && !final && max_stop_ > 0) {
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

  // Engine thread.
  void OnEngineDone(absl::Status st, session::FinishReason reason, int64_t n) {
    bool del;
    {
      std::lock_guard<std::mutex> lock(mu_);
      engine_running_ = false;
      svc_->metrics()->AddTokensGenerated(n);
      if (st.ok()) {
        pb::GenerateResponse resp = FinalResponseLocked(reason, n);
        if (!failed_) out_.push_back(std::move(resp));
        MaybeWriteLocked();
      } else {
        FailLocked(st);
      }
      MaybeFinishLocked();
      del = done_;
    }
    if (del) delete this;
  }

  // The last message: the rest of the text, the finish reason, the token count.
  pb::GenerateResponse FinalResponseLocked(session::FinishReason reason, int64_t n) {
    pb::GenerateResponse resp;
    if (decoder_ && !stop_hit_) {
      text_ += decoder_->Flush();
      resp.set_text(TakeText(/*final=*/true));
    }
    if (stop_hit_) reason = session::FinishReason::kStop;
    resp.set_finish_reason(ToProto(reason));
    resp.set_tokens_generated(static_cast<int32_t>(n));
    return resp;
  }

  void MaybeFinishLocked() {
    if (finish_called_ || writing_ || engine_running_) return;
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
  const std::shared_ptr<engine::CancelToken> cancel_;

  std::mutex mu_;
  std::optional<auth::Quotas::StreamLease> stream_;  // --quotas_file streams
  std::unique_ptr<tokenizer::StreamDecoder> decoder_;
  std::vector<std::string> stops_;
  size_t max_stop_ = 0;
  std::string text_;    // decoded output so far
  size_t emitted_ = 0;  // bytes of text_ already sent
  bool stop_hit_ = false;
  int64_t generated_ = 0;
  Clock::time_point last_token_;
  bool engine_running_ = false;
  bool done_ = false;
};

}  // namespace

grpc::ServerWriteReactor<pb::GenerateResponse>* NewGenerateReactor(
    TttServiceImpl* svc, grpc::CallbackServerContext* ctx, const pb::GenerateRequest* req) {
  return new GenerateReactor(svc, ctx, req);
}

}  // namespace ttt::server::internal
