// The base of the streaming reactors that answer with many messages (Ingest, Generate): their
// responses written one at a time from a queue, the first failure remembered for Finish,
// cancellation passed down to the engine's work, and their lifetime (reactor_lifetime.h). The
// reactor adds its protocol and MaybeFinishLocked: when, and with what status, the call ends.
#pragma once

#include <deque>
#include <memory>
#include <mutex>
#include <utility>

#include "absl/status/status.h"
#include "engine/scheduler.h"
#include "server/internal/reactor_lifetime.h"
#include "server/internal/write_starter.h"

namespace ttt::server::internal {

// `GrpcReactor`: grpc::ServerBidiReactor<Request, Response> or grpc::ServerWriteReactor<Response>.
// Reactions may run in parallel: everything here is guarded by mu_.
template <typename GrpcReactor, typename Response>
class StreamingReactor : public GrpcReactor {
 public:
  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mu_);
    writing_ = false;
    if (!out_.empty()) out_.pop_front();
    if (!ok) {  // the client went away: the rest of the work is cancelled
      cancel_->Cancel();
      out_.clear();
      FailLocked(absl::CancelledError("the client went away"));
    }
    MaybeWriteLocked();
    MaybeFinishLocked();
  }

  // Drops what is not being written, cancels the work, remembers why.
  void OnCancel() override {
    std::lock_guard<std::mutex> lock(mu_);
    CancelLocked();
    MaybeFinishLocked();
  }

  void OnDone() override {
    ReactThenMaybeDelete(this, mu_, lifetime_, [this] { lifetime_.GrpcDone(); });
  }

 protected:
  // `cancelled_why`: the status message of a call the client cancelled.
  explicit StreamingReactor(const char* cancelled_why) : cancelled_why_(cancelled_why) {}

  // Finishes the call once its state allows. REQUIRES: mu_ held.
  virtual void MaybeFinishLocked() = 0;

  // Remembers the first failure; the reactor finishes with it once what was accepted is written.
  void FailLocked(absl::Status st) {
    if (failed_) return;
    failed_ = true;
    fail_ = std::move(st);
  }

  // Starts writing the front of the queue unless a write is in flight.
  void MaybeWriteLocked() {
    if (writing_ || out_.empty() || finish_called_) return;
    writing_ = true;
    this->StartWrite(&out_.front());
  }

  // As MaybeWriteLocked, for the engine thread: the write starts on the WriteStarter's thread
  // (write_starter.h: why), which counts as a due callback until it ran. REQUIRES: mu_ held.
  void MaybeWriteSoonLocked() {
    if (writing_ || out_.empty() || finish_called_) return;
    writing_ = true;
    lifetime_.Due();
    WriteStarter::Get().Post([this] {
      ReactThenMaybeDelete(this, mu_, lifetime_, [this] {
        lifetime_.Ran();
        if (!out_.empty() && !finish_called_) {  // after a cancel, the front CancelLocked kept
          this->StartWrite(&out_.front());
          return;
        }
        writing_ = false;
        MaybeFinishLocked();
      });
    });
  }

  void CancelLocked() {
    cancel_->Cancel();
    while (out_.size() > (writing_ ? 1u : 0u)) out_.pop_back();
    FailLocked(absl::CancelledError(cancelled_why_));
  }

  std::mutex mu_;
  const std::shared_ptr<engine::CancelToken> cancel_ = std::make_shared<engine::CancelToken>();
  ReactorLifetime lifetime_;  // guarded by mu_, as everything below
  std::deque<Response> out_;  // out_.front() is being written while writing_
  bool writing_ = false;
  bool failed_ = false;
  absl::Status fail_;
  bool finish_called_ = false;

 private:
  const char* const cancelled_why_;
};

}  // namespace ttt::server::internal
