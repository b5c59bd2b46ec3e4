// See quotas.h.
#include "auth/quotas.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "util/error_reason.h"
#include "util/log.h"
#include "util/status_macros.h"

namespace ttt::auth {
namespace {

constexpr char kLiveSessions[] = "live_sessions";
constexpr char kCheckpointBytes[] = "checkpoint_bytes";
constexpr char kIngestRate[] = "ingest_tokens_per_s";
constexpr char kIngestBurst[] = "ingest_burst";
constexpr char kStreams[] = "streams";
constexpr char kEveryone[] = "*";
// Past this many tenants with an ingest bucket, full buckets (the same as none) are dropped.
constexpr size_t kMaxIdleBuckets = 4096;

// "10", "10k", "10Mi", ...: a non-negative count.
absl::StatusOr<int64_t> ParseCount(absl::string_view value) {
  static constexpr std::pair<absl::string_view, int64_t> kSuffixes[] = {{"Ki", int64_t{1} << 10},
                                                                        {"Mi", int64_t{1} << 20},
                                                                        {"Gi", int64_t{1} << 30},
                                                                        {"Ti", int64_t{1} << 40},
                                                                        {"k", 1000},
                                                                        {"M", 1000000},
                                                                        {"G", 1000000000},
                                                                        {"T", 1000000000000}};
  int64_t scale = 1;
  for (const auto& [suffix, factor] : kSuffixes) {
    if (absl::EndsWith(value, suffix)) {
      value.remove_suffix(suffix.size());
      scale = factor;
      break;
    }
  }
  int64_t n = 0;
  if (!absl::SimpleAtoi(value, &n) || n < 0 || n > INT64_MAX / scale) {
    return absl::InvalidArgumentError(
        "must be a non-negative integer (suffixes k M G T, Ki Mi Gi Ti)");
  }
  return n * scale;
}

absl::Status SetKey(TenantQuota& q, absl::string_view key, absl::string_view value) {
  if (key == kIngestRate) {
    double rate = 0;
    if (!absl::SimpleAtod(value, &rate) || !(rate >= 0) || std::isinf(rate)) {
      return absl::InvalidArgumentError(
          absl::StrCat(key, "=", value, ": must be a non-negative number"));
    }
    q.ingest_tokens_per_s = rate;
    return absl::OkStatus();
  }
  std::optional<int64_t>* field = key == kLiveSessions      ? &q.live_sessions
                                  : key == kCheckpointBytes ? &q.checkpoint_bytes
                                  : key == kIngestBurst     ? &q.ingest_burst
                                  : key == kStreams         ? &q.streams
                                                            : nullptr;
  if (field == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown quota '", key,
                     "' (valid: live_sessions, checkpoint_bytes, ingest_tokens_per_s, "
                     "ingest_burst, streams)"));
  }
  auto n = ParseCount(value);
  if (!n.ok())
    return absl::InvalidArgumentError(absl::StrCat(key, "=", value, ": ", n.status().message()));
  *field = *n;
  return absl::OkStatus();
}

// `over` with every key `over` sets replacing `base`'s.
TenantQuota Merge(const TenantQuota& base, const TenantQuota& over) {
  TenantQuota q = base;
  if (over.live_sessions) q.live_sessions = over.live_sessions;
  if (over.checkpoint_bytes) q.checkpoint_bytes = over.checkpoint_bytes;
  if (over.ingest_tokens_per_s) q.ingest_tokens_per_s = over.ingest_tokens_per_s;
  if (over.ingest_burst) q.ingest_burst = over.ingest_burst;
  if (over.streams) q.streams = over.streams;
  return q;
}

// The bucket size: ingest_burst, else one second of the rate (at least one token).
double BurstOf(const TenantQuota& q) {
  if (q.ingest_burst) return static_cast<double>(*q.ingest_burst);
  return std::max(1.0, *q.ingest_tokens_per_s);
}

}  // namespace

std::map<std::string, double> LimitsByKey(const TenantQuota& q) {
  std::map<std::string, double> out;
  auto put = [&out](const char* key, const std::optional<int64_t>& v) {
    if (v) out[key] = static_cast<double>(*v);
  };
  put(kLiveSessions, q.live_sessions);
  put(kCheckpointBytes, q.checkpoint_bytes);
  if (q.ingest_tokens_per_s) out[kIngestRate] = *q.ingest_tokens_per_s;
  put(kIngestBurst, q.ingest_burst);
  put(kStreams, q.streams);
  return out;
}

std::optional<int64_t> RetryAfterMs(const absl::Status& status) {
  auto payload = status.GetPayload(kRetryAfterPayload);
  int64_t ms = 0;
  if (!payload || !absl::SimpleAtoi(std::string(*payload), &ms)) return std::nullopt;
  return ms;
}

const TenantQuota& QuotaTable::For(const std::string& tenant) const {
  auto it = tenants.find(tenant);
  return it == tenants.end() ? defaults : it->second;
}

absl::StatusOr<QuotaTable> ParseQuotasFile(absl::string_view text, absl::string_view source,
                                           const internal::TenantValidator& validate_tenant) {
  QuotaTable table;
  std::map<std::string, std::pair<TenantQuota, int>> raw;  // as written, with the line
  int number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++number;
    const size_t hash = line.find('#');
    if (hash != absl::string_view::npos) line = line.substr(0, hash);
    line = absl::StripAsciiWhitespace(line);
    if (line.empty()) continue;
    std::vector<absl::string_view> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    auto fail = [&](absl::string_view why) {
      return absl::InvalidArgumentError(absl::StrCat(source, ":", number, ": ", why));
    };
    const std::string tenant(fields[0]);
    if (tenant != kEveryone && validate_tenant) {
      absl::Status valid = validate_tenant(tenant);
      if (!valid.ok()) return fail(valid.message());
    }
    if (auto it = raw.find(tenant); it != raw.end()) {
      return fail(absl::StrCat("tenant '", tenant, "' is already on line ", it->second.second));
    }
    if (fields.size() < 2) return fail("expected '<tenant|*> key=value ...'");
    TenantQuota q;
    for (size_t i = 1; i < fields.size(); ++i) {
      std::pair<absl::string_view, absl::string_view> kv = absl::StrSplit(fields[i], '=');
      absl::Status st = SetKey(q, kv.first, kv.second);
      if (!st.ok()) return fail(st.message());
    }
    raw[tenant] = {q, number};
  }
  if (auto it = raw.find(kEveryone); it != raw.end()) table.defaults = it->second.first;
  for (const auto& [tenant, q] : raw) {
    if (tenant != kEveryone) table.tenants[tenant] = Merge(table.defaults, q.first);
  }
  return table;
}

absl::StatusOr<std::unique_ptr<Quotas>> Quotas::Open(QuotasOptions options) {
  std::unique_ptr<Quotas> quotas(new Quotas(std::move(options)));
  const int poll_ms = quotas->options_.poll_interval_ms;
  if (poll_ms > 0) {
    quotas->watcher_ = std::make_unique<internal::FileWatcher>(
        quotas->options_.path, poll_ms, [raw = quotas.get()] { raw->Reload().IgnoreError(); });
  }
  RETURN_IF_ERROR(quotas->Load());
  return quotas;
}

absl::Status Quotas::Load() {
  ASSIGN_OR_RETURN(auto text, internal::ReadConfigFile(options_.path, "quotas file"));
  ASSIGN_OR_RETURN(auto table, ParseQuotasFile(text, options_.path, options_.validate_tenant));
  auto fresh = std::make_shared<const QuotaTable>(std::move(table));
  std::lock_guard<std::mutex> lock(mu_);
  table_ = std::move(fresh);
  ++generation_;
  return absl::OkStatus();
}

absl::Status Quotas::Reload() {
  absl::Status st = Load();
  if (st.ok()) {
    util::LogInfo("quotas", "reloaded", {{"path", options_.path}});
  } else {
    util::LogError("quotas", absl::StrCat("keeping the last good quotas: ", st.message()),
                   {{"path", options_.path}});
  }
  if (options_.on_reload) options_.on_reload(st.ok());
  return st;
}

uint64_t Quotas::generation() const {
  std::lock_guard<std::mutex> lock(mu_);
  return generation_;
}

Quotas::Counters& Quotas::CountersFor(const std::string& tenant) {
  return counters_[table_->tenants.count(tenant) ? tenant : std::string(kEveryone)];
}

absl::Status Quotas::Refuse(const std::string& tenant, const char* quota, std::string message) {
  CountersFor(tenant).refusals[quota]++;
  return util::WithReason(absl::ResourceExhaustedError(std::move(message)),
                          util::kReasonQuotaExceeded, {{"quota", quota}, {"tenant", tenant}});
}

absl::Status Quotas::CheckLiveSessions(const std::string& tenant, int64_t live_now) {
  std::lock_guard<std::mutex> lock(mu_);
  const TenantQuota& q = table_->For(tenant);
  if (!q.live_sessions || live_now < *q.live_sessions) return absl::OkStatus();
  return Refuse(
      tenant, kLiveSessions,
      absl::StrCat("tenant '", tenant, "' has ", live_now, " live sessions, at its quota of ",
                   *q.live_sessions, " (", kLiveSessions,
                   "): delete a session first (Checkpoint keeps its state on disk)"));
}

absl::Status Quotas::CheckCheckpointBytes(const std::string& tenant, int64_t on_disk_now,
                                          int64_t adding) {
  std::lock_guard<std::mutex> lock(mu_);
  const TenantQuota& q = table_->For(tenant);
  if (!q.checkpoint_bytes || on_disk_now + adding <= *q.checkpoint_bytes) return absl::OkStatus();
  return Refuse(tenant, kCheckpointBytes,
                absl::StrCat("tenant '", tenant, "' would hold ", on_disk_now + adding,
                             " checkpoint bytes, over its quota of ", *q.checkpoint_bytes, " (",
                             kCheckpointBytes, "): delete checkpoints first"));
}

absl::Status Quotas::TakeIngestTokens(const std::string& tenant, int64_t tokens) {
  const absl::Time now = options_.now();
  std::lock_guard<std::mutex> lock(mu_);
  const TenantQuota& q = table_->For(tenant);
  if (!q.ingest_tokens_per_s) {
    CountersFor(tenant).ingest_tokens_admitted += tokens;
    return absl::OkStatus();
  }
  const double rate = *q.ingest_tokens_per_s, burst = BurstOf(q);
  if (static_cast<double>(tokens) > burst) {
    return Refuse(tenant, kIngestRate,
                  absl::StrCat("a message of ", tokens, " tokens is over tenant '", tenant,
                               "''s ingest burst of ", burst, " tokens (", kIngestBurst,
                               "): send smaller messages"));
  }
  if (buckets_.size() > kMaxIdleBuckets) {
    for (auto it = buckets_.begin(); it != buckets_.end();) {
      const double refilled =
          it->second.tokens + rate * absl::ToDoubleSeconds(now - it->second.updated);
      it = refilled >= burst ? buckets_.erase(it) : std::next(it);
    }
  }
  Bucket& b = buckets_[tenant];
  if (!b.primed) {  // a new bucket starts full
    b = Bucket{burst, now, true};
  } else {
    b.tokens = std::min(burst, b.tokens + rate * absl::ToDoubleSeconds(now - b.updated));
    b.updated = now;
  }
  if (b.tokens >= static_cast<double>(tokens)) {
    b.tokens -= static_cast<double>(tokens);
    CountersFor(tenant).ingest_tokens_admitted += tokens;
    return absl::OkStatus();
  }
  const double wait_s = rate > 0 ? (static_cast<double>(tokens) - b.tokens) / rate : INFINITY;
  const std::string retry = std::isfinite(wait_s)
                                ? absl::StrFormat("retry in %.3f s", wait_s)
                                : std::string("its rate is 0: no ingest is allowed");
  absl::Status refused =
      Refuse(tenant, kIngestRate,
             absl::StrCat("tenant '", tenant, "' is over its ingest quota of ", rate, " tokens/s (",
                          kIngestRate, "; ", static_cast<int64_t>(b.tokens), " of a burst of ",
                          burst, " tokens left, ", tokens, " asked): ", retry));
  if (std::isfinite(wait_s)) {
    const auto ms = static_cast<int64_t>(std::ceil(wait_s * 1000));
    refused.SetPayload(kRetryAfterPayload, absl::Cord(absl::StrCat(ms)));
  }
  return refused;
}

absl::StatusOr<Quotas::StreamLease> Quotas::AcquireStream(const std::string& tenant) {
  std::lock_guard<std::mutex> lock(mu_);
  const TenantQuota& q = table_->For(tenant);
  int64_t& open = streams_open_[tenant];
  if (q.streams && open >= *q.streams) {
    if (open == 0) streams_open_.erase(tenant);
    return Refuse(
        tenant, kStreams,
        absl::StrCat("tenant '", tenant, "' has ", open, " streams open, at its quota of ",
                     *q.streams, " (", kStreams, "): finish one, or retry when one ends"));
  }
  ++open;
  return StreamLease(this, tenant);
}

void Quotas::ReleaseStream(const std::string& tenant) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = streams_open_.find(tenant);
  if (it != streams_open_.end() && --it->second == 0) streams_open_.erase(it);
}

Quotas::StreamLease::StreamLease(StreamLease&& other) noexcept
    : quotas_(other.quotas_), tenant_(std::move(other.tenant_)) {
  other.quotas_ = nullptr;
}

Quotas::StreamLease::~StreamLease() {
  if (quotas_ != nullptr) quotas_->ReleaseStream(tenant_);
}

TenantQuota Quotas::LimitsFor(const std::string& tenant) const {
  std::lock_guard<std::mutex> lock(mu_);
  return table_->For(tenant);
}

bool Quotas::Listed(const std::string& tenant) const {
  std::lock_guard<std::mutex> lock(mu_);
  return table_->tenants.count(tenant) > 0;
}

std::vector<std::string> Quotas::ListedTenants() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::string> out;
  for (const auto& [tenant, q] : table_->tenants) out.push_back(tenant);
  return out;
}

int64_t Quotas::StreamsOpen(const std::string& tenant) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = streams_open_.find(tenant);
  return it == streams_open_.end() ? 0 : it->second;
}

std::vector<QuotaUsage> Quotas::Usage() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<QuotaUsage> out;
  auto add = [&](const std::string& label) {
    QuotaUsage u;
    u.tenant = label;
    if (auto it = counters_.find(label); it != counters_.end()) {
      u.ingest_tokens_admitted = it->second.ingest_tokens_admitted;
      u.refusals = it->second.refusals;
    }
    out.push_back(std::move(u));
  };
  for (const auto& [tenant, q] : table_->tenants) add(tenant);
  add(kEveryone);
  // Open streams are counted exactly per tenant, and grouped by today's listing here, so a
  // reload that lists or unlists a tenant never leaves a count behind.
  for (const auto& [tenant, open] : streams_open_) {
    const bool listed = table_->tenants.count(tenant) > 0;
    for (QuotaUsage& u : out) {
      if (u.tenant == (listed ? tenant : std::string(kEveryone))) u.streams_open += open;
    }
  }
  return out;
}

}  // namespace ttt::auth
