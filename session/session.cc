// The SessionManager's core: lifecycle, the session map and its bookkeeping, the writer lease,
// and the operations that only touch bookkeeping or whole states (create, get, list, delete,
// reset, fork). Ingest and scoring are in ingest.cc, generation in generate.cc, residency
// (eviction, reaper, persistence) in residency.cc, checkpoints in checkpoints.cc.
#include "session/session.h"
#include "session/internal/session_manager_impl.h"

#include <set>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/decode.h"
#include "session/internal/checkpoint_store.h"
#include "session/internal/cluster_store.h"
#include "session/internal/names.h"
#include "session/internal/session_record.h"
#include "util/error_reason.h"
#include "util/log.h"
#include "util/status_macros.h"

namespace ttt::session {

using internal::Quote;
using internal::RandomHex;
using internal::ValidateName;

// ---------------------------------------------------------------------------------------------
// Writer

Writer::~Writer() {
  std::lock_guard<std::mutex> lock(session_->mu);
  session_->writer = false;
  session_->writer_what.clear();
  session_->dirty = true;  // Reset and Restore change the state without AccountWriteLocked
  session_->last_used_ms = NowMs();
}

const std::string& Writer::session_id() const { return session_->id; }

Counters Writer::counters() const {
  std::lock_guard<std::mutex> lock(session_->mu);
  return session_->counters;
}

absl::Status Writer::Ingest(std::vector<int32_t> tokens, bool end_of_document,
                            std::shared_ptr<engine::CancelToken> cancel,
                            std::function<void(absl::StatusOr<IngestProgress>)> done,
                            bool durable) {
  // Checked here, not only in the engine: a run may be applied over several batches, and
  // nothing of a refused submission may be.
  RETURN_IF_ERROR(engine::ValidateTokens(manager_->model_->config(), tokens));
  return manager_->SubmitIngest(session_, std::move(tokens), end_of_document, std::move(cancel),
                                std::move(done), durable);
}

absl::StatusOr<std::unique_ptr<Writer>> SessionManagerImpl::OpenWriter(const std::string& tenant,
                                                                       const std::string& id,
                                                                       const std::string& what) {
  ASSIGN_OR_RETURN(auto s, Find(tenant, id));
  std::lock_guard<std::mutex> lock(s->mu);
  if (s->writer) {
    return absl::AbortedError(absl::StrCat(
        "session ", Quote(id), " is busy: ", s->writer_what,
        " is already writing to it; a session takes one writer at a time (Ingest, committing "
        "Generate, Reset, Restore), retry when that one finishes"));
  }
  s->writer = true;
  s->writer_what = what;
  return std::unique_ptr<Writer>(new Writer(this, s));
}

// ---------------------------------------------------------------------------------------------
// Lifecycle

absl::StatusOr<std::unique_ptr<SessionManager>> SessionManager::Create(
    const engine::Model* model, engine::Scheduler* scheduler, const ManagerOptions& options,
    SessionListener* listener) {
  if (model == nullptr || scheduler == nullptr) {
    return absl::InvalidArgumentError("session manager needs a model and a scheduler");
  }
  if (options.max_sessions < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_sessions must be >= 1, got ", options.max_sessions));
  }
  if (options.memory_budget_bytes < 0 || options.idle_ttl_seconds < 1) {
    return absl::InvalidArgumentError("memory budget must be >= 0 and idle TTL >= 1 s");
  }
  if (options.cluster.etcd != nullptr) {
    if (options.cluster.lease == nullptr) {
      return absl::InvalidArgumentError("sessions shared through etcd need this process's lease");
    }
    RETURN_IF_ERROR(ValidateName(options.cluster.replica_id, "replica id (--replica_id)", 64));
  }
  if (options.state_cache.budget_bytes < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("the state cache's budget must be >= 0 bytes (0: off), got ",
                     options.state_cache.budget_bytes));
  }
  if (options.max_resident_sessions < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_resident_sessions must be >= 0 (0: max_sessions), got ",
                     options.max_resident_sessions));
  }
  auto m = std::make_unique<SessionManagerImpl>(model, scheduler, options, listener);
  RETURN_IF_ERROR(m->store_->Init());
  // A cluster's sessions belong to whichever replica their calls reach (Adopt).
  if (m->cluster_ == nullptr) m->LoadPersisted();
  m->reaper_ = std::thread([raw = m.get()] { raw->ReaperLoop(); });
  return std::unique_ptr<SessionManager>(std::move(m));
}

SessionManagerImpl::SessionManagerImpl(const engine::Model* model, engine::Scheduler* scheduler,
                                       const ManagerOptions& options, SessionListener* listener)
    : model_(model),
      scheduler_(scheduler),
      options_(options),
      listener_(listener),
      store_(std::make_shared<internal::CheckpointStore>(options.checkpoint_dir)),
      cluster_(options.cluster.etcd == nullptr
                   ? nullptr
                   : std::make_shared<internal::ClusterStore>(
                         options.cluster.etcd, options.cluster.lease, options.cluster.prefix,
                         options.cluster.replica_id, options.cluster.margin, store_,
                         options.cluster.admit_session)),
      link_(std::make_shared<Link>()),
      census_(std::make_shared<internal::BufferCensus>()),
      state_cache_(options.state_cache.budget_bytes > 0 && TokensPerChunk() > 0
                       ? std::make_unique<internal::StateCache>(
                             options.state_cache.budget_bytes,
                             options.state_cache.shared_across_tenants, model->fingerprint())
                       : nullptr) {
  std::lock_guard<std::mutex> lock(link_->mu);
  link_->manager = this;
}

SessionManagerImpl::~SessionManagerImpl() {
  {
    std::lock_guard<std::mutex> lock(reaper_mu_);
    stop_reaper_ = true;
  }
  reaper_cv_.notify_all();
  if (reaper_.joinable()) reaper_.join();
  std::lock_guard<std::mutex> lock(link_->mu);
  link_->manager = nullptr;
}

absl::Status SessionManager::ValidateTenant(const std::string& tenant) {
  return ValidateName(tenant, "tenant id (x-tenant-id)", 64);
}

absl::Status SessionManager::ValidateId(const std::string& id) {
  // 128, like checkpoint ids: the store lists only file names that pass this check.
  return ValidateName(id, "session_id", 128);
}

StateCacheStats SessionManagerImpl::state_cache_stats() const {
  return state_cache_ != nullptr ? state_cache_->stats() : StateCacheStats{};
}

int64_t SessionManagerImpl::session_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return session_count_;
}

// ---------------------------------------------------------------------------------------------
// Bookkeeping

absl::Status SessionManagerImpl::SubmitOp(Session& s, engine::Work work,
                                          const std::shared_ptr<engine::CancelToken>& cancel) {
  s.BeginOp(cancel);
  absl::Status submitted = scheduler_->Submit(std::move(work));
  if (!submitted.ok()) s.EndOp();  // refused: the operation never started
  return submitted;
}

absl::StatusOr<std::shared_ptr<Session>> SessionManagerImpl::Find(const std::string& tenant,
                                                                  const std::string& id) {
  if (id.empty()) return absl::InvalidArgumentError("session_id is required");
  // Shared through etcd: nothing is answered for a session while this process's lease may
  // have expired (another process may own it by then).
  if (cluster_ != nullptr) RETURN_IF_ERROR(cluster_->CheckServing());
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto t = sessions_.find(tenant);
    if (t != sessions_.end()) {
      auto it = t->second.find(id);
      if (it != t->second.end()) return it->second;
    }
  }
  // The cluster may have it: this process takes it over (the proxy sent its call here).
  if (cluster_ != nullptr && ValidateTenant(tenant).ok() && ValidateId(id).ok()) {
    auto adopted = Adopt(tenant, id);
    // Owned by a live replica, now asked to hand it over: wait for that rather than fail the
    // call (outside adopt_mu_, so other takeovers go on meanwhile).
    const auto reason = util::ReasonOf(adopted.status());
    if (reason && reason->reason == util::kReasonSessionOwnedElsewhere &&
        options_.cluster.handover_wait > absl::ZeroDuration()) {
      const absl::Time asked = absl::Now();
      // Read more often than the owner polls: the wait ends soon after the release.
      const bool released = cluster_->AwaitRelease(tenant, id, options_.cluster.handover_wait,
                                                   options_.cluster.handover_poll / 4);
      const int64_t waited_ms = absl::ToInt64Milliseconds(absl::Now() - asked);
      if (released) adopted = Adopt(tenant, id);
      util::LogInfo("session",
                    absl::StrCat("waited ", waited_ms, " ms for session ", id, " of tenant ",
                                 tenant, " to be handed over: ",
                                 adopted.ok() ? "taken over" : adopted.status().message()),
                    {{"tenant", tenant}, {"session", id}, {"waited_ms", waited_ms}});
    }
    if (!absl::IsNotFound(adopted.status())) return adopted;
  }
  // Another tenant's session answers the same: its existence is not revealed.
  return absl::NotFoundError(absl::StrCat("session ", Quote(id), " not found (deleted, expired, ",
                                          "or never created for tenant ", Quote(tenant), ")"));
}

bool SessionManagerImpl::Holds(const std::string& tenant, const std::string& id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto t = sessions_.find(tenant);
  return t != sessions_.end() && t->second.count(id) > 0;
}

absl::Status SessionManagerImpl::CheckSessionLimit(int64_t count) const {
  if (count < options_.max_sessions) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat(
      "the server is at its session limit (", options_.max_sessions,
      " sessions, --max_sessions); delete sessions you no longer need or retry later"));
}

absl::Status SessionManagerImpl::ValidateOptions(const SessionOptions& options) const {
  if (options.labels.size() > 32) {
    return absl::InvalidArgumentError(
        absl::StrCat("at most 32 labels per session, got ", options.labels.size()));
  }
  for (const auto& [k, v] : options.labels) {
    if (k.empty() || k.size() > 256 || v.size() > 256) {
      return absl::InvalidArgumentError(
          "label keys must be 1..256 bytes and values at most 256 bytes");
    }
  }
  if (!(options.fade_at_document_end >= 0 && options.fade_at_document_end <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "fade_at_document_end must be in [0, 1] (the fraction of the fast weights forgotten at a "
        "document end), got ",
        options.fade_at_document_end));
  }
  if (options.fade_at_document_end > 0 && options.reset_at_document_end) {
    return absl::InvalidArgumentError(
        "set fade_at_document_end or reset_at_document_end, not both: a reset already forgets "
        "everything, the context too");
  }
  if (options.idle_ttl_seconds < 0 || options.idle_ttl_seconds > 30LL * 24 * 3600) {
    return absl::InvalidArgumentError(
        absl::StrCat("idle_ttl_seconds must be in [0, 2592000] (0 = server default), got ",
                     options.idle_ttl_seconds));
  }
  return absl::OkStatus();
}

int64_t SessionManagerImpl::TokensPerChunk() const {
  return model_->active_ttt_layers().empty() ? 0 : model_->config().ttt_chunk;
}

absl::StatusOr<std::shared_ptr<Session>> SessionManagerImpl::Insert(
    const std::string& tenant, const SessionOptions& options, engine::SequenceState state,
    const Counters& counters, const std::string& wanted, internal::StatePath path) {
  RETURN_IF_ERROR(ValidateTenant(tenant));
  RETURN_IF_ERROR(ValidateOptions(options));
  if (!wanted.empty()) RETURN_IF_ERROR(ValidateId(wanted));
  ASSIGN_OR_RETURN(auto s, cluster_ != nullptr ? PublishShared(tenant, options, std::move(state),
                                                               counters, wanted, std::move(path))
                                               : Publish(tenant, options, std::move(state),
                                                         counters, wanted, std::move(path)));
  EvictToFit(s.get());  // the pool makes room for it now, not at the next reaper pass
  return s;
}

absl::StatusOr<std::shared_ptr<Session>> SessionManagerImpl::Publish(
    const std::string& tenant, const SessionOptions& options, engine::SequenceState state,
    const Counters& counters, const std::string& wanted, internal::StatePath path) {
  std::lock_guard<std::mutex> lock(mu_);
  RETURN_IF_ERROR(CheckSessionLimit(session_count_));
  std::string id = wanted;
  if (id.empty()) {
    do {
      id = "s-" + RandomHex(16);
    } while (!CheckIdFreeLocked(tenant, id).ok());
  } else {
    RETURN_IF_ERROR(CheckIdFreeLocked(tenant, id));
  }
  ASSIGN_OR_RETURN(auto s, RegisterLocked(tenant, id, options, NowMs()));
  s->state = std::move(state);
  s->path = std::move(path);
  std::lock_guard<std::mutex> slock(s->mu);
  s->counters = counters;
  s->RefreshLocked();
  s->dirty = true;  // not in the store yet
  return s;
}

void SessionManagerImpl::AddClusterSessions(const std::string& tenant,
                                            std::vector<SessionInfo>& infos) {
  auto heads = cluster_->ListHeads(tenant);
  if (!heads.ok()) {
    util::LogWarning("session",
                     absl::StrCat("listing tenant ", tenant,
                                  "'s sessions on etcd failed: ", heads.status().message()));
    return;
  }
  std::set<std::string> here;
  for (const SessionInfo& info : infos) here.insert(info.id);
  for (internal::Head& head : *heads) {
    if (here.count(head.meta.session_id) > 0) continue;  // the copy here is newer
    SessionInfo info;
    info.id = head.meta.session_id;
    info.tenant = tenant;
    info.options = std::move(head.meta.options);
    info.counters = head.meta.counters;
    info.create_time_unix_ms = head.meta.created_unix_ms;
    info.last_used_unix_ms = head.meta.last_used_unix_ms;
    info.resident = false;
    infos.push_back(std::move(info));
  }
}

// ---------------------------------------------------------------------------------------------
// Sessions

absl::StatusOr<SessionInfo> SessionManagerImpl::CreateSession(const std::string& tenant,
                                                              const SessionOptions& options,
                                                              const std::string& id) {
  ASSIGN_OR_RETURN(auto s, Insert(tenant, options, model_->NewSequence(), Counters{}, id,
                                  internal::StatePath::Empty(model_->fingerprint())));
  return s->Info();
}

absl::StatusOr<SessionInfo> SessionManagerImpl::GetSession(const std::string& tenant,
                                                           const std::string& id) {
  ASSIGN_OR_RETURN(auto s, Find(tenant, id));
  return s->Info();
}

std::vector<SessionInfo> SessionManagerImpl::ListSessions(
    const std::string& tenant, const std::map<std::string, std::string>& selector) {
  std::vector<std::shared_ptr<Session>> found;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto t = sessions_.find(tenant);
    if (t != sessions_.end()) {
      for (auto& [id, s] : t->second) found.push_back(s);
    }
  }
  std::vector<SessionInfo> infos;
  for (auto& s : found) infos.push_back(s->Info());
  if (cluster_ != nullptr) AddClusterSessions(tenant, infos);
  std::vector<SessionInfo> out;
  for (SessionInfo& info : infos) {
    bool match = true;
    for (const auto& [k, v] : selector) {
      auto it = info.options.labels.find(k);
      match = match && it != info.options.labels.end() && it->second == v;
    }
    if (match) out.push_back(std::move(info));
  }
  return out;
}

absl::Status SessionManagerImpl::DeleteSession(const std::string& tenant, const std::string& id) {
  ASSIGN_OR_RETURN(auto s, Find(tenant, id));
  if (cluster_ != nullptr) {
    // On the cluster first: a delete that etcd did not take leaves the session whole here
    // (and DropOnEngine, below, finds nothing left to delete).
    const Session::Ownership owned = s->TakeOwnership();
    absl::Status deleted = cluster_->Delete(tenant, id, owned.fence, owned.blob);
    if (absl::IsFailedPrecondition(deleted)) {
      Disown(s, deleted);
      return absl::UnavailableError(
          absl::StrCat("session ", Quote(id), " is no longer owned by this replica; retry"));
    }
    if (!deleted.ok()) {
      std::lock_guard<std::mutex> lock(s->mu);
      s->fence = owned.fence;
      return deleted;
    }
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto& by_id = sessions_[tenant];
    if (by_id.erase(id) == 0) {
      return absl::NotFoundError(absl::StrCat("session ", Quote(id), " not found"));
    }
    --session_count_;
  }
  {
    std::lock_guard<std::mutex> lock(s->mu);
    s->deleted = true;
    for (auto& w : s->cancels) {
      if (auto c = w.lock()) c->Cancel();
    }
  }
  // Removed now as well as after the session's queued work (DropOnEngine, which catches an
  // eviction that was writing): the id is free for CreateSession as soon as Delete returns.
  if (cluster_ == nullptr) store_->RemoveSession(tenant, id);
  DropOnEngine(s);
  return absl::OkStatus();
}

absl::Status SessionManagerImpl::Reset(const std::string& tenant, const std::string& id,
                                       std::function<void(absl::StatusOr<SessionInfo>)> done) {
  ASSIGN_OR_RETURN(std::shared_ptr<Writer> writer, OpenWriter(tenant, id, "a Reset"));
  ASSIGN_OR_RETURN(auto s, Find(tenant, id));
  engine::Work w;
  w.key = s->key;
  w.task = [this, s, writer = std::move(writer), done]() mutable {
    s->state = model_->NewSequence();
    s->path = internal::StatePath::Empty(model_->fingerprint());
    bool admitted;
    {
      std::lock_guard<std::mutex> lock(s->mu);
      admitted = !s->resident;
      s->resident = true;
      s->counters = Counters{};
      s->RefreshLocked();
      s->dirty = true;
    }
    if (admitted) EvictToFit(s.get());
    writer.reset();
    s->EndOp();
    done(s->Info());
  };
  return SubmitOp(*s, std::move(w), nullptr);
}

absl::Status SessionManagerImpl::ValidateTokens(absl::Span<const int32_t> tokens) const {
  return engine::ValidateTokens(model_->config(), tokens);
}

absl::Status SessionManagerImpl::Fork(const std::string& tenant, const std::string& id,
                                      std::optional<SessionOptions> options,
                                      std::function<void(absl::StatusOr<SessionInfo>)> done,
                                      const std::string& new_id) {
  ASSIGN_OR_RETURN(auto s, Find(tenant, id));
  if (options) RETURN_IF_ERROR(ValidateOptions(*options));
  if (!new_id.empty()) RETURN_IF_ERROR(ValidateId(new_id));
  RETURN_IF_ERROR(CheckSessionLimit(session_count()));
  engine::Work w;
  w.key = s->key;
  w.task = [this, s, tenant, options, done, new_id]() {
    absl::Status loaded = EnsureResident(*s);
    if (!loaded.ok()) {
      s->EndOp();
      return done(loaded);
    }
    Counters counters;
    SessionOptions opts;
    {
      std::lock_guard<std::mutex> lock(s->mu);
      counters = s->counters;
      opts = options ? *options : s->options;
    }
    // Copy-on-write: the fork shares every buffer until one of the two writes.
    auto forked = Insert(tenant, opts, s->state.Fork(), counters, new_id, s->path);
    s->EndOp();
    if (!forked.ok()) return done(forked.status());
    done((*forked)->Info());
  };
  return SubmitOp(*s, std::move(w), nullptr);
}

}  // namespace ttt::session
