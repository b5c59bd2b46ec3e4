// ttt-serve: the gRPC session server. Flags: docs/contract.md. SIGTERM/SIGINT stop gracefully:
// not ready at once (health NOT_SERVING, /readyz 503) while still taking calls for
// --shutdown_delay_s, so load balancers move away first; then drain and persist. A second signal
// cuts the delay short.
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "auth/token_store.h"
#include "coord/etcd_client.h"
#include "engine/sequence.h"
#include "server/access_log.h"
#include "server/server.h"
#include "util/command_line.h"
#include "util/log.h"
#include "util/malloc_tuning.h"

namespace {
std::string DefaultModelDir() {
  const std::filesystem::path image = "/opt/ttt-serve/models/ttt-brown";
  if (std::filesystem::exists(image)) return image.string();
  return (std::filesystem::path(TTT_SOURCE_DIR) / "models" / "ttt-brown").string();
}
}  // namespace

ABSL_FLAG(std::string, model, DefaultModelDir(), "Hugging Face model folder");
ABSL_FLAG(std::string, listen, "0.0.0.0:50051", "gRPC address");
ABSL_FLAG(std::string, metrics_listen, "0.0.0.0:9464",
          "Prometheus HTTP address (/metrics); empty disables it");
ABSL_FLAG(std::string, checkpoint_dir, "./checkpoints", "checkpoint files");
ABSL_FLAG(int64_t, memory_budget_mb, 2048,
          "live session memory before idle sessions are evicted to disk");
ABSL_FLAG(int64_t, max_sessions, 1024, "sessions per server");
ABSL_FLAG(int64_t, max_resident_sessions, 0,
          "sessions held in memory (0: --max_sessions); past it (or --memory_budget_mb) the least "
          "recently used idle sessions are evicted to disk");
ABSL_FLAG(int64_t, state_cache_mb, 0,
          "memory for the cache of adapted states (0: off): each Ingest caches the state at the "
          "last chunk boundary it reaches, and an Ingest that reads the same tokens from the same "
          "starting state adopts it instead of computing it; least recently used entries go first");
ABSL_FLAG(bool, state_cache_shared_across_tenants, false,
          "one state cache for all tenants instead of one per tenant (a tenant can then tell from "
          "an Ingest's speed what another has read: only for tenants that trust each other)");
ABSL_FLAG(int64_t, idle_ttl_s, 3600, "idle sessions are removed after this");
ABSL_FLAG(int64_t, compact_idle_s, 0,
          "a resident session idle this long keeps its fast weights in bf16 (half the bytes) until "
          "its next use restores fp32; the tier before eviction to disk (0: off)");
ABSL_FLAG(bool, compact_kv_cache, false,
          "with --compact_idle_s, an idle session's KV cache is compacted too "
          "(--compact_kv_dtype)");
ABSL_FLAG(std::string, compact_kv_dtype, "bf16",
          "what --compact_kv_cache stores an idle session's KV cache as: bf16 (half the bytes) or "
          "int8 with one fp32 scale per row (a quarter; each value within half its row's scale)");
ABSL_FLAG(std::string, device, "cpu", "cpu or cuda[:N]");
ABSL_FLAG(std::string, dtype, "f32", "f32 or bf16");
ABSL_FLAG(int64_t, max_batch_tokens, 512,
          "token budget of one engine step (a step carrying decodes, prompts or scores keeps to "
          "--max_decode_batch_tokens for the ingests beside them)");
ABSL_FLAG(int64_t, max_decode_batch_tokens, 64,
          "token budget of an engine batch that carries Generate decode steps: every ready "
          "decode first, then pieces of ingests up to this in all, at least a quarter of it "
          "(bounds inter-token latency while long ingests run)");
ABSL_FLAG(bool, checkpoint_on_shutdown, true, "checkpoint live sessions on SIGTERM");
ABSL_FLAG(bool, fork_increments, true,
          "a fork that reads more keeps low-rank increments on the delta it shares with its parent "
          "(it grows by its own chunk updates; its checkpoints and exports hold them and restore "
          "bit for bit); false: it copies the delta at its first write");
ABSL_FLAG(int64_t, shutdown_delay_s, 5,
          "on SIGTERM, report NOT_SERVING (gRPC health, /readyz) but keep accepting calls this "
          "long, so load balancers stop routing here before the listener closes; then drain");
ABSL_FLAG(int64_t, drain_timeout_s, 20,
          "grace for in-flight calls on SIGTERM, after --shutdown_delay_s");
ABSL_FLAG(int32_t, threads, 0,
          "CPU threads for the engine; 0 = the CPUs this process may use: its CPU affinity "
          "(taskset, cpuset) capped by its cgroup's CPU quota (a container's CPU limit, cgroup v2 "
          "cpu.max or v1 cfs quota) rounded up, at least 1; never the node's core count");
ABSL_FLAG(int64_t, max_concurrent_imports, 4,
          "ImportSession calls at once; more get RESOURCE_EXHAUSTED");
ABSL_FLAG(int64_t, max_concurrent_exports, 16,
          "ExportSession calls at once; more get RESOURCE_EXHAUSTED");
ABSL_FLAG(std::string, replica_id, "",
          "with --etcd_endpoints: this process's label (e.g. the pod name), unique among live "
          "processes; the process refuses to start while another holds it");
ABSL_FLAG(int64_t, lease_s, 15,
          "with --etcd_endpoints: the TTL of this process's etcd lease; its sessions move to "
          "other replicas this long after it dies or loses etcd");
ABSL_FLAG(int64_t, lease_margin_s, 0,
          "with --etcd_endpoints: stop answering for this process's sessions this long before "
          "its lease may expire (0: a third of --lease_s)");
ABSL_FLAG(int64_t, gc_grace_s, 600,
          "with --etcd_endpoints: the garbage sweep deletes unreferenced state blobs written "
          "longer ago than this (at least twice --lease_s; more than the volume's clock skew)");
ABSL_FLAG(std::vector<std::string>, etcd_endpoints, {},
          "etcd client URLs, comma-separated (host:port, http://host:port or https://host:port): "
          "replicas then share sessions through etcd, each session owned by one process at a "
          "time and committed as a blob in --checkpoint_dir, a volume every replica mounts "
          "(docs/coordination.md). Empty: one server alone on its folder");
ABSL_FLAG(std::string, etcd_prefix, "/ttt/v1/", "prefix of this deployment's keys in etcd");
ABSL_FLAG(std::string, etcd_ca_file, "",
          "https:// --etcd_endpoints: PEM CA bundle that signed etcd's certificates (empty: the "
          "system's roots)");
ABSL_FLAG(std::string, etcd_cert_file, "",
          "https:// --etcd_endpoints: PEM client certificate for etcd's --client-cert-auth");
ABSL_FLAG(std::string, etcd_key_file, "",
          "PEM private key of --etcd_cert_file. The three etcd TLS files are read again every "
          "--tls_refresh_s: rotated files apply to new connections without a restart");
ABSL_FLAG(int64_t, persist_interval_s, 5,
          "write-behind: a changed session is written to the store at most this long after its "
          "last copy (0 = only at eviction and shutdown)");
ABSL_FLAG(std::string, durability, "write_behind",
          "write_behind, or sync: acknowledge an Ingest flush / end_of_document only once the "
          "session's state is in the store");
ABSL_FLAG(int64_t, max_concurrent_streams, 100, "HTTP/2 streams per client connection");
ABSL_FLAG(int64_t, grpc_memory_mb, 1024,
          "gRPC resource quota: memory for the transport buffers of all calls");
ABSL_FLAG(std::string, tls_cert_file, "", "PEM certificate chain: serve gRPC over TLS");
ABSL_FLAG(std::string, tls_key_file, "", "PEM private key of --tls_cert_file");
ABSL_FLAG(std::string, tls_client_ca_file, "",
          "PEM CA bundle: mutual TLS (clients must present a certificate it signed, whose "
          "identity has a line in --auth_tokens_file)");
ABSL_FLAG(std::string, tls_crl_file, "",
          "PEM certificate revocation lists of the client CAs: a revoked client certificate is "
          "refused on its next call (needs --tls_client_ca_file)");
ABSL_FLAG(int32_t, tls_refresh_s, 5, "how often the TLS files are re-read");
ABSL_FLAG(std::string, auth_tokens_file, "",
          "credentials: '<tenant> <sha256-hex-of-token | cn:<cert CN> | uri:<cert URI SAN>> "
          "[scopes]' per line; reloaded on change and SIGHUP");
ABSL_FLAG(std::string, health_listen, "",
          "plaintext address serving only grpc.health.v1 (for Kubernetes probes); empty: none");
ABSL_FLAG(std::string, reflection, "auto",
          "gRPC reflection: on (behind authentication when configured), off, or auto");
ABSL_FLAG(bool, metrics_auth, false,
          "/metrics wants a bearer token of scope 'metrics' or 'admin' (needs "
          "--auth_tokens_file)");

ABSL_FLAG(std::string, metrics_tls_cert_file, "",
          "PEM certificate chain: serve /metrics over HTTPS (read at start)");
ABSL_FLAG(std::string, metrics_tls_key_file, "", "PEM private key of --metrics_tls_cert_file");
ABSL_FLAG(std::string, quotas_file, "",
          "per-tenant quotas: '<tenant|*> live_sessions=N checkpoint_bytes=N "
          "ingest_tokens_per_s=R ingest_burst=N streams=N' per line; reloaded on change and "
          "SIGHUP (a bad file keeps the last good one)");
ABSL_FLAG(std::string, http_listen, "",
          "HTTP address of the OpenAI-compatible API (/v1/completions, /v1/models) and "
          "/healthz, /readyz, served through the gRPC service (HTTPS with --tls_cert_file); "
          "empty: none");
ABSL_FLAG(int64_t, http_max_body_bytes, int64_t{8} << 20,
          "largest HTTP request body, larger ones get 413; for an NDJSON :ingest (streamed into "
          "the call, any length) the largest line, and the most answer lines kept");

ABSL_FLAG(std::string, log_format, "text",
          "text (a line per event: time, level, component, message, key=value fields) or json "
          "(one object per line); every call gets an access line (docs/operations.md)");
ABSL_FLAG(std::string, log_level, "info",
          "debug, info, warning or error: the least severe lines written (debug adds health "
          "checks' access lines and gRPC's debug lines)");

namespace {

// With --etcd_endpoints: the etcd client and the process's lease, kept alive, with --replica_id
// claimed under it (docs/coordination.md, "Process identity"). A previous incarnation that died
// frees the label when etcd expires its lease, so the claim waits one lease and a second before it
// gives up. Null members without --etcd_endpoints.
struct Cluster {
  std::shared_ptr<ttt::coord::EtcdClient> etcd;
  std::shared_ptr<ttt::coord::KeptLease> lease;
};

absl::StatusOr<Cluster> JoinCluster(ttt::coord::EtcdClientOptions options,
                                    const std::string& prefix, const std::string& replica_id,
                                    int64_t lease_s) {
  if (options.endpoints.empty()) return Cluster{};
  if (replica_id.empty()) {
    return absl::InvalidArgumentError(
        "--etcd_endpoints needs --replica_id: this process's label (e.g. the pod name), unique "
        "among live processes");
  }
  auto client = ttt::coord::EtcdClient::Create(options);
  if (!client.ok()) return client.status();
  auto lease = (*client)->GrantKept(absl::Seconds(lease_s));
  if (!lease.ok()) return lease.status();
  char host[256] = "?";
  gethostname(host, sizeof(host) - 1);
  const std::string key = absl::StrCat(prefix, "replicas/", replica_id);
  auto claimed = (*client)->Claim(key, absl::StrCat("pid ", getpid(), " on ", host), (*lease)->id(),
                                  absl::Seconds(lease_s + 1));
  if (absl::IsFailedPrecondition(claimed.status())) {
    return absl::FailedPreconditionError(
        absl::StrCat("another live process holds --replica_id ", replica_id,
                     "; give each process its own: ", claimed.status().message()));
  }
  if (!claimed.ok()) return claimed.status();
  ttt::util::LogInfo("ttt-serve", absl::StrFormat("replica %s holds etcd lease %lld (key %s)",
                                                  replica_id, (*lease)->id(), key));
  return Cluster{std::move(*client), std::move(*lease)};
}

// Waits for one of `signals`, or until etcd has expired `lease` (non-null): a process whose
// sessions other replicas may own by now stops, and its orchestrator starts it again with a new
// lease. Returns the signal, or 0 when the lease was lost.
int AwaitSignalOrLostLease(const sigset_t& signals, const ttt::coord::KeptLease* lease) {
  for (;;) {
    timespec second{1, 0};
    const int sig = sigtimedwait(&signals, nullptr, lease != nullptr ? &second : nullptr);
    if (sig > 0) return sig;
    if (lease != nullptr && lease->Lost()) return 0;
  }
}

// --log_format and --log_level, then gRPC's own lines into the same log. False (after saying
// why) for a bad value.
bool SetUpLog() {
  auto format = ttt::util::ParseLogFormat(absl::GetFlag(FLAGS_log_format));
  auto level = ttt::util::ParseLogLevel(absl::GetFlag(FLAGS_log_level));
  for (const absl::Status& st : {format.status(), level.status()}) {
    if (!st.ok()) {
      std::fprintf(stderr, "ttt-serve: --log_format/--log_level: %s\n",
                   std::string(st.message()).c_str());
      return false;
    }
  }
  ttt::util::ConfigureLog({*format, *level});
  ttt::server::RouteGrpcLogsToLog();
  return true;
}

// Lines of the process itself, under the component "ttt-serve".
void Say(ttt::util::LogLevel level, const std::string& message,
         std::initializer_list<ttt::util::LogField> fields = {}) {
  ttt::util::Log(level, "ttt-serve", message, fields);
}
constexpr auto kInfo = ttt::util::LogLevel::kInfo;
constexpr auto kError = ttt::util::LogLevel::kError;

// Waits up to `seconds` for another of `signals`; true when one came.
bool AwaitSignal(const sigset_t& signals, int64_t seconds) {
  timespec until{};
  clock_gettime(CLOCK_MONOTONIC, &until);
  until.tv_sec += seconds;
  for (;;) {
    timespec now{};
    clock_gettime(CLOCK_MONOTONIC, &now);
    timespec left{until.tv_sec - now.tv_sec, until.tv_nsec - now.tv_nsec};
    if (left.tv_nsec < 0) {
      left.tv_nsec += 1000000000L;
      --left.tv_sec;
    }
    if (left.tv_sec < 0) return false;
    if (sigtimedwait(&signals, nullptr, &left) >= 0) return true;
    if (errno == EAGAIN) return false;  // EINTR (another signal, e.g. SIGHUP): wait the rest
  }
}
}  // namespace

int main(int argc, char** argv) {
  // Signals are taken synchronously by this thread (sigwait). Blocked first of all: every thread
  // inherits the mask, and one started without it (gRPC's, once its log is routed) would let a
  // SIGTERM that comes during start-up kill the process instead of draining it.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  ttt::util::TuneMallocForTensors();
  absl::SetProgramUsageMessage("ttt-serve: gRPC model server with In-Place Test-Time Training");
  ttt::util::ParseFlagsWithHelp(argc, argv, "server/main.cc", [] {
    return absl::StrCat("ttt-serve ", ttt::server::kVersion, " (", TTT_GIT_DESCRIBE, ")\n");
  });
  if (!SetUpLog()) return 2;

  ttt::server::ServerOptions o;
  o.model_dir = absl::GetFlag(FLAGS_model);
  o.listen = absl::GetFlag(FLAGS_listen);
  o.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  o.checkpoint_dir = absl::GetFlag(FLAGS_checkpoint_dir);
  o.memory_budget_mb = absl::GetFlag(FLAGS_memory_budget_mb);
  o.max_sessions = absl::GetFlag(FLAGS_max_sessions);
  o.max_resident_sessions = absl::GetFlag(FLAGS_max_resident_sessions);
  o.state_cache_mb = absl::GetFlag(FLAGS_state_cache_mb);
  o.state_cache_shared_across_tenants = absl::GetFlag(FLAGS_state_cache_shared_across_tenants);
  o.idle_ttl_s = absl::GetFlag(FLAGS_idle_ttl_s);
  o.compact_idle_s = absl::GetFlag(FLAGS_compact_idle_s);
  o.compact_kv_cache = absl::GetFlag(FLAGS_compact_kv_cache);
  o.compact_kv_dtype = absl::GetFlag(FLAGS_compact_kv_dtype);
  o.device = absl::GetFlag(FLAGS_device);
  o.dtype = absl::GetFlag(FLAGS_dtype);
  o.max_batch_tokens = absl::GetFlag(FLAGS_max_batch_tokens);
  o.max_decode_batch_tokens = absl::GetFlag(FLAGS_max_decode_batch_tokens);
  o.checkpoint_on_shutdown = absl::GetFlag(FLAGS_checkpoint_on_shutdown);
  o.drain_timeout_s = absl::GetFlag(FLAGS_drain_timeout_s);
  o.threads = absl::GetFlag(FLAGS_threads);
  ttt::engine::SetForkIncrements(absl::GetFlag(FLAGS_fork_increments));
  o.max_concurrent_imports = absl::GetFlag(FLAGS_max_concurrent_imports);
  o.max_concurrent_exports = absl::GetFlag(FLAGS_max_concurrent_exports);
  o.max_concurrent_streams = absl::GetFlag(FLAGS_max_concurrent_streams);
  o.grpc_memory_mb = absl::GetFlag(FLAGS_grpc_memory_mb);
  o.replica_id = absl::GetFlag(FLAGS_replica_id);
  const int64_t lease_s = absl::GetFlag(FLAGS_lease_s);
  const int64_t lease_margin_s = absl::GetFlag(FLAGS_lease_margin_s);
  if (lease_s < 2 || lease_margin_s < 0 || lease_margin_s >= lease_s) {
    Say(kError, absl::StrFormat("--lease_s must be >= 2 and --lease_margin_s in [0, --lease_s), "
                                "got %d and %d",
                                lease_s, lease_margin_s));
    return 2;
  }
  o.lease_margin_ms = (lease_margin_s > 0 ? lease_margin_s * 1000 : lease_s * 1000 / 3);
  o.gc_grace_s = absl::GetFlag(FLAGS_gc_grace_s);
  if (o.gc_grace_s < 2 * lease_s) {
    Say(kError, absl::StrFormat("--gc_grace_s must be at least twice --lease_s (%d), got %d: a "
                                "blob younger than that may still be committed",
                                lease_s, o.gc_grace_s));
    return 2;
  }
  o.persist_interval_s = absl::GetFlag(FLAGS_persist_interval_s);
  const std::string durability = absl::GetFlag(FLAGS_durability);
  if (durability != "write_behind" && durability != "sync") {
    Say(kError, absl::StrCat("--durability must be write_behind or sync, got '", durability, "'"));
    return 2;
  }
  o.sync_durability = durability == "sync";
  const int64_t shutdown_delay_s = absl::GetFlag(FLAGS_shutdown_delay_s);
  if (shutdown_delay_s < 0) {
    Say(kError,
        absl::StrCat("--shutdown_delay_s must be >= 0 (0: drain at once), got ", shutdown_delay_s));
    return 2;
  }
  o.tls_cert_file = absl::GetFlag(FLAGS_tls_cert_file);
  o.tls_key_file = absl::GetFlag(FLAGS_tls_key_file);
  o.tls_client_ca_file = absl::GetFlag(FLAGS_tls_client_ca_file);
  o.tls_crl_file = absl::GetFlag(FLAGS_tls_crl_file);
  o.tls_refresh_s = absl::GetFlag(FLAGS_tls_refresh_s);
  o.auth_tokens_file = absl::GetFlag(FLAGS_auth_tokens_file);
  o.health_listen = absl::GetFlag(FLAGS_health_listen);
  o.reflection = absl::GetFlag(FLAGS_reflection);
  o.metrics_auth = absl::GetFlag(FLAGS_metrics_auth);
  o.quotas_file = absl::GetFlag(FLAGS_quotas_file);
  o.metrics_tls_cert_file = absl::GetFlag(FLAGS_metrics_tls_cert_file);
  o.metrics_tls_key_file = absl::GetFlag(FLAGS_metrics_tls_key_file);
  o.http_listen = absl::GetFlag(FLAGS_http_listen);
  o.http_max_body_bytes = absl::GetFlag(FLAGS_http_max_body_bytes);
  // SIGHUP re-reads the tokens and quotas files (they are also re-read when they change).
  ttt::auth::InstallSighupReload();

  ttt::coord::EtcdClientOptions etcd;
  etcd.endpoints = absl::GetFlag(FLAGS_etcd_endpoints);
  etcd.tls_ca_file = absl::GetFlag(FLAGS_etcd_ca_file);
  etcd.tls_cert_file = absl::GetFlag(FLAGS_etcd_cert_file);
  etcd.tls_key_file = absl::GetFlag(FLAGS_etcd_key_file);
  etcd.tls_refresh_interval = absl::Seconds(std::max(1, o.tls_refresh_s));
  o.etcd_prefix = absl::GetFlag(FLAGS_etcd_prefix);
  auto cluster = JoinCluster(std::move(etcd), o.etcd_prefix, o.replica_id, lease_s);
  if (!cluster.ok()) {
    Say(kError, cluster.status().ToString());
    return absl::IsInvalidArgument(cluster.status()) ? 2 : 1;
  }
  o.etcd = cluster->etcd;
  o.etcd_lease = cluster->lease;

  auto server = ttt::server::Server::Start(o);
  if (!server.ok()) {
    Say(kError, server.status().ToString());
    return 1;
  }
  Say(kInfo,
      absl::StrFormat("ttt-serve %s: model %s (fingerprint %s), gRPC on port %d, metrics on %d",
                      ttt::server::kVersion, o.model_dir, (*server)->model_fingerprint(),
                      (*server)->port(), (*server)->metrics_port()),
      {{"grpc_port", (*server)->port()}, {"metrics_port", (*server)->metrics_port()}});
  if ((*server)->http_port() != 0) {
    Say(kInfo, absl::StrCat("HTTP (OpenAI-compatible) on port ", (*server)->http_port()),
        {{"http_port", (*server)->http_port()}});
  }

  const int sig = AwaitSignalOrLostLease(signals, cluster->lease.get());
  if (sig == 0) {
    Say(kError,
        "etcd expired this process's lease (it was paused or cut off from etcd for longer than "
        "--lease_s): its sessions belong to other replicas now; stopping, to be started again "
        "with a new lease");
  }
  if (sig != 0 && shutdown_delay_s > 0) {
    (*server)->BeginShutdown();
    Say(kInfo, absl::StrFormat("signal %d: not serving; taking calls for %ds more", sig,
                               shutdown_delay_s));
    if (AwaitSignal(signals, shutdown_delay_s)) {
      Say(kInfo, "second signal: ending the shutdown delay");
    }
  }
  Say(kInfo, absl::StrFormat("draining (up to %ds)", o.drain_timeout_s));
  (*server)->Shutdown();
  if (cluster->lease != nullptr) {
    // Frees --replica_id and every session still owned here at once for the next process (a
    // killed one frees them at lease expiry).
    const absl::Status revoked = cluster->lease->Revoke();
    if (!revoked.ok()) Say(kError, revoked.ToString());
  }
  Say(kInfo, "stopped");
  return sig == 0 ? 3 : 0;
}
