// Prometheus metrics of the server (names and labels: docs/contract.md, which dashboards and
// alerts are written against: change both together). Thread-safe: prometheus-cpp's metrics are.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/support/status_code_enum.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "absl/status/status.h"
#include "auth/authorizer.h"
#include "engine/scheduler.h"
#include "server/internal/quota_gate.h"
#include "server/metrics_http.h"
#include "session/session.h"

namespace ttt::server {

class Metrics : public session::SessionListener, public engine::Scheduler::Observer {
 public:
  explicit Metrics(const std::string& version);
  // Publishes tttserve_build_info{version, model_fingerprint} = 1 (once the model is loaded).
  void SetBuildInfo(const std::string& model_fingerprint);
  ~Metrics() override;

  // Serves /metrics on `address` ("host:port" or ":port"; port 0 picks one) in the Prometheus
  // text format, from prometheus-cpp's registry, over libmicrohttpd (server/metrics_http.h says
  // why not prometheus-cpp's civetweb Exposer). FAILED_PRECONDITION when it cannot be bound.
  absl::Status StartExposer(const std::string& address, const HttpExposerOptions& options = {});
  // The bound port (after StartExposer), or 0.
  int port() const;

  // --metrics_auth: each scrape's `Authorization` header value (nullopt: none) goes to `check`;
  // UNAUTHENTICATED answers 401 (with WWW-Authenticate: Bearer), PERMISSION_DENIED 403.
  // REQUIRES: called before StartExposer.
  using ScrapeCheck = std::function<absl::Status(const std::optional<std::string>&)>;
  void RequireScrapeAuth(ScrapeCheck check) { scrape_check_ = std::move(check); }
  // tttserve_auth_failures_total{reason} (every reason exported from the start, at 0).
  void RecordAuthFailure(auth::AuthFailure reason);
  // tttserve_config_reload_failures_total{file}: a changed file (`tokens`, `quotas`, `tls`)
  // that was not applied (the last good one keeps serving). Every file exported at 0.
  void RecordReloadFailure(const char* file);
  // --quotas_file: the rows of the per-tenant families (tttserve_tenant_*,
  // tttserve_quota_rejections_total, tttserve_tenant_quota_limit), read at each scrape. Their
  // label values are the tenants the quotas file lists and "*" (all others summed), so the
  // operator bounds the cardinality. Null: none (Server::Shutdown sets it before the session
  // manager goes; a scrape under way finishes first).
  using TenantUsageSource = std::function<std::vector<internal::TenantUsageRow>()>;
  void SetTenantUsageSource(TenantUsageSource source);
  // The /metrics text: the registry, then the per-tenant families.
  std::string Render();
  // tttserve_auth_enabled: 1 when callers are authenticated, 0 when anyone is any tenant.
  void SetAuthEnabled(bool enabled) { auth_enabled_->Set(enabled ? 1 : 0); }

  void RecordRequest(const std::string& method, grpc::StatusCode code, double seconds);
  // tttserve_requests_in_flight{method}: calls of `method` (access_log.h's MethodLabel) that
  // have started and not yet ended. The caller increments and decrements it.
  prometheus::Gauge* RequestsInFlight(const std::string& method) {
    return &requests_in_flight_->Add({{"method", method}});
  }
  void AddTokensIngested(int64_t n) { tokens_ingested_->Increment(static_cast<double>(n)); }
  void AddTokensGenerated(int64_t n) { tokens_generated_->Increment(static_cast<double>(n)); }
  void AddTokensScored(int64_t n) { tokens_scored_->Increment(static_cast<double>(n)); }
  void ObserveIngestChunk(double s) { ingest_chunk_->Observe(s); }
  void ObserveTimeToFirstToken(double s) { ttft_->Observe(s); }
  void ObserveInterToken(double s) { inter_token_->Observe(s); }
  void SetQueue(int64_t depth, int64_t capacity);
  // Sessions that exist; the budgeted bytes of resident states (SessionManager::resident_pool
  // bytes), the bytes really held (its held_bytes: plus copies in flight), and the budget.
  void SetSessions(int64_t active, int64_t memory_bytes, int64_t held_bytes, int64_t budget_bytes);
  // The resident-session pool: sessions and bytes in it, and its two limits.
  void SetPool(int64_t resident_sessions, int64_t bytes, int64_t limit_sessions,
               int64_t limit_bytes);
  // Resident sessions compact while idle (--compact_idle_s).
  void SetCompactSessions(int64_t sessions) { pool_compact_sessions_->Set(double(sessions)); }
  // The state cache's counters since start (SessionManager::state_cache_stats); the gauge loop
  // calls it, and the counters advance by what changed since its last call.
  void SetStateCache(const session::StateCacheStats& stats);

  // SessionListener
  void OnChunkUpdates(int64_t chunks) override;
  void OnEvicted() override;
  void OnCompacted(int64_t sessions, int64_t bytes_saved) override;
  void OnCheckpointWritten(int64_t bytes, double seconds) override;
  void OnSessionPersisted(double seconds, double lag_seconds) override;
  void OnBlobsCollected(int64_t blobs) override;
  // Scheduler::Observer
  void OnBatch(int64_t tokens, int64_t sequences, double seconds) override;
  void OnQueueWait(const char* kind, double seconds) override;

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  ScrapeCheck scrape_check_;  // set before the exposer starts
  std::map<auth::AuthFailure, prometheus::Counter*> auth_failures_;  // fixed after construction
  std::map<std::string, prometheus::Counter*> reload_failures_;      // fixed after construction
  prometheus::Gauge* auth_enabled_;
  std::unique_ptr<HttpExposer> exposer_;  // declared after registry_: stops serving first
  const std::string version_;
  prometheus::Family<prometheus::Gauge>* build_info_;

  prometheus::Family<prometheus::Counter>* requests_;
  prometheus::Family<prometheus::Histogram>* request_duration_;
  prometheus::Family<prometheus::Gauge>* requests_in_flight_;
  std::mutex mu_;
  std::map<std::string, prometheus::Histogram*> duration_by_method_;  // guarded by mu_

  prometheus::Histogram* ingest_chunk_;
  prometheus::Histogram* ttft_;
  prometheus::Histogram* inter_token_;
  prometheus::Counter* tokens_ingested_;
  prometheus::Counter* tokens_generated_;
  prometheus::Counter* tokens_scored_;
  prometheus::Counter* chunk_updates_;
  prometheus::Histogram* batch_tokens_;
  prometheus::Histogram* batch_sequences_;
  std::map<std::string, prometheus::Histogram*> queue_wait_;  // by kind; fixed after construction
  prometheus::Histogram* persist_duration_;
  prometheus::Histogram* persist_lag_;
  prometheus::Gauge* queue_depth_;
  prometheus::Gauge* queue_capacity_;
  prometheus::Gauge* sessions_active_;
  prometheus::Counter* sessions_evicted_;
  prometheus::Counter* sessions_compacted_;
  prometheus::Counter* compact_bytes_saved_;
  prometheus::Gauge* pool_compact_sessions_;
  prometheus::Counter* blobs_collected_;
  prometheus::Gauge* session_memory_;
  prometheus::Gauge* session_memory_held_;
  prometheus::Gauge* memory_budget_;
  prometheus::Gauge* pool_resident_sessions_;
  prometheus::Gauge* pool_bytes_;
  prometheus::Gauge* pool_limit_sessions_;
  prometheus::Gauge* pool_limit_bytes_;
  struct StateCacheMetrics {
    prometheus::Counter* hits;
    prometheus::Counter* misses;
    prometheus::Counter* tokens_skipped;
    prometheus::Counter* insertions;
    prometheus::Counter* evictions;
    prometheus::Gauge* bytes;
    prometheus::Gauge* entries;
    prometheus::Gauge* budget_bytes;
  };
  StateCacheMetrics state_cache_;  // fixed after construction
  // What the counters above have counted so far.
  struct StateCacheSeen {
    int64_t hits = 0;
    int64_t misses = 0;
    int64_t tokens_skipped = 0;
    int64_t insertions = 0;
    int64_t evictions = 0;
  };
  StateCacheSeen state_cache_seen_;  // guarded by mu_
  prometheus::Counter* checkpoint_bytes_;
  prometheus::Histogram* checkpoint_duration_;

  std::mutex tenant_mu_;            // held while a scrape reads the source
  TenantUsageSource tenant_usage_;  // guarded by tenant_mu_
};

}  // namespace ttt::server
