// SessionManager's implementation; session/session.h is its face and states each operation's
// contract. Here: the session map and its lock, the writer lease's bookkeeping, residency and the
// reaper thread, the checkpoint and cluster stores. The member functions are defined across
// session/*.cc by concern (session.cc: lifecycle and the map; ingest.cc, generate.cc,
// checkpoints.cc, residency.cc, store.cc). Only session/ includes this header.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "session/internal/buffer_census.h"
#include "session/internal/state_cache.h"
#include "session/session.h"

namespace ttt::session {

// Thread-safe, as its face.
struct IngestRunCache;  // ingest.cc

class SessionManagerImpl final : public SessionManager {
 public:
  // REQUIRES: as SessionManager::Create, which calls it and then starts the manager.
  SessionManagerImpl(const engine::Model* model, engine::Scheduler* scheduler,
                     const ManagerOptions& options, SessionListener* listener);
  ~SessionManagerImpl() override;

  // SessionManager's operations (session/session.h).
  absl::StatusOr<SessionInfo> CreateSession(const std::string& tenant,
                                            const SessionOptions& options,
                                            const std::string& id = "") override;
  absl::Status ValidateTokens(absl::Span<const int32_t> tokens) const override;
  absl::StatusOr<SessionInfo> GetSession(const std::string& tenant, const std::string& id) override;
  std::vector<SessionInfo> ListSessions(
      const std::string& tenant, const std::map<std::string, std::string>& selector = {}) override;
  absl::Status DeleteSession(const std::string& tenant, const std::string& id) override;
  absl::StatusOr<std::unique_ptr<Writer>> OpenWriter(const std::string& tenant,
                                                     const std::string& id,
                                                     const std::string& what) override;
  absl::Status Score(const std::string& tenant, const std::string& id, std::vector<int32_t> tokens,
                     std::shared_ptr<engine::CancelToken> cancel,
                     std::function<void(absl::StatusOr<ScoreResult>)> done) override;
  absl::Status Generate(const std::string& tenant, const std::string& id, GenerateParams params,
                        std::shared_ptr<engine::CancelToken> cancel,
                        std::function<bool(int32_t token, float logprob)> on_token,
                        std::function<void(absl::Status, FinishReason, int64_t)> done) override;
  absl::Status Reset(const std::string& tenant, const std::string& id,
                     std::function<void(absl::StatusOr<SessionInfo>)> done) override;
  absl::Status Fork(const std::string& tenant, const std::string& id,
                    std::optional<SessionOptions> options,
                    std::function<void(absl::StatusOr<SessionInfo>)> done,
                    const std::string& new_id = "") override;
  absl::Status Checkpoint(const std::string& tenant, const std::string& id,
                          const std::string& checkpoint_id,
                          std::function<void(absl::StatusOr<CheckpointInfo>)> done) override;
  absl::Status Restore(const std::string& tenant, const std::string& checkpoint_id,
                       const std::string& target_session, std::optional<SessionOptions> options,
                       std::function<void(absl::StatusOr<SessionInfo>)> done,
                       const std::string& new_id = "") override;
  absl::StatusOr<std::vector<CheckpointInfo>> ListCheckpoints(const std::string& tenant) override;
  absl::Status DeleteCheckpoint(const std::string& tenant,
                                const std::string& checkpoint_id) override;
  absl::Status ExportSession(const std::string& tenant, const std::string& id,
                             std::function<void(absl::StatusOr<std::string>)> done) override;
  absl::StatusOr<std::string> ExportCheckpoint(const std::string& tenant,
                                               const std::string& checkpoint_id) override;
  absl::StatusOr<SessionInfo> ImportSession(const std::string& tenant, std::string bytes,
                                            std::optional<SessionOptions> options,
                                            const std::string& new_id = "") override;
  absl::Status PersistAll() override;
  void ReapNow() override;
  void MaintainNow() override;
  int64_t session_count() const override;
  ResidentPool resident_pool() const override;
  int64_t resident_session_limit() const override {
    return options_.max_resident_sessions > 0 ? options_.max_resident_sessions
                                              : options_.max_sessions;
  }
  StateCacheStats state_cache_stats() const override;
  const ManagerOptions& options() const override { return options_; }
  const engine::Model& model() const override { return *model_; }

 private:
  friend class SessionManager;  // Create opens the store, registers sessions, starts the reaper
  friend class Writer;

  absl::StatusOr<std::shared_ptr<Session>> Find(const std::string& tenant, const std::string& id);
  // Whether the tenant has a live session of that id in the map.
  bool Holds(const std::string& tenant, const std::string& id) const;
  // Marks an operation on `s` begun and queues its work; undoes the mark when the scheduler
  // refuses it (full queue, shutdown).
  absl::Status SubmitOp(Session& s, engine::Work work,
                        const std::shared_ptr<engine::CancelToken>& cancel);
  // `id` empty: a fresh generated id; otherwise that id (ALREADY_EXISTS when taken). Then makes
  // room for the new resident session in the pool (EvictToFit). `path`: where `state` is on its
  // path (untracked: unknown, e.g. a state from a file).
  absl::StatusOr<std::shared_ptr<Session>> Insert(
      const std::string& tenant, const SessionOptions& options, engine::SequenceState state,
      const Counters& counters, const std::string& id = "", internal::StatePath path = {});
  // Insert's map part: checks the session limit and the id, registers the session. Takes mu_.
  absl::StatusOr<std::shared_ptr<Session>> Publish(const std::string& tenant,
                                                   const SessionOptions& options,
                                                   engine::SequenceState state,
                                                   const Counters& counters, const std::string& id,
                                                   internal::StatePath path);
  // RESOURCE_EXHAUSTED when `count` sessions leave no room for another, else OK.
  absl::Status CheckSessionLimit(int64_t count) const;
  absl::Status ValidateOptions(const SessionOptions& options) const;
  // Tokens per chunk update (0 when the model runs no TTT layer).
  int64_t TokensPerChunk() const;
  absl::Status SubmitIngest(const std::shared_ptr<Session>& s, std::vector<int32_t> tokens,
                            bool end_of_document, std::shared_ptr<engine::CancelToken> cancel,
                            std::function<void(absl::StatusOr<IngestProgress>)> done, bool durable);
  // The state cache's part of an Ingest run (ingest.cc), engine thread. Before the run: adopts
  // the longest cached state on the run's path and plans where the run's state is cached.
  void PlanCachedRun(Session& s, IngestRunCache& run, engine::Work::Plan& plan);
  // After each batch: caches the state when the run reached its planned boundary.
  void CacheAtBoundary(Session& s, const IngestRunCache& run, int64_t applied);
  // After the run: moves the session's path over the tokens applied.
  void AdvancePath(Session& s, const IngestRunCache& run);
  // Validates generation parameters; an empty prompt on an empty session becomes the bos token.
  absl::Status PrepareGenerateParams(const Session& s, GenerateParams& params) const;

  // Residency (residency.cc). Engine thread: loads an evicted session's state.
  absl::Status EnsureResident(Session& s);
  // Engine thread: checkpoint-format bytes of the session's state.
  absl::StatusOr<std::string> EncodeSession(Session& s, const std::string& checkpoint_id);
  // Engine thread: writes the session's state to its session file, or, shared through etcd,
  // commits it (a new blob, then the head moved if this process still owns the session);
  // returns the bytes written. A fenced commit (FAILED_PRECONDITION) disowns the session.
  absl::StatusOr<int64_t> WriteSessionFile(const std::shared_ptr<Session>& s);
  // Sync durability, one commit per run of queued Ingest messages (ingest.cc): a done message's
  // acknowledgement waits while a later message of the session is queued; the last one returns
  // every acknowledgement due, in order, for CommitFor and then each its outcome.
  std::vector<PendingIngestAck> SettleIngest(Session& s, PendingIngestAck ack);
  // Commits when one of `acks` needs it (CommitIngested); OK otherwise.
  absl::Status CommitFor(const std::shared_ptr<Session>& s,
                         const std::vector<PendingIngestAck>& acks);
  // WriteSessionFile for acknowledgements; on failure the session goes back to its last commit
  // (or, on the cluster, to whoever takes it next) and the answer says how to resend.
  absl::Status CommitIngested(const std::shared_ptr<Session>& s);
  // After a refused submission: commits and acknowledges what waited for it, on the engine.
  void AcknowledgeOrphans(const std::shared_ptr<Session>& s);
  // Engine thread: a sync Ingest whose write failed takes the session back to its last durable
  // copy (counters now, state at its next use), so what is applied is what was acknowledged.
  void RewindToDurable(Session& s);
  // Queues, after the session's work, dropping its state and its session file (deleted or
  // expired sessions).
  void DropOnEngine(const std::shared_ptr<Session>& s);
  // Queues the eviction of an idle resident session (the write runs on the engine thread, in
  // order with the session's work, and keeps the session if it is used meanwhile). Returns
  // whether it was queued (false: busy, deleted, evicted or already being evicted).
  bool Evict(const std::shared_ptr<Session>& s);
  // The queued part of Evict, on the engine thread: writes the state and drops it, unless the
  // session was used or deleted meanwhile.
  void FinishEviction(const std::shared_ptr<Session>& s);
  // Mu of `s` held: resident and free to change (no operation in flight, no writer, not being
  // evicted or deleted).
  static bool IdleLocked(const Session& s);
  // Queues the compaction of the resident sessions idle for compact_idle_after_ms or more (one
  // engine task for all); returns whether it queued one (it then runs EvictToFit itself). False
  // when compaction is off.
  bool CompactIdle();
  // CompactIdle's task, on the engine thread: compacts those of `listed` still idle, refreshes
  // their accounting, tells the listener, then EvictToFit with the bytes saved.
  void FinishCompaction(const std::vector<std::shared_ptr<Session>>& listed);
  // Evicts the least recently used idle resident sessions until the pool is within its limits
  // (sessions whose eviction is queued count as gone). `admitted` (may be null), the session
  // that just became resident, is never chosen. Only queues work: any thread may call it, the
  // engine thread included. REQUIRES: neither mu_ nor any session's mu held.
  void EvictToFit(const Session* admitted);
  void LoadPersisted();
  void ReaperLoop();
  // Shared through etcd (store.cc). A session of the cluster this process does not own: takes
  // it over and registers it (its state loads on first use). NOT_FOUND when the cluster has no
  // such session; UNAVAILABLE while another live process owns it.
  absl::StatusOr<std::shared_ptr<Session>> Adopt(const std::string& tenant, const std::string& id);
  // ListSessions' cluster part: adds the tenant's sessions committed on etcd that `infos` (those
  // held here) lacks.
  void AddClusterSessions(const std::string& tenant, std::vector<SessionInfo>& infos);
  // Insert's cluster part: creates the session on etcd (owned here, its state committed), then
  // registers it.
  absl::StatusOr<std::shared_ptr<Session>> PublishShared(
      const std::string& tenant, const SessionOptions& options, engine::SequenceState state,
      const Counters& counters, const std::string& id, internal::StatePath path);
  // Mu_ held: ALREADY_EXISTS when `id` is taken (map or session file).
  absl::Status CheckIdFreeLocked(const std::string& tenant, const std::string& id) const;
  // Registers a new session under mu_ (RESOURCE_EXHAUSTED at the session limit).
  absl::StatusOr<std::shared_ptr<Session>> RegisterLocked(const std::string& tenant,
                                                          const std::string& id,
                                                          const SessionOptions& options,
                                                          int64_t created_ms);
  // Forgets a session this process no longer owns, leaving its state to the new owner.
  void Disown(const std::shared_ptr<Session>& s, const absl::Status& why);
  // Drops every session when the process lease is lost; hands over the idle sessions other
  // replicas asked for.
  void CheckOwnership();
  // Queues on the engine: commits an idle session, gives its ownership up, forgets it.
  void HandOver(const std::shared_ptr<Session>& s);
  void WriteBehind();
  // The cluster's garbage sweep, when gc_interval has passed since this process's last one.
  void SweepGarbageIfDue();
  // The checkpoint metadata of the session now (a checkpoint's when `checkpoint_id` is set).
  internal::CheckpointMeta MetaOf(Session& s, const std::string& checkpoint_id) const;

  const engine::Model* model_;
  engine::Scheduler* scheduler_;
  const ManagerOptions options_;
  SessionListener* listener_;
  // Shared with work queued on the engine (DropOnEngine), which may run after this manager is gone.
  const std::shared_ptr<internal::CheckpointStore> store_;
  const std::shared_ptr<internal::ClusterStore> cluster_;  // null unless options.cluster.etcd
  std::mutex adopt_mu_;  // one takeover at a time: a second call for the session finds it here
  // How such work asks this manager whether an id was reused; unlinked by the destructor.
  struct Link {
    std::mutex mu;
    SessionManagerImpl* manager ABSL_GUARDED_BY(mu);
  };
  const std::shared_ptr<Link> link_;

  mutable std::mutex mu_;
  // tenant -> id -> session. Guarded by mu_.
  std::map<std::string, std::map<std::string, std::shared_ptr<Session>>> sessions_;
  int64_t session_count_ = 0;              // guarded by mu_
  std::atomic<int64_t> scratch_bytes_{0};  // copies in flight (memory_held_bytes)
  // The buffers the sessions' states hold, shared ones once (forks): their memory_bytes shares.
  const std::shared_ptr<internal::BufferCensus> census_;
  // The cache of adapted states; null while off (options.state_cache, a model without TTT).
  const std::unique_ptr<internal::StateCache> state_cache_;
  std::atomic<uint64_t> next_key_{1};

  std::mutex reaper_mu_;
  std::condition_variable reaper_cv_;
  bool stop_reaper_ = false;  // guarded by reaper_mu_
  std::thread reaper_;
  absl::Time next_sweep_ = absl::InfinitePast();  // reaper thread only
};

}  // namespace ttt::session
