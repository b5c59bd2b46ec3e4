// The assembled server: model, engine scheduler, session manager, metrics, and the gRPC server
// with the TttService, grpc.health.v1 health and server reflection. Used by the `ttt-serve`
// binary and, in-process, by tests.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"

namespace ttt::auth {
class Quotas;
}  // namespace ttt::auth
namespace ttt::http {
class HttpGateway;
}  // namespace ttt::http
namespace ttt::coord {
class EtcdClient;
class KeptLease;
}  // namespace ttt::coord
namespace ttt::engine {
class Model;
class Scheduler;
}  // namespace ttt::engine
namespace ttt::session {
class SessionManager;
}
namespace ttt::tokenizer {
class Tokenizer;
}

namespace ttt::server {

class HealthOnlyServer;
class Metrics;
struct Security;
class TttServiceImpl;

inline constexpr char kVersion[] = "0.1.0";
inline constexpr char kServiceName[] = "tttserve.v1.TttService";

struct ServerOptions {
  std::string model_dir = "models/ttt-brown";
  std::string listen = "0.0.0.0:50051";         // port 0 picks a free one (see port())
  std::string metrics_listen = "0.0.0.0:9464";  // empty: no metrics endpoint
  std::string checkpoint_dir = "./checkpoints";
  int64_t memory_budget_mb = 2048;
  int64_t max_sessions = 1024;
  int64_t max_resident_sessions = 0;  // 0: max_sessions
  // The cache of adapted states (session::ManagerOptions::StateCache): its budget (0: off) and
  // whether tenants share it.
  int64_t state_cache_mb = 0;
  bool state_cache_shared_across_tenants = false;
  int64_t idle_ttl_s = 3600;
  int64_t compact_idle_s = 0;             // 0: idle sessions stay fp32 until evicted
  bool compact_kv_cache = false;          // compaction also puts the KV cache in compact_kv_dtype
  std::string compact_kv_dtype = "bf16";  // or int8 (a scale per row: a quarter of the bytes)
  std::string device = "cpu";
  std::string dtype = "f32";
  int64_t max_batch_tokens = 512;
  int64_t max_decode_batch_tokens = 64;  // budget of a batch carrying decode steps
  bool checkpoint_on_shutdown = true;
  int64_t drain_timeout_s = 20;
  int threads = 0;  // CPU threads for the engine (0 = all cores)
  int64_t max_queued_items = 4096;
  int64_t max_message_bytes = 64 << 20;  // gRPC receive limit per message
  int64_t reaper_interval_ms = 1000;
  int64_t max_concurrent_imports = 4;    // ImportSession calls at once; more: RESOURCE_EXHAUSTED
  int64_t max_concurrent_exports = 16;   // ExportSession calls at once; more: RESOURCE_EXHAUSTED
  int64_t max_concurrent_streams = 100;  // HTTP/2 streams per client connection
  int64_t grpc_memory_mb = 1024;         // gRPC's resource quota: transport buffers of every call
  // Sessions shared by replicas through etcd (docs/coordination.md; session.h,
  // ManagerOptions::Cluster): the client, this process's lease kept alive (its identity), the
  // deployment's key prefix and this replica's label. Null etcd: one server alone on its folder.
  // While the lease is not certainly live for `lease_margin_ms` more, the process answers for
  // none of its sessions and /readyz answers 503.
  std::shared_ptr<coord::EtcdClient> etcd;
  std::shared_ptr<const coord::KeptLease> etcd_lease;
  std::string etcd_prefix = "/ttt/v1/";
  std::string replica_id;
  int64_t lease_margin_ms = 5000;
  int64_t gc_grace_s = 600;        // unreferenced blobs older than this are garbage
  int64_t persist_interval_s = 5;  // write-behind period (0: only at eviction and shutdown)
  bool sync_durability = false;    // --durability=sync
  // Authentication and TLS (server/security.h, docs/contract.md "Authentication"). All empty:
  // plaintext and no authentication (the tenant is x-tenant-id), with a warning at start.
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_client_ca_file;  // mutual TLS
  std::string tls_crl_file;        // revoked client certificates (PEM CRLs)
  int tls_refresh_s = 5;
  std::string auth_tokens_file;
  std::string health_listen;        // plaintext, grpc.health.v1 only; empty: none
  std::string reflection = "auto";  // auto | on | off
  bool metrics_auth = false;
  // PEM files: serve /metrics over HTTPS (read at start; both or neither).
  std::string metrics_tls_cert_file;
  std::string metrics_tls_key_file;
  // Per-tenant quotas (auth/quotas.h has the format; reloaded on change and SIGHUP). Empty:
  // none.
  std::string quotas_file;
  int quotas_poll_ms = 1000;  // how often the quotas file is checked for changes
  // The HTTP front door (http/http_gateway.h): OpenAI-compatible completions, /healthz,
  // /readyz, over the gRPC service. Empty: none. HTTPS with the gRPC port's certificate.
  std::string http_listen;
  int64_t http_max_body_bytes = int64_t{8} << 20;
};

// Thread-safe.
class Server {
 public:
  // Loads the model (and its tokenizer when the folder has one) and starts serving.
  // Errors: the model's (NOT_FOUND / INVALID_ARGUMENT), the security flags' (INVALID_ARGUMENT,
  // NOT_FOUND for a tokens file), FAILED_PRECONDITION when an address cannot be bound or the
  // checkpoint directory cannot be created.
  static absl::StatusOr<std::unique_ptr<Server>> Start(const ServerOptions& options);
  ~Server();

  int port() const { return port_; }
  int health_port() const;  // 0 without --health_listen
  int metrics_port() const;
  int http_port() const;  // 0 without --http_listen
  std::shared_ptr<grpc::Channel> InProcessChannel();
  session::SessionManager& sessions() { return *sessions_; }
  const engine::Model& model() const { return *model_; }
  const std::string& model_fingerprint() const;
  bool has_tokenizer() const { return tokenizer_ != nullptr; }

  // The first step of a graceful stop (SIGTERM, --shutdown_delay_s): gRPC health turns
  // NOT_SERVING and /readyz answers 503, so load balancers stop sending calls, while the server
  // still accepts and answers every call until Shutdown(). Idempotent.
  void BeginShutdown();
  // Graceful stop: health turns NOT_SERVING (if BeginShutdown() has not), the server stops
  // accepting calls, in-flight calls get until the drain deadline (then are cancelled), live
  // sessions are written to the checkpoint directory when checkpoint_on_shutdown, the engine
  // stops. Idempotent.
  void Shutdown();
  // Blocks until Shutdown() finished.
  void Wait();

 private:
  Server() = default;
  // Builds and starts the gRPC server on options_.listen with the service, health, reflection,
  // and the transport's bounds (resource quota, streams per connection, message size).
  absl::Status StartGrpc();
  // Starts the HTTP front door on options_.http_listen (when set), over InProcessChannel().
  absl::Status StartHttp();
  void GaugeLoop();
  // Health of the gRPC port and the health listener (overall, "" and kServiceName) and /readyz.
  void SetServing(bool serving);

  ServerOptions options_;
  std::unique_ptr<engine::Model> model_;
  std::unique_ptr<tokenizer::Tokenizer> tokenizer_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<engine::Scheduler> scheduler_;
  // --quotas_file; outlives the session manager (its admit_session) and the service.
  std::unique_ptr<auth::Quotas> quotas_;
  std::unique_ptr<session::SessionManager> sessions_;
  std::unique_ptr<TttServiceImpl> service_;
  std::unique_ptr<Security> security_;
  std::unique_ptr<grpc::CallbackGenericService> unknown_methods_;  // outlives grpc_server_
  std::unique_ptr<grpc::Server> grpc_server_;
  std::unique_ptr<HealthOnlyServer> health_server_;  // --health_listen
  std::unique_ptr<http::HttpGateway> http_gateway_;  // --http_listen; a client of grpc_server_
  int port_ = 0;
  // What /readyz answers: true from the start of serving until BeginShutdown(). Shared with the
  // metrics endpoint's thread, which starts before the model loads.
  std::shared_ptr<std::atomic<bool>> ready_ = std::make_shared<std::atomic<bool>>(false);

  std::mutex mu_;
  std::condition_variable cv_;
  bool shutting_down_ = false;  // guarded by mu_
  bool shut_down_ = false;      // guarded by mu_
  std::thread gauges_;
};

}  // namespace ttt::server
