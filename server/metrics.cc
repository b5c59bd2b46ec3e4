// Prometheus metrics (see metrics.h; names from docs/contract.md).
#include "server/metrics.h"

#include <prometheus/text_serializer.h>

#include <algorithm>
#include <chrono>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "server/internal/process_metrics.h"
#include "server/status.h"

namespace ttt::server {
namespace {

using prometheus::Histogram;

Histogram::BucketBoundaries LatencyBuckets() {
  return {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
}
Histogram::BucketBoundaries CountBuckets() {
  return {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192};
}

prometheus::ClientMetric Sample(std::vector<prometheus::ClientMetric::Label> labels,
                                prometheus::MetricType type, double value) {
  prometheus::ClientMetric m;
  m.label = std::move(labels);
  if (type == prometheus::MetricType::Counter) {
    m.counter.value = value;
  } else {
    m.gauge.value = value;
  }
  return m;
}

// The per-tenant families, from the quota gate's rows (one per listed tenant and "*").
std::vector<prometheus::MetricFamily> TenantFamilies(
    const std::vector<internal::TenantUsageRow>& rows) {
  using prometheus::MetricType;
  auto family = [](const char* name, const char* help, MetricType type) {
    prometheus::MetricFamily f;
    f.name = name;
    f.help = help;
    f.type = type;
    return f;
  };
  auto sessions = family("tttserve_tenant_sessions",
                         "Live sessions per tenant (listed in --quotas_file; others as \"*\")",
                         MetricType::Gauge);
  auto bytes = family("tttserve_tenant_checkpoint_bytes",
                      "Bytes of checkpoint files on disk per tenant", MetricType::Gauge);
  auto streams = family("tttserve_tenant_streams",
                        "Ingest/Generate/Export/Import streams open per tenant", MetricType::Gauge);
  auto ingest = family("tttserve_tenant_ingest_tokens_total",
                       "Tokens admitted by the ingest rate quota per tenant", MetricType::Counter);
  auto refused = family("tttserve_quota_rejections_total",
                        "Calls refused by a quota (RESOURCE_EXHAUSTED) per tenant and quota",
                        MetricType::Counter);
  auto limits =
      family("tttserve_tenant_quota_limit",
             "The quota that applies per tenant (unlimited quotas are absent)", MetricType::Gauge);
  static constexpr const char* kQuotas[] = {"live_sessions", "checkpoint_bytes",
                                            "ingest_tokens_per_s", "streams"};
  for (const internal::TenantUsageRow& row : rows) {
    const prometheus::ClientMetric::Label tenant{"tenant", row.tenant};
    sessions.metric.push_back(Sample({tenant}, MetricType::Gauge, row.live_sessions));
    bytes.metric.push_back(Sample({tenant}, MetricType::Gauge, row.checkpoint_bytes));
    streams.metric.push_back(Sample({tenant}, MetricType::Gauge, row.streams_open));
    ingest.metric.push_back(
        Sample({tenant}, MetricType::Counter, row.ingest_tokens_total.value_or(0)));
    for (const char* quota : kQuotas) {
      auto it = row.refusals.find(quota);
      refused.metric.push_back(Sample({tenant, {"quota", quota}}, MetricType::Counter,
                                      it == row.refusals.end() ? 0 : it->second));
    }
    for (const auto& [quota, limit] : auth::LimitsByKey(row.limits)) {
      limits.metric.push_back(Sample({tenant, {"quota", quota}}, MetricType::Gauge, limit));
    }
  }
  return {sessions, bytes, streams, ingest, refused, limits};
}

}  // namespace

Metrics::Metrics(const std::string& version)
    : registry_(std::make_shared<prometheus::Registry>()), version_(version) {
  auto& r = *registry_;
  requests_ = &prometheus::BuildCounter()
                   .Name("tttserve_requests_total")
                   .Help("gRPC requests by method and status code")
                   .Register(r);
  request_duration_ = &prometheus::BuildHistogram()
                           .Name("tttserve_request_duration_seconds")
                           .Help("gRPC request latency by method (whole call, streams included)")
                           .Register(r);
  requests_in_flight_ = &prometheus::BuildGauge()
                             .Name("tttserve_requests_in_flight")
                             .Help("gRPC calls started and not yet ended, by method")
                             .Register(r);
  ingest_chunk_ = &prometheus::BuildHistogram()
                       .Name("tttserve_ingest_chunk_seconds")
                       .Help("Time from receiving an ingest message to its tokens being applied")
                       .Register(r)
                       .Add({}, LatencyBuckets());
  ttft_ = &prometheus::BuildHistogram()
               .Name("tttserve_time_to_first_token_seconds")
               .Help("Generate: time from the request to its first token")
               .Register(r)
               .Add({}, LatencyBuckets());
  inter_token_ = &prometheus::BuildHistogram()
                      .Name("tttserve_inter_token_seconds")
                      .Help("Generate: time between consecutive tokens")
                      .Register(r)
                      .Add({}, LatencyBuckets());
  tokens_ingested_ = &prometheus::BuildCounter()
                          .Name("tttserve_tokens_ingested_total")
                          .Help("Tokens applied to sessions by Ingest")
                          .Register(r)
                          .Add({});
  tokens_generated_ = &prometheus::BuildCounter()
                           .Name("tttserve_tokens_generated_total")
                           .Help("Tokens produced by Generate")
                           .Register(r)
                           .Add({});
  tokens_scored_ = &prometheus::BuildCounter()
                        .Name("tttserve_tokens_scored_total")
                        .Help("Tokens scored by Score")
                        .Register(r)
                        .Add({});
  chunk_updates_ = &prometheus::BuildCounter()
                        .Name("tttserve_ttt_chunk_updates_total")
                        .Help("TTT chunk updates folded into sessions' fast weights")
                        .Register(r)
                        .Add({});
  batch_tokens_ = &prometheus::BuildHistogram()
                       .Name("tttserve_batch_tokens")
                       .Help("Tokens per engine batch")
                       .Register(r)
                       .Add({}, CountBuckets());
  batch_sequences_ = &prometheus::BuildHistogram()
                          .Name("tttserve_batch_sequences")
                          .Help("Sequences per engine batch")
                          .Register(r)
                          .Add({}, CountBuckets());
  auto& queue_wait = prometheus::BuildHistogram()
                         .Name("tttserve_queue_wait_seconds")
                         .Help(
                             "Time work waited in the engine queue, from submission to the "
                             "engine thread taking it up, by kind (task, ingest, prompt, "
                             "decode: one per generated token)")
                         .Register(r);
  for (const char* kind : engine::Scheduler::kQueueWaitKinds) {
    queue_wait_[kind] = &queue_wait.Add({{"kind", kind}}, LatencyBuckets());
  }
  queue_depth_ = &prometheus::BuildGauge()
                      .Name("tttserve_queue_depth")
                      .Help("Work items queued for the engine")
                      .Register(r)
                      .Add({});
  queue_capacity_ = &prometheus::BuildGauge()
                         .Name("tttserve_queue_capacity")
                         .Help("Engine queue capacity (RESOURCE_EXHAUSTED beyond)")
                         .Register(r)
                         .Add({});
  sessions_active_ = &prometheus::BuildGauge()
                          .Name("tttserve_sessions_active")
                          .Help("Sessions that exist (resident or evicted to disk)")
                          .Register(r)
                          .Add({});
  sessions_evicted_ = &prometheus::BuildCounter()
                           .Name("tttserve_sessions_evicted_total")
                           .Help("Idle sessions evicted to disk under the memory budget")
                           .Register(r)
                           .Add({});
  sessions_compacted_ =
      &prometheus::BuildCounter()
           .Name("tttserve_sessions_compacted_total")
           .Help("Idle sessions whose fast weights went to bf16 (--compact_idle_s)")
           .Register(r)
           .Add({});
  compact_bytes_saved_ = &prometheus::BuildCounter()
                              .Name("tttserve_compact_bytes_saved_total")
                              .Help("Bytes freed by compacting idle sessions (--compact_idle_s)")
                              .Register(r)
                              .Add({});
  blobs_collected_ = &prometheus::BuildCounter()
                          .Name("tttserve_session_blobs_collected_total")
                          .Help(
                              "Unreferenced session state blobs deleted by this replica's "
                              "garbage sweeps (--etcd_endpoints; crash leftovers)")
                          .Register(r)
                          .Add({});
  session_memory_ = &prometheus::BuildGauge()
                         .Name("tttserve_session_memory_bytes")
                         .Help(
                             "Bytes of resident sessions' states, as budgeted against "
                             "--memory_budget_mb (whole tensor buffers)")
                         .Register(r)
                         .Add({});
  session_memory_held_ = &prometheus::BuildGauge()
                              .Name("tttserve_session_memory_held_bytes")
                              .Help(
                                  "Bytes of session state really held: the resident states plus "
                                  "the copies Score and non-committing Generate run on")
                              .Register(r)
                              .Add({});
  memory_budget_ = &prometheus::BuildGauge()
                        .Name("tttserve_memory_budget_bytes")
                        .Help("Session memory budget (--memory_budget_mb)")
                        .Register(r)
                        .Add({});
  auto pool_gauge = [&r](const char* name, const char* help) {
    return &prometheus::BuildGauge().Name(name).Help(help).Register(r).Add({});
  };
  pool_resident_sessions_ =
      pool_gauge("tttserve_pool_resident_sessions", "Sessions whose state is in memory");
  pool_bytes_ =
      pool_gauge("tttserve_pool_bytes", "Bytes the resident sessions' states hold (whole buffers)");
  pool_limit_sessions_ = pool_gauge(
      "tttserve_pool_limit_sessions",
      "Resident sessions before idle ones are evicted to disk (--max_resident_sessions)");
  pool_compact_sessions_ = pool_gauge("tttserve_pool_compact_sessions",
                                      "Resident sessions compact while idle (--compact_idle_s)");
  pool_limit_bytes_ =
      pool_gauge("tttserve_pool_limit_bytes",
                 "Resident bytes before idle sessions are evicted to disk (--memory_budget_mb)");
  auto cache_counter = [&r](const char* name, const char* help) {
    return &prometheus::BuildCounter().Name(name).Help(help).Register(r).Add({});
  };
  state_cache_.hits =
      cache_counter("tttserve_state_cache_hits_total",
                    "Ingests that adopted a cached adapted state (--state_cache_mb)");
  state_cache_.misses =
      cache_counter("tttserve_state_cache_misses_total",
                    "Ingests reaching a chunk boundary that found no cached state on their path");
  state_cache_.tokens_skipped =
      cache_counter("tttserve_state_cache_tokens_skipped_total",
                    "Tokens applied by adopting a cached state instead of computing them");
  state_cache_.insertions =
      cache_counter("tttserve_state_cache_insertions_total", "States stored in the state cache");
  state_cache_.evictions =
      cache_counter("tttserve_state_cache_evictions_total",
                    "Cached states dropped, least recently used first, to stay within the budget");
  state_cache_.bytes = pool_gauge(
      "tttserve_state_cache_bytes",
      "Bytes the cached states hold (distinct buffers, shared ones once, and their log-probs)");
  state_cache_.entries = pool_gauge("tttserve_state_cache_entries", "States in the state cache");
  state_cache_.budget_bytes = pool_gauge("tttserve_state_cache_budget_bytes",
                                         "The state cache's budget (--state_cache_mb)");
  checkpoint_bytes_ = &prometheus::BuildCounter()
                           .Name("tttserve_checkpoint_bytes_total")
                           .Help("Bytes written to checkpoint files")
                           .Register(r)
                           .Add({});
  persist_duration_ = &prometheus::BuildHistogram()
                           .Name("tttserve_session_persist_seconds")
                           .Help("Time to write one session's state to the session store")
                           .Register(r)
                           .Add({}, LatencyBuckets());
  persist_lag_ = &prometheus::BuildHistogram()
                      .Name("tttserve_session_persist_lag_seconds")
                      .Help(
                          "Age of the store copy a session write replaced: at most what a "
                          "replica crash just before it would have lost")
                      .Register(r)
                      .Add({}, LatencyBuckets());
  checkpoint_duration_ = &prometheus::BuildHistogram()
                              .Name("tttserve_checkpoint_duration_seconds")
                              .Help("Time to write one checkpoint")
                              .Register(r)
                              .Add({}, LatencyBuckets());
  prometheus::BuildGauge()
      .Name("tttserve_process_start_time_seconds")
      .Help("Start time of the process since the Unix epoch in seconds")
      .Register(r)
      .Add({})
      .Set(std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch())
               .count());
  build_info_ = &prometheus::BuildGauge()
                     .Name("tttserve_build_info")
                     .Help("Constant 1, labelled with the server version and the model fingerprint")
                     .Register(r);
  auto& failures = prometheus::BuildCounter()
                       .Name("tttserve_auth_failures_total")
                       .Help("Calls and scrapes refused by authentication or authorization")
                       .Register(r);
  for (auth::AuthFailure reason : auth::kAllAuthFailures) {
    auth_failures_[reason] = &failures.Add({{"reason", auth::AuthFailureName(reason)}});
  }
  auto& reloads = prometheus::BuildCounter()
                      .Name("tttserve_config_reload_failures_total")
                      .Help(
                          "Changed configuration files that were not applied (the last good "
                          "version keeps serving)")
                      .Register(r);
  for (const char* file : {"tokens", "quotas", "tls"}) {
    reload_failures_[file] = &reloads.Add({{"file", file}});
  }
  auth_enabled_ = &prometheus::BuildGauge()
                       .Name("tttserve_auth_enabled")
                       .Help("1 when callers are authenticated; 0: anyone is any tenant")
                       .Register(r)
                       .Add({});
}

void Metrics::RecordAuthFailure(auth::AuthFailure reason) {
  auth_failures_.at(reason)->Increment();
}

void Metrics::RecordReloadFailure(const char* file) { reload_failures_.at(file)->Increment(); }

void Metrics::SetBuildInfo(const std::string& model_fingerprint) {
  build_info_->Add({{"version", version_}, {"model_fingerprint", model_fingerprint}}).Set(1);
}

Metrics::~Metrics() { exposer_.reset(); }  // no scrape may outlive the registry

absl::Status Metrics::StartExposer(const std::string& address, const HttpExposerOptions& options) {
  HttpExposerOptions with_auth = options;
  if (scrape_check_) with_auth.authorize = scrape_check_;
  auto exposer = HttpExposer::Start(
      address, [this] { return Render(); }, with_auth);
  if (!exposer.ok()) return exposer.status();
  exposer_ = std::move(*exposer);
  return absl::OkStatus();
}

void Metrics::SetTenantUsageSource(TenantUsageSource source) {
  std::lock_guard<std::mutex> lock(tenant_mu_);
  tenant_usage_ = std::move(source);
}

std::string Metrics::Render() {
  std::vector<prometheus::MetricFamily> families = registry_->Collect();
  auto process = internal::ReadProcessStats();  // unreadable /proc: the families are left out
  if (process.ok()) {
    for (auto& family : internal::ProcessFamilies(*process)) families.push_back(std::move(family));
  }
  std::lock_guard<std::mutex> lock(tenant_mu_);
  if (tenant_usage_) {
    for (auto& family : TenantFamilies(tenant_usage_())) families.push_back(std::move(family));
  }
  return prometheus::TextSerializer().Serialize(families);
}

int Metrics::port() const { return exposer_ == nullptr ? 0 : exposer_->port(); }

void Metrics::RecordRequest(const std::string& method, grpc::StatusCode code, double seconds) {
  requests_->Add({{"method", method}, {"code", GrpcCodeName(code)}}).Increment();
  Histogram* h;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto& slot = duration_by_method_[method];
    if (slot == nullptr) slot = &request_duration_->Add({{"method", method}}, LatencyBuckets());
    h = slot;
  }
  h->Observe(seconds);
}

void Metrics::SetQueue(int64_t depth, int64_t capacity) {
  queue_depth_->Set(static_cast<double>(depth));
  queue_capacity_->Set(static_cast<double>(capacity));
}

void Metrics::SetSessions(int64_t active, int64_t memory_bytes, int64_t held_bytes,
                          int64_t budget_bytes) {
  sessions_active_->Set(static_cast<double>(active));
  session_memory_->Set(static_cast<double>(memory_bytes));
  session_memory_held_->Set(static_cast<double>(held_bytes));
  memory_budget_->Set(static_cast<double>(budget_bytes));
}

void Metrics::SetPool(int64_t resident_sessions, int64_t bytes, int64_t limit_sessions,
                      int64_t limit_bytes) {
  pool_resident_sessions_->Set(static_cast<double>(resident_sessions));
  pool_bytes_->Set(static_cast<double>(bytes));
  pool_limit_sessions_->Set(static_cast<double>(limit_sessions));
  pool_limit_bytes_->Set(static_cast<double>(limit_bytes));
}

void Metrics::SetStateCache(const session::StateCacheStats& stats) {
  std::lock_guard<std::mutex> lock(mu_);
  // The manager counts since start; Prometheus counters only go up by increments.
  auto advance = [](prometheus::Counter* counter, int64_t now, int64_t& seen) {
    if (now > seen) counter->Increment(static_cast<double>(now - seen));
    seen = std::max(seen, now);
  };
  StateCacheSeen& seen = state_cache_seen_;
  advance(state_cache_.hits, stats.hits, seen.hits);
  advance(state_cache_.misses, stats.misses, seen.misses);
  advance(state_cache_.tokens_skipped, stats.tokens_skipped, seen.tokens_skipped);
  advance(state_cache_.insertions, stats.insertions, seen.insertions);
  advance(state_cache_.evictions, stats.evictions, seen.evictions);
  state_cache_.bytes->Set(static_cast<double>(stats.bytes));
  state_cache_.entries->Set(static_cast<double>(stats.entries));
  state_cache_.budget_bytes->Set(static_cast<double>(stats.budget_bytes));
}

void Metrics::OnChunkUpdates(int64_t chunks) {
  chunk_updates_->Increment(static_cast<double>(chunks));
}
void Metrics::OnEvicted() { sessions_evicted_->Increment(); }

void Metrics::OnCompacted(int64_t sessions, int64_t bytes_saved) {
  sessions_compacted_->Increment(static_cast<double>(sessions));
  compact_bytes_saved_->Increment(static_cast<double>(bytes_saved));
}
void Metrics::OnBlobsCollected(int64_t blobs) {
  blobs_collected_->Increment(static_cast<double>(blobs));
}
void Metrics::OnCheckpointWritten(int64_t bytes, double seconds) {
  checkpoint_bytes_->Increment(static_cast<double>(bytes));
  checkpoint_duration_->Observe(seconds);
}
void Metrics::OnSessionPersisted(double seconds, double lag_seconds) {
  persist_duration_->Observe(seconds);
  persist_lag_->Observe(lag_seconds);
}
void Metrics::OnQueueWait(const char* kind, double seconds) {
  queue_wait_.at(kind)->Observe(seconds);
}
void Metrics::OnBatch(int64_t tokens, int64_t sequences, double seconds) {
  batch_tokens_->Observe(static_cast<double>(tokens));
  batch_sequences_->Observe(static_cast<double>(sequences));
}

}  // namespace ttt::server
