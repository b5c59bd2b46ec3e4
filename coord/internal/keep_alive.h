// The thread behind KeptLease: keeps one etcd lease alive and judges, on this process's monotonic
// clock, how long etcd certainly keeps it (coord/etcd_client.h states the rule).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "coord/internal/endpoints.h"

namespace ttt::coord::internal {

// Thread-safe. Owns its thread, stopped by Stop() or the destructor.
class KeepAliveLoop {
 public:
  // Starts keeping `lease_id` alive. `ttl` is what etcd granted; `granted_sent_at` when the grant
  // request was sent (the lease lives at least until then + ttl).
  KeepAliveLoop(std::shared_ptr<const Endpoints> endpoints, int64_t lease_id, Clock::duration ttl,
                Clock::time_point granted_sent_at);
  ~KeepAliveLoop();

  // Stops the thread and waits for it (at most one keep-alive call's bound, a third of the TTL).
  // Idempotent.
  void Stop();
  // From now on the lease is gone, for `why` (non-OK), whatever a keep-alive answers.
  void MarkGone(absl::Status why);

  // OK while the lease certainly lives for `margin` more; UNAVAILABLE or the recorded reason it
  // is gone otherwise.
  absl::Status CheckLive(Clock::duration margin) const;
  // Non-OK once the lease is gone for good (etcd answered so, or it was revoked here).
  absl::Status Gone() const;

 private:
  void Run();
  // Sends one keep-alive (with failover) and records its answer. Returns whether one came.
  bool KeepAliveOnce();

  const std::shared_ptr<const Endpoints> endpoints_;
  const int64_t lease_id_;
  std::thread thread_;

  mutable std::mutex mu_;
  std::condition_variable wake_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  // Send time of the latest keep-alive (or the grant) etcd answered: the lease lives at least
  // until then + ttl_.
  Clock::time_point alive_since_ ABSL_GUARDED_BY(mu_);
  Clock::duration ttl_ ABSL_GUARDED_BY(mu_);
  // Non-OK once etcd answered that the lease is gone, or it was revoked here.
  absl::Status gone_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ttt::coord::internal
