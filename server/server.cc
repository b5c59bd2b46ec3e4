// Server assembly and graceful shutdown (see server.h).
#include "server/server.h"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <utility>
#include <vector>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/resource_quota.h>

#include "absl/strings/str_cat.h"
#include "auth/quotas.h"
#include "coord/etcd_client.h"
#include "engine/compact.h"
#include "engine/model.h"
#include "engine/scheduler.h"
#include "http/http_gateway.h"
#include "server/access_log.h"
#include "server/metrics.h"
#include "server/security.h"
#include "server/service.h"
#include "server/status.h"
#include "session/session.h"
#include "tokenizer/tokenizer.h"
#include "util/log.h"

namespace ttt::server {

namespace {
// The server's own bounds must each admit at least one call (0 would refuse every import, export
// or stream, or leave gRPC no memory).
absl::Status ValidateBounds(const ServerOptions& o) {
  const std::pair<const char*, int64_t> bounds[] = {
      {"--max_concurrent_imports", o.max_concurrent_imports},
      {"--max_concurrent_exports", o.max_concurrent_exports},
      {"--max_concurrent_streams", o.max_concurrent_streams},
      {"--grpc_memory_mb", o.grpc_memory_mb},
      {"--http_max_body_bytes", o.http_max_body_bytes}};
  for (const auto& [flag, value] : bounds) {
    if (value < 1) {
      return absl::InvalidArgumentError(absl::StrCat(flag, " must be >= 1, got ", value));
    }
  }
  if (o.state_cache_mb < 0 || o.state_cache_mb > (int64_t{1} << 40)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--state_cache_mb must be in [0, 2^40] (0: no state cache), got ", o.state_cache_mb));
  }
  return absl::OkStatus();
}

// What compaction does to an idle session's KV cache (--compact_kv_cache, --compact_kv_dtype).
absl::StatusOr<engine::KvCompaction> KvCompactionOf(const ServerOptions& o) {
  const std::optional<engine::KvCompaction> dtype =
      o.compact_kv_dtype == "off" ? std::nullopt : engine::KvCompactionNamed(o.compact_kv_dtype);
  if (!dtype.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--compact_kv_dtype=", o.compact_kv_dtype, ": must be bf16 or int8"));
  }
  return o.compact_kv_cache ? *dtype : engine::KvCompaction::kOff;
}

absl::StatusOr<std::string> ReadPem(const std::string& path, const char* flag) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  if (in) text << in.rdbuf();
  if (!in || text.str().empty()) {
    return absl::NotFoundError(absl::StrCat(flag, "=", path, ": cannot read it (or it is empty)"));
  }
  return text.str();
}

// The metrics endpoint's TLS files (--metrics_tls_cert_file / --metrics_tls_key_file), and its
// /readyz, which answers from `ready`.
absl::StatusOr<HttpExposerOptions> MetricsExposerOptions(
    const ServerOptions& o, std::shared_ptr<const std::atomic<bool>> ready) {
  HttpExposerOptions exposer;
  // Not ready either while the etcd lease may have expired: the proxy routes the sessions'
  // calls to replicas that can take them over.
  exposer.ready = [ready = std::move(ready), lease = o.etcd_lease,
                   margin = absl::Milliseconds(o.lease_margin_ms)] {
    return ready->load() && (lease == nullptr || lease->LeaseLive(margin));
  };
  if (o.metrics_tls_cert_file.empty() != o.metrics_tls_key_file.empty()) {
    return absl::InvalidArgumentError(
        "--metrics_tls_cert_file and --metrics_tls_key_file go together (the certificate and "
        "its key)");
  }
  if (o.metrics_tls_cert_file.empty()) return exposer;
  auto cert = ReadPem(o.metrics_tls_cert_file, "--metrics_tls_cert_file");
  if (!cert.ok()) return cert.status();
  auto key = ReadPem(o.metrics_tls_key_file, "--metrics_tls_key_file");
  if (!key.ok()) return key.status();
  exposer.tls_cert_pem = std::move(*cert);
  exposer.tls_key_pem = std::move(*key);
  return exposer;
}
}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const ServerOptions& options) {
  absl::Status bounds = ValidateBounds(options);
  if (!bounds.ok()) return bounds;
  const absl::StatusOr<engine::KvCompaction> kv_compaction = KvCompactionOf(options);
  if (!kv_compaction.ok()) return kv_compaction.status();
  std::unique_ptr<Server> s(new Server());
  s->options_ = options;
  s->metrics_ = std::make_unique<Metrics>(kVersion);
  // Bad security flags or files fail before the (slow) model load.
  Metrics* metrics = s->metrics_.get();
  auto security = SetUpSecurity(
      options, [metrics](auth::AuthFailure reason) { metrics->RecordAuthFailure(reason); },
      [metrics](const char* file) { metrics->RecordReloadFailure(file); });
  if (!security.ok()) return security.status();
  s->security_ = std::make_unique<Security>(std::move(*security));
  s->metrics_->SetAuthEnabled(s->security_->authorizer->enabled());
  if (!options.quotas_file.empty()) {
    auth::QuotasOptions qo;
    qo.path = options.quotas_file;
    qo.validate_tenant = session::SessionManager::ValidateTenant;
    qo.poll_interval_ms = options.quotas_poll_ms;
    qo.on_reload = [metrics](bool ok) {
      if (!ok) metrics->RecordReloadFailure("quotas");
    };
    auto quotas = auth::Quotas::Open(std::move(qo));
    if (!quotas.ok()) return quotas.status();
    s->quotas_ = std::move(*quotas);
  }
  if (options.metrics_auth) {
    s->metrics_->RequireScrapeAuth(
        [authorizer = s->security_->authorizer](const std::optional<std::string>& header) {
          return authorizer->AuthorizeScrape(header);
        });
  }
  // The metrics endpoint starts first, so a bad --metrics_listen fails before the model loads.
  if (!options.metrics_listen.empty()) {
    auto exposer_options = MetricsExposerOptions(options, s->ready_);
    if (!exposer_options.ok()) return exposer_options.status();
    absl::Status st = s->metrics_->StartExposer(options.metrics_listen, *exposer_options);
    if (!st.ok()) return st;
  }

  engine::SetCpuThreads(options.threads);
  engine::ModelOptions model_options;
  model_options.device = options.device;
  model_options.dtype = options.dtype;
  auto model = engine::Model::Load(options.model_dir, model_options);
  if (!model.ok()) {
    return absl::Status(
        model.status().code(),
        absl::StrCat("loading model from ", options.model_dir, ": ", model.status().message()));
  }
  s->model_ = std::move(*model);

  auto tok = tokenizer::Tokenizer::Load(options.model_dir);
  if (tok.ok()) {
    s->tokenizer_ = std::move(*tok);
  } else if (tok.status().code() != absl::StatusCode::kNotFound) {
    return absl::Status(
        tok.status().code(),
        absl::StrCat("loading the tokenizer of ", options.model_dir, ": ", tok.status().message()));
  }

  s->metrics_->SetBuildInfo(s->model_->fingerprint());

  engine::SchedulerOptions sched;
  sched.max_batch_tokens = options.max_batch_tokens;
  sched.max_decode_batch_tokens = options.max_decode_batch_tokens;
  sched.max_queued_items = options.max_queued_items;
  auto scheduler = engine::Scheduler::Create(s->model_.get(), sched, s->metrics_.get());
  if (!scheduler.ok()) return scheduler.status();
  s->scheduler_ = std::move(*scheduler);

  session::ManagerOptions mo;
  mo.checkpoint_dir = options.checkpoint_dir;
  mo.memory_budget_bytes = options.memory_budget_mb << 20;
  mo.max_sessions = options.max_sessions;
  mo.max_resident_sessions = options.max_resident_sessions;
  mo.state_cache.budget_bytes = options.state_cache_mb << 20;
  mo.state_cache.shared_across_tenants = options.state_cache_shared_across_tenants;
  mo.idle_ttl_seconds = options.idle_ttl_s;
  mo.compact_idle_after_ms = options.compact_idle_s * 1000;
  mo.compact_kv_cache = *kv_compaction;
  mo.reaper_interval_ms = options.reaper_interval_ms;
  mo.cluster.etcd = options.etcd;
  mo.cluster.lease = options.etcd_lease;
  mo.cluster.prefix = options.etcd_prefix;
  mo.cluster.replica_id = options.replica_id;
  mo.cluster.margin = absl::Milliseconds(options.lease_margin_ms);
  mo.cluster.gc_grace = absl::Seconds(options.gc_grace_s);
  mo.cluster.gc_interval = mo.cluster.gc_grace / 2;
  if (s->quotas_ != nullptr && options.etcd != nullptr) {
    mo.cluster.admit_session = [quotas = s->quotas_.get()](const std::string& tenant,
                                                           int64_t live_now) {
      return quotas->CheckLiveSessions(tenant, live_now);
    };
  }
  mo.persist_interval_ms = options.persist_interval_s * 1000;
  auto sessions =
      session::SessionManager::Create(s->model_.get(), s->scheduler_.get(), mo, s->metrics_.get());
  if (!sessions.ok()) return sessions.status();
  s->sessions_ = std::move(*sessions);

  ServiceLimits limits;
  limits.max_concurrent_imports = options.max_concurrent_imports;
  limits.max_concurrent_exports = options.max_concurrent_exports;
  limits.sync_durability = options.sync_durability;
  ServiceSecurity who_may_call;
  who_may_call.authorizer = s->security_->authorizer;
  who_may_call.info.set_tls(s->security_->tls);
  who_may_call.info.set_client_certificates(s->security_->client_certificates);
  who_may_call.info.set_bearer_tokens(s->security_->tokens != nullptr);
  who_may_call.info.set_authenticated(s->security_->authorizer->enabled());
  who_may_call.quotas = s->quotas_.get();
  s->service_ = std::make_unique<TttServiceImpl>(s->sessions_.get(), s->tokenizer_.get(),
                                                 s->metrics_.get(), limits, kVersion,
                                                 options.max_batch_tokens, std::move(who_may_call));

  if (s->quotas_) {
    s->metrics_->SetTenantUsageSource([gate = s->service_->quotas()] { return gate->Usage(); });
  }
  absl::Status grpc_started = s->StartGrpc();
  if (!grpc_started.ok()) return grpc_started;
  absl::Status http_started = s->StartHttp();
  if (!http_started.ok()) return http_started;
  s->gauges_ = std::thread([raw = s.get()] { raw->GaugeLoop(); });
  return s;
}

absl::Status Server::StartGrpc() {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  if (!security_->reflection) DropBuilderPlugins(builder);
  builder.AddListeningPort(options_.listen, security_->credentials, &port_);
  builder.RegisterService(service_.get());
  unknown_methods_ = NewUnknownMethodService();  // every method no service above registers
  builder.RegisterCallbackGenericService(unknown_methods_.get());
  builder.SetMaxReceiveMessageSize(static_cast<int>(options_.max_message_bytes));
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> creators;
  creators.push_back(NewStatusDetailsFactory());            // gRPC's own refusals get ErrorInfo too
  creators.push_back(NewAccessLogFactory(metrics_.get()));  // access lines, in-flight gauge
  builder.experimental().SetInterceptorCreators(std::move(creators));
  // What slow or stalled clients can pin in the transport: every call's buffers come out of one
  // quota, and one connection opens at most so many streams at once.
  grpc::ResourceQuota quota("ttt-serve");
  quota.Resize(static_cast<size_t>(options_.grpc_memory_mb) << 20);
  builder.SetResourceQuota(quota);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                             static_cast<int>(options_.max_concurrent_streams));
  grpc_server_ = builder.BuildAndStart();
  if (grpc_server_ == nullptr || port_ == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot listen on ", options_.listen, " (address in use or invalid?)"));
  }
  if (!options_.health_listen.empty()) {
    auto health = HealthOnlyServer::Start(options_.health_listen);
    if (!health.ok()) return health.status();
    health_server_ = std::move(*health);
  }
  SetServing(true);
  return absl::OkStatus();
}

absl::Status Server::StartHttp() {
  if (options_.http_listen.empty()) return absl::OkStatus();
  http::HttpGatewayOptions o;
  o.listen = options_.http_listen;
  // The model's name is its folder's ("ttt-brown").
  const std::filesystem::path dir = std::filesystem::path(options_.model_dir).lexically_normal();
  o.model_id = (dir.has_filename() ? dir : dir.parent_path()).filename().string();
  o.max_body_bytes = options_.http_max_body_bytes;
  if (!options_.tls_cert_file.empty()) {  // the HTTP port is no weaker than the gRPC port
    auto cert = ReadPem(options_.tls_cert_file, "--tls_cert_file");
    if (!cert.ok()) return cert.status();
    auto key = ReadPem(options_.tls_key_file, "--tls_key_file");
    if (!key.ok()) return key.status();
    o.tls_cert_pem = std::move(*cert);
    o.tls_key_pem = std::move(*key);
  }
  if (tokenizer_ != nullptr) {
    o.count_prompt_tokens =
        [tok = tokenizer_.get()](std::string_view text) -> absl::StatusOr<int64_t> {
      // As Generate encodes a prompt by default (docs/contract.md): special tokens as text.
      auto ids = tok->Encode(text, tokenizer::SpecialTokens::kAsText);
      if (!ids.ok()) return ids.status();
      return static_cast<int64_t>(ids->size());
    };
  }
  auto gateway = http::HttpGateway::Start(std::move(o), InProcessChannel());
  if (!gateway.ok()) return gateway.status();
  http_gateway_ = std::move(*gateway);
  return absl::OkStatus();
}

Server::~Server() { Shutdown(); }

void Server::SetServing(bool serving) {
  ready_->store(serving);
  grpc::Server* health_listener = health_server_ ? health_server_->server() : nullptr;
  for (grpc::Server* server : {grpc_server_.get(), health_listener}) {
    if (server == nullptr) continue;
    if (auto* health = server->GetHealthCheckService()) {
      health->SetServingStatus(serving);
      health->SetServingStatus("", serving);
      health->SetServingStatus(kServiceName, serving);
    }
  }
}

const std::string& Server::model_fingerprint() const { return model_->fingerprint(); }

int Server::health_port() const { return health_server_ ? health_server_->port() : 0; }

int Server::metrics_port() const { return metrics_ ? metrics_->port() : 0; }

int Server::http_port() const { return http_gateway_ ? http_gateway_->port() : 0; }

std::shared_ptr<grpc::Channel> Server::InProcessChannel() {
  return grpc_server_->InProcessChannel(grpc::ChannelArguments());
}

void Server::GaugeLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!shutting_down_) {
    lock.unlock();
    metrics_->SetQueue(scheduler_->queue_depth(), scheduler_->queue_capacity());
    const session::SessionManager::ResidentPool pool = sessions_->resident_pool();
    metrics_->SetSessions(sessions_->session_count(), pool.bytes, pool.held_bytes,
                          sessions_->options().memory_budget_bytes);
    metrics_->SetPool(pool.sessions, pool.bytes, sessions_->resident_session_limit(),
                      sessions_->options().memory_budget_bytes);
    metrics_->SetCompactSessions(pool.compact_sessions);
    metrics_->SetStateCache(sessions_->state_cache_stats());
    lock.lock();
    cv_.wait_for(lock, std::chrono::milliseconds(500));
  }
}

void Server::BeginShutdown() {
  std::lock_guard<std::mutex> lock(mu_);
  // After Shutdown() has begun, grpc_server_'s health service may already be gone.
  if (!shutting_down_) SetServing(false);
}

void Server::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shutting_down_) {
      return;
    }
    shutting_down_ = true;
  }
  cv_.notify_all();
  if (gauges_.joinable()) gauges_.join();
  if (grpc_server_) {
    // Kubernetes stops routing first, then the server stops accepting and drains.
    SetServing(false);
    if (http_gateway_) http_gateway_->StopCalls();  // before: see http/internal/call_gate.h
    grpc_server_->Shutdown(std::chrono::system_clock::now() +
                           std::chrono::seconds(options_.drain_timeout_s));
  }
  health_server_.reset();
  http_gateway_.reset();  // its calls ended with the gRPC server's drain
  if (sessions_ && options_.checkpoint_on_shutdown) {
    absl::Status st = sessions_->PersistAll();
    if (!st.ok()) {
      util::LogError("server", absl::StrCat("persisting sessions: ", st.message()));
    }
  }
  // Scrapes stop reading per-tenant usage from the session manager before it goes.
  if (metrics_) metrics_->SetTenantUsageSource(nullptr);
  // The engine answers what is still queued while the session manager is alive, then goes.
  if (scheduler_) scheduler_->Shutdown();
  sessions_.reset();
  {
    std::lock_guard<std::mutex> lock(mu_);
    shut_down_ = true;
  }
  cv_.notify_all();
}

void Server::Wait() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [this] { return shut_down_; });
}

}  // namespace ttt::server
