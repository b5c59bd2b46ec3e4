// Generation: the prompt is ingested, then each step draws a token (engine::DecodeNext) and
// ingests it, until max_tokens, the eos token, a stop the caller signals, cancellation or an
// error. A non-committing generation runs on a copy of the session; a committing one is a writer
// and runs on the session itself.
#include <atomic>
#include <optional>

#include "absl/strings/str_cat.h"
#include "engine/decode.h"
#include "session/internal/session_manager_impl.h"
#include "session/internal/session_record.h"
#include "session/session.h"
#include "util/status_macros.h"

namespace ttt::session {

namespace {

// One generation in flight. Owned by the callbacks of its queued work (each holds a
// shared_ptr); Finish runs exactly once and ends it. Engine thread, except construction.
class GenerateOp : public std::enable_shared_from_this<GenerateOp> {
 public:
  // `scratch_bytes` (the manager's count of copies in flight) outlives the op.
  GenerateOp(const GenerateParams& params, std::shared_ptr<Session> session,
             engine::Scheduler* scheduler, SessionListener* listener, int64_t eos, int64_t chunk,
             std::atomic<int64_t>* scratch_bytes)
      : params_(params),
        sampler_(params.sampling),
        session_(std::move(session)),
        scheduler_(scheduler),
        listener_(listener),
        eos_(eos),
        chunk_(chunk),
        scratch_bytes_(scratch_bytes) {}

  std::shared_ptr<Session> session() const { return session_; }
  // The state generation runs on: the session's own when committing, else a copy.
  engine::SequenceState* target() { return params_.commit ? &session_->state : &scratch_; }

  void Bind(std::unique_ptr<Writer> writer, std::shared_ptr<engine::CancelToken> cancel,
            std::function<bool(int32_t, float)> on_token,
            std::function<void(absl::Status, FinishReason, int64_t)> done) {
    writer_ = std::move(writer);
    cancel_ = std::move(cancel);
    on_token_ = std::move(on_token);
    done_ = std::move(done);
  }
  // Drops the writer lease of a generation that never started.
  void Abandon() { writer_.reset(); }

  // Engine thread, before the prompt's first batch (the session is resident): takes the copy
  // and notes where the stream starts.
  void Begin() {
    if (!params_.commit) {
      scratch_ = session_->state.Fork();  // copy-on-write: costs what generating writes
      counted_ = 0;
    }
    position_before_ = target()->position();
    chunks_before_ = target()->chunks_applied();
  }

  // Runs after each ingest (the prompt, then every drawn token): draws the next token.
  void Step(absl::Status st) {
    if (!params_.commit) {  // the copy's own buffers, as it grows
      const int64_t now = session_->BytesBeyond(scratch_);
      *scratch_bytes_ += now - counted_;
      counted_ = now;
    }
    if (!st.ok()) return Finish(st, FinishReason::kLength);
    if (cancel_->cancelled()) {
      return Finish(absl::CancelledError("the request was cancelled"), FinishReason::kLength);
    }
    if (finish_after_ingest_) return Finish(absl::OkStatus(), *finish_after_ingest_);
    if (generated_ >= params_.max_tokens) return Finish(absl::OkStatus(), FinishReason::kLength);
    absl::StatusOr<engine::DecodedToken> next = engine::DecodeNext(*target(), sampler_);
    if (!next.ok()) return Finish(next.status(), FinishReason::kLength);
    if (params_.stop_at_eos && eos_ >= 0 && next->token == eos_) {
      return Finish(absl::OkStatus(), FinishReason::kEos);
    }
    ++generated_;
    const bool go_on = on_token_ ? on_token_(next->token, next->logprob) : true;
    if (!go_on) finish_after_ingest_ = FinishReason::kStop;
    // Without a commit the drawn token need not be ingested when nothing follows it.
    if (!params_.commit) {
      if (!go_on) return Finish(absl::OkStatus(), FinishReason::kStop);
      if (generated_ >= params_.max_tokens) return Finish(absl::OkStatus(), FinishReason::kLength);
    }
    SubmitToken(next->token);
  }

  // The first work item: ingests the prompt into the target, then steps.
  engine::Work PromptWork(std::function<absl::Status()> prepare) {
    engine::Work w;
    w.key = session_->key;
    w.state = target();
    w.tokens = params_.prompt;
    w.pace = engine::Work::Pace::kInteractive;  // the client waits for its first token
    w.cancel = cancel_;
    w.prepare = std::move(prepare);
    w.on_done = [self = shared_from_this()](absl::Status st) { self->Step(std::move(st)); };
    return w;
  }

 private:
  void SubmitToken(int32_t token) {
    engine::Work next;
    next.key = session_->key;
    next.state = target();
    next.tokens = {token};
    next.pace = engine::Work::Pace::kDecode;  // planned first in each engine step
    next.cancel = cancel_;
    next.on_done = [self = shared_from_this()](absl::Status st) { self->Step(std::move(st)); };
    absl::Status submitted = scheduler_->Submit(std::move(next), /*bypass_limits=*/true);
    if (!submitted.ok()) Finish(submitted, FinishReason::kLength);
  }

  // Commit bookkeeping, then the writer lease goes before `done`, so the client's next write
  // right after the last response is not refused.
  void Finish(absl::Status st, FinishReason reason) {
    Session& sess = *session_;
    if (params_.commit) {
      std::lock_guard<std::mutex> lock(sess.mu);
      if (sess.resident) {
        const int64_t tokens = std::max<int64_t>(0, sess.state.position() - position_before_);
        const int64_t chunks = sess.AccountWriteLocked(tokens, chunks_before_, chunk_);
        sess.counters.tokens_generated += generated_;
        sess.RefreshLocked();
        if (listener_ != nullptr && chunks > 0) listener_->OnChunkUpdates(chunks);
      }
    }
    scratch_ = engine::SequenceState{};
    *scratch_bytes_ -= counted_;
    counted_ = 0;
    writer_.reset();
    sess.EndOp();
    auto cb = std::move(done_);
    on_token_ = nullptr;
    if (cb) cb(std::move(st), reason, generated_);
  }

  const GenerateParams params_;
  engine::Sampler sampler_;
  const std::shared_ptr<Session> session_;
  engine::Scheduler* const scheduler_;
  SessionListener* const listener_;
  const int64_t eos_;
  const int64_t chunk_;
  std::atomic<int64_t>* const scratch_bytes_;

  std::unique_ptr<Writer> writer_;  // when committing
  std::shared_ptr<engine::CancelToken> cancel_;
  std::function<bool(int32_t, float)> on_token_;
  std::function<void(absl::Status, FinishReason, int64_t)> done_;
  engine::SequenceState scratch_;  // the copy generation runs on, unless committing
  int64_t counted_ = 0;            // its bytes as counted in *scratch_bytes_
  int64_t generated_ = 0;
  int64_t position_before_ = 0;
  int64_t chunks_before_ = 0;
  std::optional<FinishReason> finish_after_ingest_;
};

}  // namespace

absl::Status SessionManagerImpl::PrepareGenerateParams(const Session& s,
                                                       GenerateParams& params) const {
  RETURN_IF_ERROR(engine::ValidateSamplingParams(params.sampling));
  if (params.max_tokens < 1 || params.max_tokens > options_.max_generate_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_tokens must be in [1, ", options_.max_generate_tokens, "], got ", params.max_tokens));
  }
  RETURN_IF_ERROR(engine::ValidateTokens(model_->config(), params.prompt));
  if (params.prompt.empty()) {
    std::lock_guard<std::mutex> lock(s.mu);
    if (s.counters.position == 0) {
      const int64_t bos = model_->config().bos_token_id;
      if (bos < 0 || bos >= model_->config().vocab_size) {
        return absl::FailedPreconditionError(
            "the session is empty and the model has no bos token: give a prompt");
      }
      params.prompt.push_back(static_cast<int32_t>(bos));
    }
  }
  return absl::OkStatus();
}

absl::Status SessionManagerImpl::Generate(
    const std::string& tenant, const std::string& id, GenerateParams params,
    std::shared_ptr<engine::CancelToken> cancel, std::function<bool(int32_t, float)> on_token,
    std::function<void(absl::Status, FinishReason, int64_t)> done) {
  ASSIGN_OR_RETURN(auto s, Find(tenant, id));
  RETURN_IF_ERROR(PrepareGenerateParams(*s, params));
  if (!cancel) cancel = std::make_shared<engine::CancelToken>();
  std::unique_ptr<Writer> writer;
  if (params.commit) {
    ASSIGN_OR_RETURN(writer, OpenWriter(tenant, id, "a committing Generate"));
  }
  auto op =
      std::make_shared<GenerateOp>(params, s, scheduler_, listener_, model_->config().eos_token_id,
                                   TokensPerChunk(), &scratch_bytes_);
  op->Bind(std::move(writer), cancel, std::move(on_token), std::move(done));
  engine::Work w = op->PromptWork([this, op]() -> absl::Status {
    RETURN_IF_ERROR(EnsureResident(*op->session()));
    op->Begin();
    return absl::OkStatus();
  });
  absl::Status submitted = SubmitOp(*s, std::move(w), cancel);
  if (!submitted.ok()) op->Abandon();
  return submitted;
}

}  // namespace ttt::session
