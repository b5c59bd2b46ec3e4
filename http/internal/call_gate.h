// Admission of new gRPC calls on the server's in-process channel. gRPC 1.51 crashes when a call
// is created on an in-process channel while its server is shutting down (grpc_call_stack_init
// on the torn-down transport), so the server closes this gate first: it waits for the calls
// being started to be started, and every later one is refused (UNAVAILABLE) without touching
// the channel. Calls already started are unaffected: the server's drain ends them.
#pragma once

#include <condition_variable>
#include <mutex>

#include "absl/base/thread_annotations.h"

namespace ttt::http::internal {

// Thread-safe.
class CallGate {
 public:
  // Holds the gate open for one call's start (a unary call: its whole run). Scoped.
  class Ticket {
   public:
    explicit Ticket(CallGate* gate) : gate_(gate->Enter() ? gate : nullptr) {}
    ~Ticket() {
      if (gate_ != nullptr) gate_->Leave();
    }
    Ticket(const Ticket&) = delete;
    Ticket& operator=(const Ticket&) = delete;
    // False once the gate is closed: do not start the call.
    bool admitted() const { return gate_ != nullptr; }

   private:
    CallGate* const gate_;
  };

  // Refuses every later ticket and waits until the admitted ones are gone. Idempotent.
  void Close() {
    std::unique_lock<std::mutex> lock(mu_);
    closed_ = true;
    idle_.wait(lock, [this] { return admitted_ == 0; });
  }

 private:
  bool Enter() {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return false;
    ++admitted_;
    return true;
  }
  void Leave() {
    std::lock_guard<std::mutex> lock(mu_);
    if (--admitted_ == 0) idle_.notify_all();
  }

  std::mutex mu_;
  std::condition_variable idle_;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  int admitted_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace ttt::http::internal
