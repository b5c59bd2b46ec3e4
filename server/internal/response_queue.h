// The write side shared by the streaming reactors that answer with many messages (Ingest,
// Generate): responses written one at a time from a queue, and the first failure remembered for
// Finish.
#pragma once

#include <deque>
#include <utility>

#include "absl/status/status.h"
#include "engine/scheduler.h"

namespace ttt::server::internal {

// CRTP, so it can call the reactor's StartWrite. Not thread-safe by itself.
// REQUIRES: every method runs with the reactor's mutex held.
template <typename Reactor, typename Response>
class ResponseQueue {
 protected:
  // Remembers the first failure; the reactor finishes with it once what was accepted is written.
  void FailLocked(absl::Status st) {
    if (failed_) return;
    failed_ = true;
    fail_ = std::move(st);
  }

  void MaybeWriteLocked() {
    if (writing_ || out_.empty() || finish_called_) return;
    writing_ = true;
    static_cast<Reactor*>(this)->StartWrite(&out_.front());
  }

  // OnWriteDone's bookkeeping: the front was written, or the client went away (then the rest of
  // the work is cancelled).
  void WriteDoneLocked(bool ok, engine::CancelToken& cancel) {
    writing_ = false;
    if (!out_.empty()) out_.pop_front();
    if (!ok) {
      cancel.Cancel();
      out_.clear();
      FailLocked(absl::CancelledError("the client went away"));
    }
    MaybeWriteLocked();
  }

  // OnCancel's bookkeeping: drop what is not being written, cancel the work, remember why.
  void CancelLocked(engine::CancelToken& cancel, const char* why) {
    cancel.Cancel();
    while (out_.size() > (writing_ ? 1u : 0u)) out_.pop_back();
    FailLocked(absl::CancelledError(why));
  }

  std::deque<Response> out_;  // out_.front() is being written while writing_
  bool writing_ = false;
  bool failed_ = false;
  absl::Status fail_;
  bool finish_called_ = false;
};

}  // namespace ttt::server::internal
