// A client of etcd's v3 API, the coordinator of replicas beyond one machine: leases kept alive in
// the background, linearizable reads, and the compare-and-swap transactions that ownership and
// commits are built from (docs/coordination.md says how sessions use them). It knows nothing of
// sessions; keys and values are opaque bytes.
//
// Failover: the client holds one channel per endpoint (members of one etcd cluster) and starts each
// call at the endpoint that answered last, moving on to the next one when an endpoint is down or
// does not answer in time. Reads, lease grants and keep-alives are retried there freely. A
// transaction is sent again elsewhere only when it provably never left this process (the channel
// was not connected) or etcd refused it before proposing it ("no leader"); once sent, a failure
// is returned as UNAVAILABLE "outcome unknown", since the transaction may have been applied:
// callers re-read before retrying.
//
// Errors are absl::Status with gRPC's codes: INVALID_ARGUMENT for bad arguments, NOT_FOUND for
// an absent key or lease, FAILED_PRECONDITION for a transaction whose comparison failed,
// UNAVAILABLE when no endpoint answered, each message naming the operation and the key.
//
// Thread-safety: EtcdClient and KeptLease are safe to use from any number of threads.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace ttt::coord {

namespace internal {
class Endpoints;
class KeepAliveLoop;
}  // namespace internal

struct EtcdClientOptions {
  // Client URLs of the members of one cluster: "host:port", "http://host:port", or
  // "https://host:port" for TLS (one scheme for all). Required.
  std::vector<std::string> endpoints;
  // TLS (https:// endpoints only), PEM files: the CA bundle that signed the members' server
  // certificates (empty: the system's roots), and this client's certificate chain and key for
  // etcd's --client-cert-auth (both or neither).
  std::string tls_ca_file;
  std::string tls_cert_file;
  std::string tls_key_file;
  // How often those files are read again: rotated certificates (cert-manager, or an operator
  // replacing the files) take effect on the next connection without a restart.
  absl::Duration tls_refresh_interval = absl::Seconds(60);
  // Bound on one call, failover across endpoints included.
  absl::Duration call_timeout = absl::Seconds(5);
  // Bound on one endpoint's attempt (connecting included) before the next endpoint is tried.
  absl::Duration attempt_timeout = absl::Seconds(2);
};

// One key as etcd stores it. Revisions are etcd's cluster-wide, monotonic store revisions.
struct KeyValue {
  std::string key;
  std::string value;
  int64_t create_revision = 0;  // revision of the put that created this incarnation of the key
  int64_t mod_revision = 0;     // revision of its last change
  int64_t version = 0;          // number of puts since it was created
  int64_t lease = 0;            // the lease the key is bound to; 0 = none
};

// One comparison of a transaction (Transact): a key's create or mod revision equals `revision`.
// Revision 0 means the key does not exist.
struct Condition {
  enum class Revision { kCreate, kMod };
  std::string key;
  Revision target = Revision::kCreate;
  int64_t revision = 0;

  static Condition Absent(std::string key) { return {std::move(key), Revision::kCreate, 0}; }
  // The key was created at `revision` (a fencing token: an owner key still is its creator's).
  static Condition CreatedAt(std::string key, int64_t revision) {
    return {std::move(key), Revision::kCreate, revision};
  }
  // The key was last changed at `revision` (read-modify-write: nobody wrote it since the read).
  static Condition ModifiedAt(std::string key, int64_t revision) {
    return {std::move(key), Revision::kMod, revision};
  }
};

// One operation of a transaction: put `key` = `value` (bound to `lease`, 0 = none) or delete it.
struct Operation {
  enum class Kind { kPut, kDelete };
  Kind kind = Kind::kPut;
  std::string key;
  std::string value;
  int64_t lease = 0;

  static Operation Put(std::string key, std::string value, int64_t lease = 0) {
    return {Kind::kPut, std::move(key), std::move(value), lease};
  }
  static Operation Delete(std::string key) { return {Kind::kDelete, std::move(key), "", 0}; }
};

// What one member reports about itself and its cluster.
struct MemberStatus {
  uint64_t member_id = 0;
  uint64_t leader_id = 0;  // 0 while the cluster has no leader
  uint64_t raft_term = 0;
  std::string version;  // etcd's version, e.g. "3.4.23"
};

// A lease that a background thread keeps alive (etcd's LeaseKeepAlive), asking every third of
// its TTL. Whether it is alive is judged on this process's monotonic clock alone: etcd extends a
// lease to a full TTL when it processes a keep-alive, which happens after the request was sent,
// so the lease lives at least until (send time of the last answered keep-alive) + TTL. LeaseLive
// is false from that instant minus `margin` on, however long the process or etcd stalls, and for
// ever once etcd answered that the lease is gone (expired or revoked).
class KeptLease {
 public:
  // Stops the keep-alive thread (waiting at most for one attempt's timeout); does not revoke:
  // the lease expires at etcd after its TTL. REQUIRES: not called from the keep-alive thread.
  ~KeptLease();
  KeptLease(const KeptLease&) = delete;
  KeptLease& operator=(const KeptLease&) = delete;

  int64_t id() const { return id_; }
  // The TTL etcd granted (it may raise the one asked for to its minimum).
  absl::Duration ttl() const { return ttl_; }

  // Whether the lease is certainly still alive at etcd for at least `margin` more.
  bool LeaseLive(absl::Duration margin) const;
  // OK when LeaseLive(margin); otherwise UNAVAILABLE saying why (no keep-alive answer for how
  // long, or etcd reported the lease gone).
  absl::Status CheckLive(absl::Duration margin) const;

  // Whether the lease is gone for good: etcd answered a keep-alive that it no longer knows it
  // (it expired: this process was paused or cut off from etcd for longer than the TTL), or it was
  // revoked. Keys bound to it are gone too; a process that wants to go on needs a new lease.
  bool Lost() const;

  // Stops keeping the lease alive and revokes it, which deletes every key bound to it. A lease
  // etcd no longer knows (expired, revoked before) counts as revoked: OK.
  absl::Status Revoke();

 private:
  friend class EtcdClient;
  KeptLease(int64_t id, absl::Duration ttl, std::shared_ptr<internal::Endpoints> endpoints,
            std::unique_ptr<internal::KeepAliveLoop> loop);

  const int64_t id_;
  const absl::Duration ttl_;
  const std::shared_ptr<internal::Endpoints> endpoints_;
  const std::unique_ptr<internal::KeepAliveLoop> loop_;
};

class EtcdClient {
 public:
  // Validates the options and sets up one channel per endpoint; connects lazily (no call is
  // made here). INVALID_ARGUMENT for no endpoint, a malformed one, mixed schemes, TLS files that
  // cannot be read or that come without https://, or non-positive timeouts.
  static absl::StatusOr<std::unique_ptr<EtcdClient>> Create(EtcdClientOptions options);
  ~EtcdClient();
  EtcdClient(const EtcdClient&) = delete;
  EtcdClient& operator=(const EtcdClient&) = delete;

  // --- Leases. `ttl` is a whole number of seconds >= 1. ---
  // Grants a lease nobody keeps alive (it expires after its TTL). Returns its id.
  absl::StatusOr<int64_t> Grant(absl::Duration ttl);
  // Grants a lease and keeps it alive until the KeptLease is destroyed or revoked. The KeptLease
  // may outlive this client.
  absl::StatusOr<std::unique_ptr<KeptLease>> GrantKept(absl::Duration ttl);
  // Revokes a lease, deleting every key bound to it. NOT_FOUND when etcd does not know it
  // (expired or revoked).
  absl::Status Revoke(int64_t lease);

  // --- Linearizable reads. ---
  // NOT_FOUND when the key does not exist.
  absl::StatusOr<KeyValue> Get(const std::string& key);
  // Every key starting with `prefix` (non-empty), in key order.
  absl::StatusOr<std::vector<KeyValue>> List(const std::string& prefix);

  // --- Transactions (compare-and-swap). ---
  // Creates `key` = `value` bound to `lease` (0: no lease) only if the key does not exist.
  // Returns the revision that created it (its create_revision). FAILED_PRECONDITION "already
  // exists" (naming its create revision and lease) when it does.
  absl::StatusOr<int64_t> CreateIfAbsent(const std::string& key, const std::string& value,
                                         int64_t lease);
  // Claims `key` for the holder of `lease`: CreateIfAbsent, retried while the key exists until
  // `wait` has passed (a holder that died frees it when etcd expires its lease, within that
  // lease's TTL). Returns the create revision. FAILED_PRECONDITION naming the holder (its value
  // and lease) when the key is still held after `wait`. A create of unknown outcome counts as
  // done when the key then holds `value` under `lease`.
  absl::StatusOr<int64_t> Claim(const std::string& key, const std::string& value, int64_t lease,
                                absl::Duration wait);
  // Puts `key` = `value` (unbound to any lease) only if `owner_key` exists with create revision
  // `owner_create_revision`: the fencing token of whoever created the owner key. Returns the
  // revision of the put. FAILED_PRECONDITION "fenced" when the owner key is absent (its lease
  // expired, or it was deleted) or was created again since (another revision).
  absl::StatusOr<int64_t> PutIfOwner(const std::string& owner_key, int64_t owner_create_revision,
                                     const std::string& key, const std::string& value);
  // Deletes `key` under the same condition as PutIfOwner (deleting an absent key is OK).
  // `key` may be `owner_key` itself: releasing ownership without waiting for the lease.
  absl::Status DeleteIfOwner(const std::string& owner_key, int64_t owner_create_revision,
                             const std::string& key);

  // Applies every operation, in order, if every condition holds, as one etcd transaction (the
  // multi-key form of the helpers above: e.g. create a session's owner and head and bump a
  // tenant's count only if neither exists and the count is unchanged). Returns the revision after
  // it. FAILED_PRECONDITION naming each condition that failed and what the key holds instead.
  // INVALID_ARGUMENT for no operation, an empty key, a negative revision, or a key that two
  // operations touch (etcd refuses those).
  absl::StatusOr<int64_t> Transact(const std::vector<Condition>& conditions,
                                   const std::vector<Operation>& operations);

  // --- Operations. ---
  // Asks one endpoint (one of options.endpoints, as given) about its member, without failover.
  absl::StatusOr<MemberStatus> Status(const std::string& endpoint);

 private:
  explicit EtcdClient(std::shared_ptr<internal::Endpoints> endpoints);

  const std::shared_ptr<internal::Endpoints> endpoints_;
};

}  // namespace ttt::coord
