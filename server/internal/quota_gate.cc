// See quota_gate.h.
#include "server/internal/quota_gate.h"

#include <algorithm>
#include <filesystem>
#include <set>
#include <system_error>
#include <utility>

#include "util/status_macros.h"

namespace ttt::server::internal {
namespace {
constexpr char kOthers[] = "*";  // the label of every tenant the quotas file does not list
}  // namespace

void QuotaGate::SessionReservation::Release() {
  if (gate_ == nullptr) return;
  std::lock_guard<std::mutex> lock(gate_->mu_);
  auto it = gate_->creating_.find(tenant_);
  if (it != gate_->creating_.end() && --it->second == 0) gate_->creating_.erase(it);
  gate_ = nullptr;
}

int64_t QuotaGate::LiveSessions(const std::string& tenant) {
  auto it = creating_.find(tenant);
  const int64_t creating = it == creating_.end() ? 0 : it->second;
  return static_cast<int64_t>(sessions_->ListSessions(tenant).size()) + creating;
}

absl::StatusOr<std::shared_ptr<QuotaGate::SessionReservation>> QuotaGate::ReserveSession(
    const std::string& tenant) {
  if (quotas_ == nullptr) return nullptr;
  std::lock_guard<std::mutex> lock(mu_);
  RETURN_IF_ERROR(quotas_->CheckLiveSessions(tenant, LiveSessions(tenant)));
  ++creating_[tenant];
  return std::shared_ptr<SessionReservation>(new SessionReservation(this, tenant));
}

int64_t QuotaGate::CheckpointBytes(const std::string& tenant, const std::string& except,
                                   int64_t* except_bytes) {
  auto list = sessions_->ListCheckpoints(tenant);
  if (!list.ok()) return 0;
  int64_t bytes = 0;
  for (const session::CheckpointInfo& c : *list) {
    if (c.id != except) {
      bytes += c.size_bytes;
    } else if (except_bytes != nullptr) {
      *except_bytes = c.size_bytes;
    }
  }
  return bytes;
}

absl::Status QuotaGate::CheckCheckpoint(const std::string& tenant,
                                        const std::string& checkpoint_id) {
  if (quotas_ == nullptr) return absl::OkStatus();
  // A new file's size is known only once it is written (AfterCheckpoint); a replaced one is
  // taken to be as large as the file it replaces, which cannot be given back afterwards.
  int64_t replaced = 0;
  const int64_t others = CheckpointBytes(tenant, checkpoint_id, &replaced);
  return quotas_->CheckCheckpointBytes(tenant, others, replaced);
}

bool QuotaGate::CheckpointExists(const std::string& tenant, const std::string& checkpoint_id) {
  if (quotas_ == nullptr || checkpoint_id.empty()) return false;
  int64_t replaced = -1;
  CheckpointBytes(tenant, checkpoint_id, &replaced);
  return replaced >= 0;
}

absl::Status QuotaGate::AfterCheckpoint(const std::string& tenant,
                                        const session::CheckpointInfo& written, bool existed) {
  if (quotas_ == nullptr || existed) return absl::OkStatus();
  absl::Status st = quotas_->CheckCheckpointBytes(tenant, CheckpointBytes(tenant, written.id),
                                                  written.size_bytes);
  if (!st.ok()) (void)sessions_->DeleteCheckpoint(tenant, written.id);
  return st;
}

absl::StatusOr<std::optional<auth::Quotas::StreamLease>> QuotaGate::AcquireStream(
    const std::string& tenant) {
  if (quotas_ == nullptr) return std::optional<auth::Quotas::StreamLease>();
  ASSIGN_OR_RETURN(auto lease, quotas_->AcquireStream(tenant));
  return std::optional<auth::Quotas::StreamLease>(std::move(lease));
}

absl::Status QuotaGate::TakeIngestTokens(const std::string& tenant, int64_t tokens) {
  if (quotas_ == nullptr) return absl::OkStatus();
  return quotas_->TakeIngestTokens(tenant, tokens);
}

std::vector<std::string> QuotaGate::TenantsOnDisk() const {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& entry :
       std::filesystem::directory_iterator(sessions_->options().checkpoint_dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (entry.is_directory(ec) && session::SessionManager::ValidateTenant(name).ok()) {
      out.push_back(name);
    }
  }
  return out;
}

std::vector<TenantUsageRow> QuotaGate::Usage() {
  std::vector<TenantUsageRow> rows;
  if (quotas_ == nullptr) return rows;
  const std::vector<auth::QuotaUsage> usage = quotas_->Usage();  // listed tenants, then "*"
  std::set<std::string> listed;
  for (const auto& u : usage) {
    if (u.tenant != kOthers) listed.insert(u.tenant);
  }
  int64_t listed_sessions = 0;
  for (const auth::QuotaUsage& u : usage) {
    TenantUsageRow row;
    row.tenant = u.tenant;
    row.streams_open = u.streams_open;
    row.ingest_tokens_total = u.ingest_tokens_admitted;
    row.refusals = u.refusals;
    if (u.tenant != kOthers) {
      row.live_sessions = static_cast<int64_t>(sessions_->ListSessions(u.tenant).size());
      row.checkpoint_bytes = CheckpointBytes(u.tenant);
      row.limits = quotas_->LimitsFor(u.tenant);
      listed_sessions += row.live_sessions;
    } else {
      row.live_sessions = std::max<int64_t>(0, sessions_->session_count() - listed_sessions);
      for (const std::string& t : TenantsOnDisk()) {
        if (listed.count(t) == 0) row.checkpoint_bytes += CheckpointBytes(t);
      }
      row.limits = quotas_->LimitsFor(kOthers);  // "*" is never a tenant: the defaults
    }
    rows.push_back(std::move(row));
  }
  return rows;
}

std::optional<TenantUsageRow> QuotaGate::UsageOf(const std::string& tenant) {
  if (quotas_ == nullptr) return std::nullopt;
  TenantUsageRow row;
  row.tenant = tenant;
  row.live_sessions = static_cast<int64_t>(sessions_->ListSessions(tenant).size());
  row.checkpoint_bytes = CheckpointBytes(tenant);
  row.streams_open = quotas_->StreamsOpen(tenant);
  row.limits = quotas_->LimitsFor(tenant);
  for (const auth::QuotaUsage& u : quotas_->Usage()) {
    if (u.tenant == tenant) {
      row.ingest_tokens_total = u.ingest_tokens_admitted;
      row.refusals = u.refusals;
    }
  }
  return row;
}

}  // namespace ttt::server::internal
