// The server's side of per-tenant quotas (--quotas_file; the limits and the ingest bucket are
// auth::Quotas'): it counts what only the server can see — a tenant's live sessions (the
// session manager's, plus creations still under way) and its checkpoint bytes on disk — and
// hands the handlers one object to ask before they create a session, write a checkpoint, open
// a stream or ingest tokens. Without a quotas file every check passes at no cost.
//
// Refusals are RESOURCE_EXHAUSTED naming the quota, its limit and the current use (auth/quotas.h);
// a refused call changes nothing: no session or checkpoint is lost or half made.
//
// Thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "auth/quotas.h"
#include "session/session.h"

namespace ttt::server::internal {

// One tenant's row in the metrics and in GetServerInfo: a tenant the quotas file lists, or "*"
// (every other tenant, summed).
struct TenantUsageRow {
  std::string tenant;
  int64_t live_sessions = 0;
  int64_t checkpoint_bytes = 0;
  int64_t streams_open = 0;
  std::optional<int64_t> ingest_tokens_total;  // known for listed tenants and "*"
  std::map<std::string, int64_t> refusals;     // by quota key
  auth::TenantQuota limits;
};

class QuotaGate {
 public:
  // REQUIRES: both outlive the gate. `quotas` null: no quotas (every check passes).
  QuotaGate(auth::Quotas* quotas, session::SessionManager* sessions)
      : quotas_(quotas), sessions_(sessions) {}

  bool enabled() const { return quotas_ != nullptr; }

  // A new session being made (Create, Fork, Restore into a new session, Import): counted with
  // the tenant's live sessions from the reservation until Release (or its destruction), so two
  // creations at once cannot both take the last place.
  class SessionReservation {
   public:
    ~SessionReservation() { Release(); }
    // Call once the session exists (or its creation failed).
    void Release();

   private:
    friend class QuotaGate;
    SessionReservation(QuotaGate* gate, std::string tenant)
        : gate_(gate), tenant_(std::move(tenant)) {}
    QuotaGate* gate_;  // null once released
    std::string tenant_;
  };
  // Null (and OK) without quotas.
  absl::StatusOr<std::shared_ptr<SessionReservation>> ReserveSession(const std::string& tenant);

  // Before writing checkpoint `checkpoint_id` (empty: a new id): the tenant's checkpoint bytes
  // must fit, counting a checkpoint this one replaces as if the new file were as large (its
  // size is known only once written, and a replaced file cannot be given back).
  absl::Status CheckCheckpoint(const std::string& tenant, const std::string& checkpoint_id);
  // Whether `checkpoint_id` names an existing checkpoint of the tenant (taken before writing, for
  // AfterCheckpoint). False without quotas.
  bool CheckpointExists(const std::string& tenant, const std::string& checkpoint_id);
  // After a checkpoint was written: when the real size put the tenant over its quota and the
  // checkpoint is new (`existed` false), it is deleted again and the call refused — the session
  // is untouched and no earlier checkpoint was replaced, so nothing is lost.
  absl::Status AfterCheckpoint(const std::string& tenant, const session::CheckpointInfo& written,
                               bool existed);

  // An open stream; empty optional without quotas.
  absl::StatusOr<std::optional<auth::Quotas::StreamLease>> AcquireStream(const std::string& tenant);
  // `tokens` tokens about to be ingested (the ingest bucket).
  absl::Status TakeIngestTokens(const std::string& tenant, int64_t tokens);

  // Usage rows: every listed tenant, then "*". Empty without quotas.
  std::vector<TenantUsageRow> Usage();
  // `tenant`'s own row (exact counts; ingest_tokens_total only when the file lists it; the
  // refusals of an unlisted tenant are counted in "*").
  std::optional<TenantUsageRow> UsageOf(const std::string& tenant);

 private:
  int64_t LiveSessions(const std::string& tenant);  // REQUIRES: mu_ held
  // Sum of the tenant's checkpoint files' sizes, without `except` (a checkpoint id, may be
  // empty), whose size goes to `except_bytes` when it exists.
  int64_t CheckpointBytes(const std::string& tenant, const std::string& except = "",
                          int64_t* except_bytes = nullptr);
  // Tenants with a folder in the checkpoint directory (the unlisted ones' bytes for "*").
  std::vector<std::string> TenantsOnDisk() const;

  auth::Quotas* const quotas_;
  session::SessionManager* const sessions_;
  std::mutex mu_;
  std::map<std::string, int64_t> creating_;  // guarded by mu_; reservations per tenant
};

}  // namespace ttt::server::internal
