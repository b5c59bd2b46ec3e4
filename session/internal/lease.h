// Session ownership leases in a store shared by several replicas (an RWX volume: NFS, CephFS,
// EFS, ...). One small file per leased session:
//
//   <root>/<tenant>/leases/<session id>.lease   {"owner": replica id, "generation": n,
//                                                "expires_unix_ms": t}
//
// A replica holds a session while the file names it and has not expired; it renews the lease
// while the session is resident, and another replica may take the session over once the lease
// has expired (its owner died or lost the store), bumping the generation. Every write of a
// session's state to the store is fenced: it checks first that the lease still names this replica
// at the generation it acquired, so a replica that lost its lease (paused, partitioned, too slow
// to renew) cannot overwrite the state its successor writes.
//
// What this relies on, and nothing more: rename(2) within a folder replaces the target atomically
// (POSIX; NFSv3/v4, CephFS and EFS keep this), files written and fsync'd before the rename are
// whole when the new name is visible, and the replicas' clocks agree to well within the lease
// length. No advisory locks (flock/fcntl are unreliable or absent over network filesystems) and
// no O_EXCL create are used. Two replicas taking over one expired lease at the same instant both
// write a record; the later rename wins, and each reads its record back, so at most one of them
// proceeds; the check-then-rename of a fenced write leaves a window of one rename, far shorter than
// a lease, which is why the lease must be much longer than a store write (docs in deploy/README).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace ttt::session::internal {

struct LeaseRecord {
  std::string owner;
  int64_t generation = 0;
  int64_t expires_unix_ms = 0;
};

class LeaseStore {
 public:
  // `now` returns milliseconds since the Unix epoch (tests pass their own clock).
  LeaseStore(std::filesystem::path root, std::string replica_id, int64_t lease_ms,
             std::function<int64_t()> now = {});

  const std::string& replica_id() const { return replica_id_; }
  int64_t lease_ms() const { return lease_ms_; }
  // The clock leases are measured by (ms since the Unix epoch).
  int64_t Now() const;

  // Takes the lease on the session, or extends it when this replica already holds it. Returns
  // the generation held. UNAVAILABLE (naming the owner and when its lease ends) while another
  // replica holds an unexpired lease, or when another replica won a simultaneous takeover.
  absl::StatusOr<int64_t> Acquire(const std::string& tenant, const std::string& id) const;
  // Extends the lease held at `generation`. FAILED_PRECONDITION when it is no longer this
  // replica's at that generation (expired and taken over, or removed).
  absl::Status Renew(const std::string& tenant, const std::string& id, int64_t generation) const;
  // The fence before a write to the store: OK when the lease names this replica at `generation`
  // and has not expired; FAILED_PRECONDITION ("stale generation") otherwise.
  absl::Status CheckFence(const std::string& tenant, const std::string& id,
                          int64_t generation) const;
  // Removes the lease when it is this replica's at `generation` (delete, shutdown), so another
  // replica need not wait for it to expire.
  void Release(const std::string& tenant, const std::string& id, int64_t generation) const;
  // NOT_FOUND when the session has no lease file; DATA_LOSS when it does not parse.
  absl::StatusOr<LeaseRecord> Read(const std::string& tenant, const std::string& id) const;
  // Whether another replica holds an unexpired lease on the session.
  bool HeldElsewhere(const std::string& tenant, const std::string& id) const;

  // Handover on request. A replica that gets calls for a session another replica holds (the
  // proxy's ring changed: a replica came back or was added) leaves a request,
  // <root>/<tenant>/leases/<session id>.want naming itself; the owner, at its next lease renewal,
  // writes the session to the store and releases the lease if the session is idle. Without it a
  // session moved off a restarted replica would stay where it moved (its lease renewed for ever)
  // and its calls, routed back by the proxy, would be refused for ever.
  void RequestHandover(const std::string& tenant, const std::string& id) const;
  // Whether a replica other than this one asked for the session.
  bool HandoverRequested(const std::string& tenant, const std::string& id) const;
  // Removes the request (the session was taken over).
  void ClearHandover(const std::string& tenant, const std::string& id) const;

 private:
  std::filesystem::path Path(const std::string& tenant, const std::string& id) const;
  std::filesystem::path WantPath(const std::string& tenant, const std::string& id) const;
  absl::Status Write(const std::string& tenant, const std::string& id,
                     const LeaseRecord& record) const;

  const std::filesystem::path root_;
  const std::string replica_id_;
  const int64_t lease_ms_;
  const std::function<int64_t()> now_;
};

}  // namespace ttt::session::internal
