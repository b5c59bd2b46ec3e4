// Sessions shared by the replicas of one deployment, coordinated through etcd
// (docs/coordination.md). etcd holds who owns each session and which state is its committed one;
// the shared volume holds that state as immutable blobs (CheckpointStore::WriteBlob).
//
//   <prefix>sessions/<tenant>/<id>/owner   the owner's replica id, bound to its process lease
//   <prefix>sessions/<tenant>/<id>/head    the committed state: its blob and its metadata
//   <prefix>wants/<tenant>/<id>            a replica asking the owner to hand the session over,
//                                          bound to the asker's lease
//   <prefix>tenants/<tenant>/sessions      how many sessions the tenant has on the cluster,
//                                          changed in the transactions that create and delete
//
// The owner key's create revision is the owner's fencing token: etcd's cluster-wide, monotonic
// store revision, never reused. Every change of a head is one transaction that holds only if the
// owner key still carries that revision, so a process that lost its lease (paused, partitioned)
// can never move a head its successor moved; ownership passes only when etcd has deleted the
// owner key (the old process lease expired or was revoked, or the owner released it), never
// because a clock says so. Thread-safe; every call is a blocking etcd or file-system operation:
// call it without holding the manager's locks.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "coord/etcd_client.h"
#include "session/internal/checkpoint.h"
#include "session/internal/checkpoint_store.h"

namespace ttt::session::internal {

// A session's committed state, as its head key says.
struct Head {
  std::string blob;  // the blob's name; empty: the empty state of a session created empty
  CheckpointMeta meta;
  int64_t fence = 0;  // the owner revision that committed it
};

// A session this process now owns.
struct Owned {
  int64_t fence = 0;  // the owner key's create revision
  Head head;
};

// Whether a tenant that has `live_now` sessions on the cluster may create one more (the
// live_sessions quota); its refusal is the creation's answer.
using AdmitSession = std::function<absl::Status(const std::string& tenant, int64_t live_now)>;

class ClusterStore {
 public:
  // `lease`: this process's lease, kept alive; the owner keys are bound to it. `margin`: how long
  // a call may take between CheckServing and its answer (docs/coordination.md). `admit` (may be
  // empty: no limit) is asked with the count that the creating transaction then requires to be
  // unchanged, so a limit holds across replicas creating at the same instant.
  ClusterStore(std::shared_ptr<coord::EtcdClient> etcd,
               std::shared_ptr<const coord::KeptLease> lease, std::string prefix,
               std::string replica_id, absl::Duration margin,
               std::shared_ptr<const CheckpointStore> files, AdmitSession admit = nullptr);

  // OK while this process's lease certainly lives `margin` more: only then may it answer for a
  // session it owns. UNAVAILABLE ("this replica lost contact with etcd ...") otherwise.
  absl::Status CheckServing() const;
  // The lease is gone for good (etcd expired or revoked it): every owner key of this process is.
  bool LeaseLost() const { return lease_->Lost(); }

  // Creates a session owned by this process, with `state_bytes` (checkpoint format; empty: the
  // empty state) as its first head: the blob first, then owner, head and the tenant's count + 1
  // in one transaction that holds only if neither key exists and the count is the one `admit`
  // allowed. ALREADY_EXISTS when the id is taken on the cluster; `admit`'s refusal.
  absl::StatusOr<Owned> Create(const std::string& tenant, const std::string& id,
                               const std::string& state_bytes, const CheckpointMeta& meta);
  // Takes over a session that has a head and no owner (its owner's lease expired, or it was
  // released): one transaction that holds only if the owner key is absent and the head unchanged
  // since it was read. NOT_FOUND: no such session. UNAVAILABLE naming the owner while another
  // live process owns it; then this process also asks it to hand the session over (wants/).
  absl::StatusOr<Owned> TakeOver(const std::string& tenant, const std::string& id);
  // Commits `state_bytes` as the session's head: a new blob, then the head moved to it if the
  // owner key still carries `fence`; then the previous blob goes. Returns the new head.
  // FAILED_PRECONDITION ("fenced"): another process owns the session now (nothing committed).
  // UNAVAILABLE: not committed, or etcd did not say (the head is read back to tell; if it cannot
  // be, the commit counts as failed). `sequence` makes the blob's name unique for this owner.
  absl::StatusOr<Head> Commit(const std::string& tenant, const std::string& id, int64_t fence,
                              int64_t sequence, const std::string& state_bytes,
                              const CheckpointMeta& meta, const std::string& previous_blob);
  // The bytes of the blob a head names.
  absl::StatusOr<std::string> ReadBlob(const std::string& tenant, const std::string& id,
                                       const std::string& blob) const;
  // Deletes the session (owner and head, and the tenant's count - 1, in one transaction at
  // `fence`), then the blob its head
  // named (older ones went at each commit; a new session of the same id never reuses a name).
  // FAILED_PRECONDITION ("fenced") when this process does not own it any more.
  absl::Status Delete(const std::string& tenant, const std::string& id, int64_t fence,
                      const std::string& head_blob);
  // Gives ownership up (the head stays): another process may take the session over at once.
  void Release(const std::string& tenant, const std::string& id, int64_t fence);
  // After TakeOver answered that another live process owns the session (and asked it to hand
  // the session over): waits until that owner has let go of it (its owner key is gone: released,
  // or its lease ended), reading the key every `poll`, at most `wait`. True when it went, so a
  // TakeOver now may succeed; false when the owner still holds it (busy, or unreachable).
  bool AwaitRelease(const std::string& tenant, const std::string& id, absl::Duration wait,
                    absl::Duration poll);
  // Handover requests: the sessions other processes asked for (tenant, id).
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> Wanted();
  void ClearWant(const std::string& tenant, const std::string& id);

  // The committed heads of a tenant's sessions, on the whole cluster.
  absl::StatusOr<std::vector<Head>> ListHeads(const std::string& tenant);

  // The garbage sweep, by one process of the cluster at a time (the `gc` key, bound to this
  // process's lease; FAILED_PRECONDITION while another holds it): deletes the blobs no head names
  // that were last written more than `grace` ago (a crash between a blob's write and its commit
  // leaves them; their owners delete every other superseded blob at once), and the empty blob
  // folders of sessions that have no head. `grace` must exceed the lease's TTL by far: a blob
  // older than that can no longer be committed (its writer's lease, and so its fence, expired).
  // Returns how many blobs it deleted.
  absl::StatusOr<int64_t> SweepGarbage(absl::Duration grace);

 private:
  // FAILED_PRECONDITION for fence 0 (a session disowned here).
  static absl::Status CheckOwned(int64_t fence);
  std::string SessionKey(const std::string& tenant, const std::string& id, const char* which) const;
  std::string WantKey(const std::string& tenant, const std::string& id) const;
  std::string CountKey(const std::string& tenant) const;
  // The tenant's session count and the condition that it is still that count. A tenant without
  // a count key yet is counted from its heads once, under the condition that the key is still
  // absent (every create and delete writes it, so none happened since the listing).
  struct Count {
    int64_t sessions = 0;
    coord::Condition unchanged;
  };
  absl::StatusOr<Count> ReadCount(const std::string& tenant);
  absl::StatusOr<bool> Exists(const std::string& key);
  // Every blob a head names, as "<tenant>/<id>/<blob>", on the whole cluster.
  absl::StatusOr<std::set<std::string>> NamedBlobs();
  // Create's transaction: owner, head and count + 1, retried while only the count moved.
  absl::StatusOr<int64_t> CreateKeys(const std::string& tenant, const std::string& id,
                                     const Head& head);
  static absl::Status CountKeptMoving(const std::string& tenant);
  std::string EncodeHead(const Head& head) const;
  absl::StatusOr<Head> DecodeHead(const std::string& value, const std::string& key) const;

  const std::shared_ptr<coord::EtcdClient> etcd_;
  const std::shared_ptr<const coord::KeptLease> lease_;
  const std::string prefix_;
  const std::string replica_id_;
  const absl::Duration margin_;
  const std::shared_ptr<const CheckpointStore> files_;
  const AdmitSession admit_;
};

}  // namespace ttt::session::internal
