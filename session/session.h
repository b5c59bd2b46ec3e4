// Sessions: a session is one tenant's stream into the model: its SequenceState (fast weights per
// TTT layer, attention cache, the unfinished chunk), counters, options and labels. The
// SessionManager maps ids to sessions per tenant, admits work into the engine's Scheduler,
// enforces one writer per session, evicts idle sessions to disk under a memory budget (they
// reload transparently), removes sessions past their idle TTL, and reads and writes checkpoint
// files (safetensors + metadata + SHA-256, written atomically). Knows nothing of gRPC/protobuf.
//
// Concurrency model: every access to a session's SequenceState happens on the scheduler's engine
// thread, in the session's FIFO order. RPC threads call the manager's methods, which validate,
// then queue work and return at once; results come back by callback on the engine thread
// (callbacks must not block). Synchronous methods (Create, Get, List, Delete, ...) only touch
// guarded bookkeeping and the file system.
//
// Writers: Ingest, committing Generate, Reset and Restore-over-a-session change a session's
// state; a session has at most one writer at a time. A second concurrent writer gets ABORTED
// ("session s-.. is busy: an Ingest is already writing to it; ...") at once rather than waiting:
// a waiting writer would interleave two streams' tokens in an order no client chose. Readers
// (Score, non-committing Generate, Checkpoint, Fork, Export) never conflict; they see the state
// between two applied pieces of a concurrent writer.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "engine/compact.h"
#include "engine/model.h"
#include "engine/sampler.h"
#include "engine/scheduler.h"

namespace ttt::coord {
class EtcdClient;
class KeptLease;
}  // namespace ttt::coord

namespace ttt::session {

namespace internal {
class CheckpointStore;
class ClusterStore;
struct CheckpointMeta;
}  // namespace internal

struct SessionOptions {
  bool reset_at_document_end = false;
  std::map<std::string, std::string> labels;
  int64_t idle_ttl_seconds = 0;  // 0 = the manager's default
  // Fraction of the fast weights forgotten at each document end (engine::Model::FadeFastWeights
  // keeps 1 - this); 0 keeps them. Excludes reset_at_document_end.
  double fade_at_document_end = 0;
};

struct Counters {
  int64_t tokens_received = 0;      // tokens consumed over the session's lifetime
  int64_t tokens_applied = 0;       // tokens folded into the fast weights (chunks * C)
  int64_t tokens_pending = 0;       // tokens of the unfinished chunk
  int64_t chunks_applied = 0;       // chunk updates over the lifetime
  int64_t position = 0;             // context length of the current stream
  int64_t documents_completed = 0;  // end-of-document markers
  int64_t tokens_generated = 0;     // committed generated tokens
};

struct SessionInfo {
  std::string id;
  std::string tenant;
  SessionOptions options;
  Counters counters;
  // Bytes of the buffers its state holds (0 while evicted), a buffer it shares with k resident
  // sessions (copy-on-write forks) counted as 1/k: the sessions' figures add up to the pool's.
  int64_t memory_bytes = 0;
  std::vector<std::pair<int64_t, double>> delta_norms;  // (layer, Frobenius norm of the delta)
  int64_t create_time_unix_ms = 0;
  int64_t last_used_unix_ms = 0;
  bool resident = true;  // false while evicted to disk
  // Resident with its fast weights in bf16 while idle (ManagerOptions::compact_idle_after_ms);
  // its next use restores fp32.
  bool compact = false;
  bool writer_active = false;
};

struct CheckpointInfo {
  std::string id;
  std::string session_id;
  int64_t size_bytes = 0;
  int64_t create_time_unix_ms = 0;
  std::string model_fingerprint;
  Counters counters;
  SessionOptions options;
};

// What one Ingest submission did.
struct IngestProgress {
  Counters counters;      // the session's counters afterwards
  int64_t tokens = 0;     // tokens of this submission applied
  double nll_sum = 0.0;   // sum of -log p over its tokens that had a prediction
  int64_t nll_count = 0;  // how many had one
};

struct ScoreResult {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;  // NaN where the token had no context
};

struct GenerateParams {
  engine::SamplingParams sampling;
  int64_t max_tokens = 64;
  std::vector<int32_t> prompt;
  bool commit = false;      // append prompt and output to the session (a writer)
  bool stop_at_eos = true;  // stop at the model's eos token (not returned)
};

enum class FinishReason { kLength, kStop, kEos };

// Observes session events (metrics). Called from any thread; must be cheap and thread-safe.
class SessionListener {
 public:
  virtual ~SessionListener() = default;
  virtual void OnChunkUpdates(int64_t chunks) {}
  virtual void OnEvicted() {}
  // A compaction pass put `sessions` idle sessions in bf16, freeing `bytes_saved`
  // (ManagerOptions::compact_idle_after_ms).
  virtual void OnCompacted(int64_t sessions, int64_t bytes_saved) {}
  virtual void OnCheckpointWritten(int64_t bytes, double seconds) {}
  // A session's state written to the store (write-behind, sync ingest, eviction, shutdown):
  // how long the write took, and the age of the copy it replaced (the lag: at most what a crash
  // just before would have lost).
  virtual void OnSessionPersisted(double seconds, double lag_seconds) {}
  // The garbage sweep deleted `blobs` unreferenced state blobs (sessions shared through etcd).
  virtual void OnBlobsCollected(int64_t blobs) {}
  // An Ingest of `tenant`'s looked up the state cache (ManagerOptions::state_cache) and adopted
  // `tokens_adopted` tokens' state (0: a miss). Per tenant, where the cache's stats are totals.
  virtual void OnStateCacheLookup(const std::string& tenant, int64_t tokens_adopted) {}
};

// The cache of adapted states (session/internal/state_cache.h), its counters since start.
struct StateCacheStats {
  int64_t hits = 0;            // ingests that adopted a cached state
  int64_t misses = 0;          // ingests reaching a chunk boundary that found nothing
  int64_t tokens_skipped = 0;  // tokens hits applied without computing them
  int64_t insertions = 0;
  int64_t evictions = 0;  // entries dropped to stay within the byte budget (LRU)
  int64_t entries = 0;
  int64_t bytes = 0;  // the distinct state buffers the entries hold, plus their log-probabilities
  int64_t budget_bytes = 0;  // 0: the cache is off
};

struct ManagerOptions {
  std::filesystem::path checkpoint_dir = "checkpoints";
  int64_t memory_budget_bytes = int64_t{2048} << 20;
  int64_t max_sessions = 1024;
  // The resident pool's limits: the bytes of the resident states (memory_budget_bytes above)
  // and the number of resident sessions (0: max_sessions). Whenever a session becomes resident
  // (create, fork, restore or import into a new session, reload of an evicted one) the least
  // recently used idle sessions are evicted to disk at once, each freeing its place, until the
  // pool fits again; the reaper does the same each pass (states grow as they ingest). A session
  // in use is never evicted, so the pool exceeds a limit only while more sessions than that are
  // busy at once; admission is never refused for it (only max_sessions refuses).
  int64_t max_resident_sessions = 0;
  int64_t idle_ttl_seconds = 3600;
  // Compact idle sessions (engine/compact.h): a resident session unused for this long keeps its
  // fast-weight deltas (and, unless compact_kv_cache is kOff, its KV cache: bf16 or int8) as
  // compact copies, half their bytes or less, until its next use restores fp32; the budget counts
  // the bytes really held, so eviction to disk comes later. A reaper pass compacts; 0: never
  // (docs/contract.md: the quality cost). A buffer that sessions share (forks and their parent)
  // stays fp32 and shared.
  int64_t compact_idle_after_ms = 0;
  engine::KvCompaction compact_kv_cache = engine::KvCompaction::kOff;
  int64_t reaper_interval_ms = 1000;
  int64_t max_checkpoint_bytes = int64_t{4} << 30;  // refuse larger imports
  int64_t max_generate_tokens = 4096;
  // Write-behind: a resident session a writer changed is written to its session file this long
  // after its last copy (0: only at eviction and shutdown). Bounds what a crash loses.
  int64_t persist_interval_ms = 5000;
  // Sessions shared by the replicas of a deployment through etcd (docs/coordination.md). With
  // `etcd` set, a session is owned by one process at a time (its owner key, bound to `lease`, this
  // process's etcd lease kept alive), every commit of its state is a new blob in checkpoint_dir
  // (a volume all replicas mount) and one compare-and-swap of its head on etcd, and a process
  // answers for its sessions only while its lease is certainly live. Persisted sessions are not
  // registered at start; each is taken over by the replica its calls reach. Without `etcd`: one
  // server alone on its folder.
  struct Cluster {
    std::shared_ptr<coord::EtcdClient> etcd;
    std::shared_ptr<const coord::KeptLease> lease;
    std::string prefix = "/ttt/v1/";  // etcd keys of this deployment
    std::string replica_id;           // this process's label in owner keys and messages
    // How long a call may take between the lease check and its answer.
    absl::Duration margin = absl::Seconds(5);
    // The live_sessions quota across the cluster (may be empty: no limit): asked with the
    // tenant's session count on the cluster before each creation (create, fork, restore or
    // import into a new session), in the same compare-and-swap as the creation, so replicas
    // creating at the same instant cannot together pass it. Its refusal is the creation's answer.
    std::function<absl::Status(const std::string& tenant, int64_t live_now)> admit_session;
    // The garbage sweep (one replica at a time): every `gc_interval`, blobs that no head names
    // and that were written more than `gc_grace` ago are deleted (crash leftovers between a
    // blob's write and its commit). `gc_grace` must exceed the lease's TTL by far, and the clock
    // skew between the machines writing to the volume.
    absl::Duration gc_grace = absl::Minutes(10);
    absl::Duration gc_interval = absl::Minutes(5);
    // Handover between live replicas (a rolling restart moves a session's calls to another
    // replica and back): the owner reads the handover requests this often and hands an idle
    // session over at once, and a replica that gets a call for a session another live replica
    // owns waits up to `handover_wait` for it to be handed over before answering UNAVAILABLE, so
    // the call needs no retry. The wait holds the calling thread: keep it short. 0: no poll
    // between maintenance passes, no wait.
    absl::Duration handover_poll = absl::Milliseconds(100);
    absl::Duration handover_wait = absl::Seconds(2);
  };
  Cluster cluster;
  // The cache of adapted states (docs/operations.md, "State cache"). Each Ingest caches the
  // state at the last chunk boundary it reaches, and an Ingest that follows a cached path from
  // the same starting state adopts that state instead of computing it. `budget_bytes` bounds it
  // (least recently used entries go first; 0: off). Entries are per tenant unless
  // `shared_across_tenants`: a shared cache lets a tenant learn from a hit's speed what another
  // tenant has read, so it is only for tenants that trust each other.
  struct StateCache {
    int64_t budget_bytes = 0;
    bool shared_across_tenants = false;
  };
  StateCache state_cache;
};

class Session;
class SessionManagerImpl;
struct PendingIngestAck;

// A writer lease on one session: while it lives, nobody else can write the session. Submitted
// work completes even after the lease is dropped; drop it after the last callback. Thread-safe.
class Writer {
 public:
  ~Writer();
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

  const std::string& session_id() const;
  // The session's counters now. While this lease lives nobody else changes them, so they are
  // the starting point of this writer's submissions (an idempotent resend checks them).
  Counters counters() const;

  // Queues `tokens` (validated against the vocabulary: INVALID_ARGUMENT names the first bad one,
  // nothing queued) then, if `end_of_document`, the document end (resetting the session when its
  // options say so). `done` runs once on the engine thread. RESOURCE_EXHAUSTED when the engine
  // queue is full. Submissions apply in call order. `durable` (sync durability): `done` reports
  // success only after the session's state, these tokens included, is in its session file;
  // UNAVAILABLE when that write fails (the tokens are applied here but not acknowledged; the
  // client retries, on another replica if this one lost the session).
  absl::Status Ingest(std::vector<int32_t> tokens, bool end_of_document,
                      std::shared_ptr<engine::CancelToken> cancel,
                      std::function<void(absl::StatusOr<IngestProgress>)> done,
                      bool durable = false);

 private:
  friend class SessionManagerImpl;
  Writer(SessionManagerImpl* manager, std::shared_ptr<Session> session)
      : manager_(manager), session_(std::move(session)) {}
  SessionManagerImpl* manager_;
  std::shared_ptr<Session> session_;
};

// What callers use of the session manager: servers, the CLI-free tools and tests hold a
// SessionManager; Create returns the implementation (session/internal/session_manager_impl.h),
// whose session map, locks, stores and reaper thread stay behind this face. Thread-safe.
class SessionManager {
 public:
  // REQUIRES: model and scheduler outlive the manager; listener (optional) too.
  // Creates the checkpoint directory and registers sessions persisted there by a previous
  // process with the same model (they load on first use).
  static absl::StatusOr<std::unique_ptr<SessionManager>> Create(
      const engine::Model* model, engine::Scheduler* scheduler, const ManagerOptions& options,
      SessionListener* listener = nullptr);
  virtual ~SessionManager() = default;

  // Tenant ids: [A-Za-z0-9._-], 1..64 chars, not starting with '.'.
  static absl::Status ValidateTenant(const std::string& tenant);

  // `id` empty: the manager picks "s-" + 16 hex digits. Otherwise the client's id (ValidateId);
  // ALREADY_EXISTS when the tenant has a session of that id: resident, evicted, or a session
  // file in the store (persisted by this process or another replica sharing the store).
  virtual absl::StatusOr<SessionInfo> CreateSession(const std::string& tenant,
                                                    const SessionOptions& options,
                                                    const std::string& id = "") = 0;
  // Session ids a client may choose: [A-Za-z0-9._-], 1..128 chars, not starting with '.'.
  static absl::Status ValidateId(const std::string& id);
  // INVALID_ARGUMENT (TOKEN_OUT_OF_VOCAB) unless every id lies in [0, vocab_size) of the model,
  // as Ingest checks them (for the Detokenize RPC, which needs no session).
  virtual absl::Status ValidateTokens(absl::Span<const int32_t> tokens) const = 0;
  virtual absl::StatusOr<SessionInfo> GetSession(const std::string& tenant,
                                                 const std::string& id) = 0;
  virtual std::vector<SessionInfo> ListSessions(
      const std::string& tenant, const std::map<std::string, std::string>& selector = {}) = 0;
  // Removes the session and cancels its queued work. NOT_FOUND for unknown ids.
  virtual absl::Status DeleteSession(const std::string& tenant, const std::string& id) = 0;

  // Takes the writer lease. NOT_FOUND; ABORTED when another writer holds it. `what` names the
  // caller in the conflict message ("Ingest").
  virtual absl::StatusOr<std::unique_ptr<Writer>> OpenWriter(const std::string& tenant,
                                                             const std::string& id,
                                                             const std::string& what) = 0;

  // Log-probabilities of `tokens` continuing the session, without changing it. On an empty
  // session the first token has no prediction (NaN) and fewer than 2 tokens are refused with
  // INVALID_ARGUMENT (through `done`: the check runs in order with the session's writes).
  virtual absl::Status Score(const std::string& tenant, const std::string& id,
                             std::vector<int32_t> tokens,
                             std::shared_ptr<engine::CancelToken> cancel,
                             std::function<void(absl::StatusOr<ScoreResult>)> done) = 0;

  // Generates up to params.max_tokens tokens. `on_token(id, logprob)` runs on the engine thread
  // for each token and returns false to stop (a stop string matched); `done` runs once at the
  // end. Admission errors return at once (then no callback runs).
  virtual absl::Status Generate(const std::string& tenant, const std::string& id,
                                GenerateParams params, std::shared_ptr<engine::CancelToken> cancel,
                                std::function<bool(int32_t token, float logprob)> on_token,
                                std::function<void(absl::Status, FinishReason, int64_t)> done) = 0;

  virtual absl::Status Reset(const std::string& tenant, const std::string& id,
                             std::function<void(absl::StatusOr<SessionInfo>)> done) = 0;
  // `new_id`: the new session's id as in CreateSession (empty: the manager picks one).
  virtual absl::Status Fork(const std::string& tenant, const std::string& id,
                            std::optional<SessionOptions> options,
                            std::function<void(absl::StatusOr<SessionInfo>)> done,
                            const std::string& new_id = "") = 0;

  // Checkpoints. Ids: [A-Za-z0-9._-], 1..128 chars, not starting with '.'; generated when empty.
  virtual absl::Status Checkpoint(const std::string& tenant, const std::string& id,
                                  const std::string& checkpoint_id,
                                  std::function<void(absl::StatusOr<CheckpointInfo>)> done) = 0;
  // Into a new session (`target_session` empty; its id `new_id` as in CreateSession) or over an
  // existing one (a writer).
  virtual absl::Status Restore(const std::string& tenant, const std::string& checkpoint_id,
                               const std::string& target_session,
                               std::optional<SessionOptions> options,
                               std::function<void(absl::StatusOr<SessionInfo>)> done,
                               const std::string& new_id = "") = 0;
  virtual absl::StatusOr<std::vector<CheckpointInfo>> ListCheckpoints(
      const std::string& tenant) = 0;
  virtual absl::Status DeleteCheckpoint(const std::string& tenant,
                                        const std::string& checkpoint_id) = 0;

  // A session's state as checkpoint-format bytes.
  virtual absl::Status ExportSession(const std::string& tenant, const std::string& id,
                                     std::function<void(absl::StatusOr<std::string>)> done) = 0;
  virtual absl::StatusOr<std::string> ExportCheckpoint(const std::string& tenant,
                                                       const std::string& checkpoint_id) = 0;
  // Verifies checkpoint-format bytes and creates a session from them.
  virtual absl::StatusOr<SessionInfo> ImportSession(const std::string& tenant, std::string bytes,
                                                    std::optional<SessionOptions> options,
                                                    const std::string& new_id = "") = 0;

  // Writes every resident session to disk (shutdown). Blocks; call from a non-engine thread.
  // Shared through etcd: commits them, then gives their ownership up, so other replicas take
  // them over at once instead of after this process's lease expires.
  virtual absl::Status PersistAll() = 0;
  // One reaper pass now (tests): TTL removal, then eviction down to the budget.
  virtual void ReapNow() = 0;
  // One maintenance pass now (tests; the reaper runs it too): with etcd, drops every session
  // when this process's lease is lost, hands over idle sessions other replicas asked for and,
  // when due, sweeps the cluster's garbage blobs; then queues the write-behind of dirty sessions
  // whose last copy is older than persist_interval_ms.
  virtual void MaintainNow() = 0;

  virtual int64_t session_count() const = 0;
  // The resident pool (sessions whose state is in memory), in one walk over the sessions.
  struct ResidentPool {
    int64_t sessions = 0;
    // The budgeted figure: bytes of the buffers the resident sessions' states hold (whole
    // buffers, not only the elements in use; a buffer forks share, once); eviction keeps it
    // under memory_budget_bytes.
    int64_t bytes = 0;
    // The real figure: `bytes` plus the copies in flight (the state a Score or a non-committing
    // Generate runs on), which end with their request and are not budgeted.
    int64_t held_bytes = 0;
    int64_t compact_sessions = 0;  // of `sessions`, those compact while idle (bf16)
  };
  virtual ResidentPool resident_pool() const = 0;
  // The pool's session limit.
  virtual int64_t resident_session_limit() const = 0;
  // The state cache's counters (all 0 while it is off).
  virtual StateCacheStats state_cache_stats() const = 0;
  virtual const ManagerOptions& options() const = 0;
  virtual const engine::Model& model() const = 0;

 protected:
  SessionManager() = default;
};

}  // namespace ttt::session
