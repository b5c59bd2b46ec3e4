// When a streaming reactor may delete itself: gRPC is done with it (OnDone ran) and none of its
// callbacks from elsewhere (an engine completion, an alarm) is still due. OnDone and every such
// callback run through ReactThenMaybeDelete, so the last of them, whichever it is, deletes the
// reactor and nothing touches it afterwards.
#pragma once

#include <cstdint>
#include <mutex>

namespace ttt::server::internal {

// Not thread-safe by itself. REQUIRES: every method runs with the reactor's mutex held.
class ReactorLifetime {
 public:
  // A callback from outside gRPC is now due (an engine submission, an alarm armed)...
  void Due() { ++due_; }
  // ...and it ran.
  void Ran() { --due_; }
  int64_t due() const { return due_; }
  // gRPC's OnDone: gRPC no longer touches the reactor.
  void GrpcDone() { grpc_done_ = true; }
  bool Deletable() const { return grpc_done_ && due_ == 0; }

 private:
  int64_t due_ = 0;
  bool grpc_done_ = false;
};

// Runs `reaction` with `mu` held, then deletes `reactor` when `lifetime` says it may go.
template <typename Reactor, typename Reaction>
void ReactThenMaybeDelete(Reactor* reactor, std::mutex& mu, const ReactorLifetime& lifetime,
                          Reaction&& reaction) {
  bool deletable;
  {
    std::lock_guard<std::mutex> lock(mu);
    reaction();
    deletable = lifetime.Deletable();
  }
  if (deletable) delete reactor;
}

}  // namespace ttt::server::internal
