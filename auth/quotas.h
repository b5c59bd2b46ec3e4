// Per-tenant quotas: live sessions, checkpoint bytes on disk, ingest tokens per second (a token
// bucket) and concurrent streams, from a reloadable quotas file. Over a quota a call gets
// RESOURCE_EXHAUSTED naming the quota, the tenant and the limit, and for the rate when to
// retry; other tenants are unaffected.
//
// The quotas file, one tenant per line; `#` starts a comment; `*` is every tenant not listed,
// and a listed tenant's keys override `*` key by key. A key not given anywhere is unlimited.
//   *      live_sessions=100 checkpoint_bytes=10Gi ingest_tokens_per_s=20000 streams=16
//   alice  live_sessions=1000 ingest_tokens_per_s=100000 ingest_burst=400000
// Keys: live_sessions, checkpoint_bytes, ingest_tokens_per_s, ingest_burst (bucket size in
// tokens; default one second of the rate), streams (Ingest/Generate/Export/Import open at once).
// Byte and count values take k/M/G (1000s) or Ki/Mi/Gi (1024s) suffixes.
//
// Who counts what: live sessions and checkpoint bytes are the session manager's to count (the
// caller passes them in); the ingest bucket and the open streams are counted here.
//
// Metrics with bounded label cardinality: usage is reported per tenant only for the tenants the
// quotas file lists (the operator bounds that set); all others are summed under "*".
//
// A refusal of the ingest rate carries when to retry as a status payload (RetryAfterMs), which
// the server sends as trailing metadata.
//
// Thread-safety: thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "auth/internal/file_watcher.h"
#include "auth/internal/tokens_file.h"

namespace ttt::auth {

// One tenant's limits; unset = unlimited.
struct TenantQuota {
  std::optional<int64_t> live_sessions;
  std::optional<int64_t> checkpoint_bytes;
  std::optional<double> ingest_tokens_per_s;
  std::optional<int64_t> ingest_burst;
  std::optional<int64_t> streams;
};

// The limits that are set, by quota key (live_sessions, checkpoint_bytes, ingest_tokens_per_s,
// ingest_burst, streams); an unlimited quota is absent. For metrics and GetServerInfo.
std::map<std::string, double> LimitsByKey(const TenantQuota& quota);

// The parsed file: "*" and the listed tenants, each already merged over "*".
struct QuotaTable {
  TenantQuota defaults;
  std::map<std::string, TenantQuota> tenants;
  const TenantQuota& For(const std::string& tenant) const;
};

// INVALID_ARGUMENT with "<source>:<line>: ..." on the first bad line (unknown key, bad number,
// negative value, a tenant twice, a tenant the validator refuses).
absl::StatusOr<QuotaTable> ParseQuotasFile(absl::string_view text, absl::string_view source,
                                           const internal::TenantValidator& validate_tenant);

// What metrics and GetServerInfo show of one tenant (or of "*", all unlisted tenants summed).
struct QuotaUsage {
  std::string tenant;  // a listed tenant, or "*"
  int64_t streams_open = 0;
  int64_t ingest_tokens_admitted = 0;       // total since start
  std::map<std::string, int64_t> refusals;  // by quota key, total since start
};

// The payload of an ingest-rate refusal: milliseconds until enough tokens will have refilled
// (decimal text). Absent when no retry can succeed (a rate of 0, a message over the burst).
inline constexpr char kRetryAfterPayload[] = "type.ttt-serve/retry-after-ms";
std::optional<int64_t> RetryAfterMs(const absl::Status& status);

struct QuotasOptions {
  std::string path;
  internal::TenantValidator validate_tenant;
  int poll_interval_ms = 1000;                  // 0: no watcher
  std::function<absl::Time()> now = absl::Now;  // tests drive the bucket with a fake clock
  // Called after each reload attempt (not the first load) with its result; for metrics.
  std::function<void(bool ok)> on_reload;
};

class Quotas {
 public:
  // Loads the file (its errors fail the start) and watches it like the tokens file: a bad
  // reload keeps the last good quotas and logs one line.
  static absl::StatusOr<std::unique_ptr<Quotas>> Open(QuotasOptions options);
  ~Quotas() = default;

  // Before a new session (Create, Restore into a new one, Fork, Import): `live_now` is the
  // tenant's current count.
  absl::Status CheckLiveSessions(const std::string& tenant, int64_t live_now);
  // Before writing a checkpoint of `adding` bytes when the tenant's files hold `on_disk_now`.
  absl::Status CheckCheckpointBytes(const std::string& tenant, int64_t on_disk_now, int64_t adding);
  // Takes `tokens` from the tenant's ingest bucket, or refuses (taking nothing) saying when
  // enough will have refilled.
  absl::Status TakeIngestTokens(const std::string& tenant, int64_t tokens);

  // An open stream, counted until the lease is destroyed.
  class StreamLease {
   public:
    StreamLease(StreamLease&& other) noexcept;
    StreamLease& operator=(StreamLease&&) = delete;
    ~StreamLease();

   private:
    friend class Quotas;
    StreamLease(Quotas* quotas, std::string tenant) : quotas_(quotas), tenant_(std::move(tenant)) {}
    Quotas* quotas_;  // null once moved from
    std::string tenant_;
  };
  // REQUIRES: the Quotas outlives the lease.
  absl::StatusOr<StreamLease> AcquireStream(const std::string& tenant);

  // Per listed tenant, then "*".
  std::vector<QuotaUsage> Usage() const;
  // The limits that apply to `tenant` now (its line merged over "*", or "*").
  TenantQuota LimitsFor(const std::string& tenant) const;
  // Whether the file names `tenant` (it then has its own usage label).
  bool Listed(const std::string& tenant) const;
  // The tenants the file names, sorted.
  std::vector<std::string> ListedTenants() const;
  // `tenant`'s open streams, exact.
  int64_t StreamsOpen(const std::string& tenant) const;
  absl::Status Reload();
  uint64_t generation() const;

 private:
  struct Bucket {
    double tokens = 0;
    absl::Time updated;
    bool primed = false;
  };
  struct Counters {
    int64_t ingest_tokens_admitted = 0;
    std::map<std::string, int64_t> refusals;
  };

  explicit Quotas(QuotasOptions options) : options_(std::move(options)) {}
  absl::Status Load();
  absl::Status Refuse(const std::string& tenant, const char* quota, std::string message);
  Counters& CountersFor(const std::string& tenant);  // REQUIRES: mu_ held
  void ReleaseStream(const std::string& tenant);

  const QuotasOptions options_;
  mutable std::mutex mu_;
  std::shared_ptr<const QuotaTable> table_;         // guarded by mu_
  std::map<std::string, Bucket> buckets_;           // guarded by mu_; per tenant seen
  std::map<std::string, int64_t> streams_open_;     // guarded by mu_; exact, per tenant
  std::map<std::string, Counters> counters_;        // guarded by mu_; listed tenants and "*"
  uint64_t generation_ = 0;                         // guarded by mu_
  std::unique_ptr<internal::FileWatcher> watcher_;  // last: stops first
};

}  // namespace ttt::auth
