// The session store beyond one process: write-behind of changed sessions, and, when several
// replicas share the store (ManagerOptions::replica_id), ownership through leases: taking over
// a session this replica does not hold, renewing the leases it holds, and letting go of a session
// whose lease another replica took (internal/lease.h says what the store relies on).
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "session/internal/checkpoint_store.h"
#include "session/internal/lease.h"
#include "session/internal/names.h"
#include "session/internal/session_record.h"
#include "session/session.h"
#include "util/status_macros.h"

namespace ttt::session {

using internal::Quote;

absl::Status SessionManager::CheckIdFreeLocked(const std::string& tenant,
                                               const std::string& id) const {
  auto t = sessions_.find(tenant);
  const bool here = t != sessions_.end() && t->second.count(id) > 0;
  // The store counts too: a session persisted there (by a previous process, or by another
  // replica sharing the store) still owns its id, and a new session would overwrite it; so does
  // a session another replica created and has not written yet (its lease names it).
  if (here || store_->HasSession(tenant, id) ||
      (leases_ != nullptr && leases_->HeldElsewhere(tenant, id))) {
    return absl::AlreadyExistsError(absl::StrCat(
        "session ", Quote(id), " already exists for tenant ", Quote(tenant),
        " (resident, evicted or persisted in the session store, or held by another replica); "
        "choose another id, or use the existing session"));
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> SessionManager::LeaseNewLocked(const std::string& tenant,
                                                       const std::string& id) {
  auto generation = leases_->Acquire(tenant, id);
  if (absl::IsUnavailable(generation.status())) {
    // Another replica took the id between the check and the lease: it is not free.
    return absl::AlreadyExistsError(absl::StrCat("session ", Quote(id), " already exists: ",
                                                 generation.status().message()));
  }
  return generation;
}

absl::StatusOr<std::shared_ptr<Session>> SessionManager::Adopt(const std::string& tenant,
                                                               const std::string& id) {
  if (!store_->HasSession(tenant, id)) {
    auto lease = leases_->Read(tenant, id);
    if (lease.ok() && leases_->HeldElsewhere(tenant, id)) {
      leases_->RequestHandover(tenant, id);
      return absl::UnavailableError(absl::StrCat(
          "session ", Quote(id), " lives on replica ", Quote(lease->owner),
          " and is not in the shared store yet; asked it to hand the session over, retry"));
    }
    return absl::NotFoundError("not in the store");
  }
  auto acquired = leases_->Acquire(tenant, id);
  if (absl::IsUnavailable(acquired.status())) {
    // The proxy sends the session's calls here now: its owner hands it over once idle.
    leases_->RequestHandover(tenant, id);
    return absl::UnavailableError(absl::StrCat(acquired.status().message(),
                                               " (asked it to hand the session over)"));
  }
  if (!acquired.ok()) return acquired.status();
  const int64_t generation = *acquired;
  leases_->ClearHandover(tenant, id);
  auto meta = store_->InspectSession(tenant, id);
  absl::Status refused;
  if (!meta.ok()) {
    refused = absl::DataLossError(absl::StrCat("session ", Quote(id),
                                               " in the shared store cannot be loaded: ",
                                               meta.status().message()));
  } else if (meta->model_fingerprint != model_->fingerprint()) {
    refused = absl::FailedPreconditionError(absl::StrCat(
        "session ", Quote(id), " in the shared store was written by another model (",
        meta->model_fingerprint, "); replicas sharing a store must serve the same model"));
  }
  std::lock_guard<std::mutex> lock(mu_);
  auto& by_id = sessions_[tenant];
  if (auto it = by_id.find(id); it != by_id.end()) return it->second;  // adopted meanwhile
  if (refused.ok()) refused = CheckSessionLimit(session_count_);
  if (!refused.ok()) {
    leases_->Release(tenant, id, generation);
    return refused;
  }
  auto s = std::make_shared<Session>(id, tenant, next_key_++, meta->options,
                                     meta->created_unix_ms);
  {
    std::lock_guard<std::mutex> slock(s->mu);
    s->counters = meta->counters;
    s->resident = false;  // its state loads on first use (EnsureResident)
    s->lease_generation = generation;
    s->lease_renewed_ms = leases_->Now();
    s->persisted_ms = NowMs();
  }
  by_id[id] = s;
  ++session_count_;
  std::fprintf(stderr, "ttt-serve: took over session %s of tenant %s (lease generation %lld)\n",
               id.c_str(), tenant.c_str(), static_cast<long long>(generation));
  return s;
}

// `why` OK: handed over on purpose (shutdown), nothing to log.
void SessionManager::Disown(const std::shared_ptr<Session>& s, const absl::Status& why) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto t = sessions_.find(s->tenant);
    if (t != sessions_.end()) {
      auto it = t->second.find(s->id);
      if (it != t->second.end() && it->second == s) {
        t->second.erase(it);
        --session_count_;
      }
    }
  }
  {
    std::lock_guard<std::mutex> lock(s->mu);
    if (s->deleted) return;
    s->deleted = true;
    s->lease_generation = 0;  // every later write of it here fails its fence
    for (auto& w : s->cancels) {
      if (auto c = w.lock()) c->Cancel();
    }
  }
  if (!why.ok()) {
    std::fprintf(stderr, "ttt-serve: session %s of tenant %s is no longer this replica's: %s\n",
                 s->id.c_str(), s->tenant.c_str(), std::string(why.message()).c_str());
  }
  // Its files are the new owner's; only the state here goes, after the work queued on it.
  engine::Work w;
  w.key = s->key;
  w.task = [s] { s->state = engine::SequenceState{}; };
  (void)scheduler_->Submit(std::move(w), /*bypass_limits=*/true);
}

void SessionManager::MaintainNow() {
  RenewLeases();
  WriteBehind();
}

void SessionManager::RenewLeases() {
  if (leases_ == nullptr) return;
  std::vector<std::pair<std::shared_ptr<Session>, int64_t>> due;
  const int64_t now = leases_->Now();
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [tenant, by_id] : sessions_) {
      for (auto& [id, s] : by_id) {
        std::lock_guard<std::mutex> slock(s->mu);
        // A third of the lease: the reaper passes at most every half lease (Create checks),
        // so a lease is renewed well before it ends.
        if (s->lease_generation > 0 && now - s->lease_renewed_ms >= leases_->lease_ms() / 3) {
          due.emplace_back(s, s->lease_generation);
        }
      }
    }
  }
  for (auto& [s, generation] : due) {
    absl::Status renewed = leases_->Renew(s->tenant, s->id, generation);
    if (!renewed.ok()) {
      Disown(s, renewed);
      continue;
    }
    {
      std::lock_guard<std::mutex> lock(s->mu);
      s->lease_renewed_ms = now;
    }
    if (leases_->HandoverRequested(s->tenant, s->id)) HandOver(s);
  }
}

void SessionManager::HandOver(const std::shared_ptr<Session>& s) {
  engine::Work w;
  w.key = s->key;
  // On the engine, after the work queued on the session: the copy written is its latest state.
  w.task = [this, s, leases = leases_] {
    bool changed;  // since its store copy
    {
      std::lock_guard<std::mutex> lock(s->mu);
      if (s->deleted || s->inflight > 0 || s->writer) return;  // busy: asked again next renewal
      changed = s->resident && s->dirty;
    }
    if (changed) {
      absl::StatusOr<int64_t> written = WriteSessionFile(s);
      if (!written.ok()) return;  // kept (a failed fence has disowned it already)
    }
    int64_t generation;
    {
      std::lock_guard<std::mutex> lock(s->mu);
      generation = s->lease_generation;
    }
    // Forgotten here before the lease goes: the other replica may take it over at once, and
    // nothing of this manager is touched after the release.
    Disown(s, absl::OkStatus());
    std::fprintf(stderr, "ttt-serve: handing session %s of tenant %s over on request\n",
                 s->id.c_str(), s->tenant.c_str());
    leases->Release(s->tenant, s->id, generation);
  };
  (void)scheduler_->Submit(std::move(w), /*bypass_limits=*/true);
}

void SessionManager::WriteBehind() {
  if (options_.persist_interval_ms <= 0) return;
  const int64_t now = NowMs();
  std::vector<std::shared_ptr<Session>> due;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [tenant, by_id] : sessions_) {
      for (auto& [id, s] : by_id) {
        std::lock_guard<std::mutex> slock(s->mu);
        const bool stale =
            s->persisted_ms == 0 || now - s->persisted_ms >= options_.persist_interval_ms;
        if (s->dirty && stale && s->resident && !s->evicting && !s->persist_queued) {
          s->persist_queued = true;
          due.push_back(s);
        }
      }
    }
  }
  for (auto& s : due) {
    engine::Work w;
    w.key = s->key;
    // After the work already queued on the session: the copy is a state between two writes.
    w.task = [this, s] {
      {
        std::lock_guard<std::mutex> lock(s->mu);
        s->persist_queued = false;
        if (s->deleted || !s->resident || !s->dirty) return;
      }
      absl::StatusOr<int64_t> written = WriteSessionFile(s);
      if (!written.ok()) {
        std::fprintf(stderr, "ttt-serve: write-behind of session %s failed: %s\n", s->id.c_str(),
                     std::string(written.status().message()).c_str());
      }
    };
    if (!scheduler_->Submit(std::move(w), /*bypass_limits=*/true).ok()) {
      std::lock_guard<std::mutex> lock(s->mu);
      s->persist_queued = false;
    }
  }
}

}  // namespace ttt::session
