// Sessions and the SessionManager (see session.h for the model of concurrency).
#include "session/session.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <system_error>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"
#include "session/internal/checkpoint.h"

namespace ttt::session {

namespace fs = std::filesystem;

namespace {

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string RandomHex(int digits) {
  static thread_local std::mt19937_64 rng(std::random_device{}() ^
                                          static_cast<uint64_t>(NowMs()));
  static const char* kHex = "0123456789abcdef";
  std::string s;
  for (int i = 0; i < digits; ++i) s.push_back(kHex[rng() & 15]);
  return s;
}

// [A-Za-z0-9._-]{1,max}, not starting with '.'.
absl::Status ValidateName(const std::string& name, const char* what, size_t max_len) {
  if (name.empty() || name.size() > max_len) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " must be 1..", max_len, " characters, got ", name.size()));
  }
  if (name[0] == '.') {
    return absl::InvalidArgumentError(absl::StrCat(what, " '", name, "' must not start with '.'"));
  }
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, " '", name, "' has a character outside [A-Za-z0-9._-]"));
    }
  }
  return absl::OkStatus();
}

void RemoveQuietly(const fs::path& p) {
  std::error_code ec;
  fs::remove(p, ec);
}

}  // namespace

// One session. Bookkeeping is guarded by mu; `state` belongs to the engine thread (only work
// queued under `key` touches it), except before the session is published.
class Session {
 public:
  Session(std::string id_in, std::string tenant_in, uint64_t key_in, SessionOptions opts,
          int64_t created)
      : id(std::move(id_in)), tenant(std::move(tenant_in)), key(key_in), options(std::move(opts)),
        created_ms(created), last_used_ms(created) {}

  const std::string id;
  const std::string tenant;
  const uint64_t key;  // scheduler key

  mutable std::mutex mu;
  SessionOptions options;                               // guarded by mu
  Counters counters;                                    // guarded by mu
  int64_t memory_bytes = 0;                             // guarded by mu
  std::vector<std::pair<int64_t, double>> delta_norms;  // guarded by mu
  int64_t created_ms;                                   // guarded by mu
  int64_t last_used_ms;                                 // guarded by mu
  bool resident = true;                                 // guarded by mu
  bool writer = false;                                  // guarded by mu
  std::string writer_what;                              // guarded by mu
  int64_t inflight = 0;  // operations admitted and not finished; guarded by mu
  bool deleted = false;   // guarded by mu
  bool evicting = false;  // guarded by mu
  std::vector<std::weak_ptr<engine::CancelToken>> cancels;  // guarded by mu

  // Engine thread only.
  engine::SequenceState state;
  fs::path spill;  // where the state lies while evicted (or was persisted)

  SessionInfo InfoLocked() const {
    SessionInfo info;
    info.id = id;
    info.tenant = tenant;
    info.options = options;
    info.counters = counters;
    info.memory_bytes = memory_bytes;
    info.delta_norms = delta_norms;
    info.create_time_unix_ms = created_ms;
    info.last_used_unix_ms = last_used_ms;
    info.resident = resident;
    info.writer_active = writer;
    return info;
  }
  SessionInfo Info() const {
    std::lock_guard<std::mutex> lock(mu);
    return InfoLocked();
  }
  // Engine thread (or before publication), mu held: derived figures from the state.
  void RefreshLocked() {
    counters.position = state.position;
    counters.tokens_pending = state.PendingTokens();
    memory_bytes = state.MemoryBytes();
    const std::vector<double> norms = state.DeltaNorms();
    delta_norms.clear();
    for (size_t i = 0; i < norms.size() && i < state.ttt.size(); ++i) {
      delta_norms.emplace_back(state.ttt[i].layer, norms[i]);
    }
  }
  void BeginOp(const std::shared_ptr<engine::CancelToken>& cancel) {
    std::lock_guard<std::mutex> lock(mu);
    ++inflight;
    last_used_ms = NowMs();
    if (cancel) {
      cancels.erase(std::remove_if(cancels.begin(), cancels.end(),
                                   [](const auto& w) { return w.expired(); }),
                    cancels.end());
      cancels.push_back(cancel);
    }
  }
  void EndOp() {
    std::lock_guard<std::mutex> lock(mu);
    --inflight;
    last_used_ms = NowMs();
  }
};

// ---------------------------------------------------------------------------------------------
// Writer

Writer::~Writer() {
  std::lock_guard<std::mutex> lock(session_->mu);
  session_->writer = false;
  session_->writer_what.clear();
  session_->last_used_ms = NowMs();
}

const std::string& Writer::session_id() const { return session_->id; }

absl::Status Writer::Ingest(std::vector<int32_t> tokens, bool end_of_document,
                            std::shared_ptr<engine::CancelToken> cancel,
                            std::function<void(absl::StatusOr<IngestProgress>)> done) {
  RETURN_IF_ERROR(manager_->ValidateTokens(tokens));
  return manager_->SubmitIngest(session_, std::move(tokens), end_of_document, std::move(cancel),
                                std::move(done));
}

// ---------------------------------------------------------------------------------------------
// SessionManager: lifecycle

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
  std::error_code ec;
  fs::create_directories(options.checkpoint_dir, ec);
  if (ec) {
    return absl::FailedPreconditionError(absl::StrCat("cannot create checkpoint directory ",
                                                      options.checkpoint_dir.string(), ": ",
                                                      ec.message()));
  }
  std::unique_ptr<SessionManager> m(new SessionManager(model, scheduler, options, listener));
  m->LoadPersisted();
  m->reaper_ = std::thread([raw = m.get()] { raw->ReaperLoop(); });
  return m;
}

SessionManager::SessionManager(const engine::Model* model, engine::Scheduler* scheduler,
                               const ManagerOptions& options, SessionListener* listener)
    : model_(model), scheduler_(scheduler), options_(options), listener_(listener) {}

SessionManager::~SessionManager() {
  {
    std::lock_guard<std::mutex> lock(reaper_mu_);
    stop_reaper_ = true;
  }
  reaper_cv_.notify_all();
  if (reaper_.joinable()) reaper_.join();
}

absl::Status SessionManager::ValidateTenant(const std::string& tenant) {
  return ValidateName(tenant, "tenant id (x-tenant-id)", 64);
}

fs::path SessionManager::TenantDir(const std::string& tenant) const {
  return options_.checkpoint_dir / tenant;
}
fs::path SessionManager::CheckpointPath(const std::string& tenant, const std::string& id) const {
  return TenantDir(tenant) / "checkpoints" / (id + ".safetensors");
}
fs::path SessionManager::SpillPath(const std::string& tenant, const std::string& id) const {
  return TenantDir(tenant) / "sessions" / (id + ".safetensors");
}

void SessionManager::LoadPersisted() {
  std::error_code ec;
  for (const auto& tenant_dir : fs::directory_iterator(options_.checkpoint_dir, ec)) {
    const std::string tenant = tenant_dir.path().filename().string();
    if (!ValidateTenant(tenant).ok()) continue;
    const fs::path dir = tenant_dir.path() / "sessions";
    std::error_code ec2;
    for (const auto& entry : fs::directory_iterator(dir, ec2)) {
      if (entry.path().extension() != ".safetensors") continue;
      auto meta = internal::ReadCheckpointMeta(entry.path().string());
      if (!meta.ok()) {
        std::fprintf(stderr, "ttt-serve: skipping persisted session %s: %s\n",
                     entry.path().c_str(), std::string(meta.status().message()).c_str());
        continue;
      }
      if (meta->model_fingerprint != model_->fingerprint()) {
        std::fprintf(stderr, "ttt-serve: skipping persisted session %s: another model's\n",
                     entry.path().c_str());
        continue;
      }
      const std::string id = entry.path().stem().string();
      if (!ValidateName(id, "session id", 128).ok() || meta->session_id != id) continue;
      auto s = std::make_shared<Session>(id, tenant, next_key_++, meta->options,
                                         meta->created_unix_ms);
      s->counters = meta->counters;
      s->resident = false;
      s->spill = entry.path();
      std::lock_guard<std::mutex> lock(mu_);
      sessions_[tenant][id] = std::move(s);
      ++session_count_;
    }
  }
}

void SessionManager::ReaperLoop() {
  std::unique_lock<std::mutex> lock(reaper_mu_);
  while (!stop_reaper_) {
    reaper_cv_.wait_for(lock, std::chrono::milliseconds(options_.reaper_interval_ms));
    if (stop_reaper_) break;
    lock.unlock();
    ReapNow();
    lock.lock();
  }
}

void SessionManager::ReapNow() {
  const int64_t now = NowMs();
  std::vector<std::shared_ptr<Session>> expired;
  std::vector<std::shared_ptr<Session>> idle_resident;
  int64_t resident_bytes = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [tenant, by_id] : sessions_) {
      for (auto it = by_id.begin(); it != by_id.end();) {
        Session& s = *it->second;
        std::lock_guard<std::mutex> slock(s.mu);
        const int64_t ttl =
            s.options.idle_ttl_seconds > 0 ? s.options.idle_ttl_seconds : options_.idle_ttl_seconds;
        const bool idle = s.inflight == 0 && !s.writer;
        if (idle && now - s.last_used_ms > ttl * 1000) {
          s.deleted = true;
          expired.push_back(it->second);
          it = by_id.erase(it);
          --session_count_;
          continue;
        }
        if (s.resident) {
          resident_bytes += s.memory_bytes;
          if (idle && !s.evicting) idle_resident.push_back(it->second);
        }
        ++it;
      }
    }
  }
  for (auto& s : expired) {
    engine::Work w;
    w.key = s->key;
    w.task = [s, this] {
      RemoveQuietly(s->spill.empty() ? SpillPath(s->tenant, s->id) : s->spill);
      s->state = engine::SequenceState{};
    };
    (void)scheduler_->Submit(std::move(w), /*bypass_limits=*/true);
  }
  if (resident_bytes <= options_.memory_budget_bytes) return;
  // Least recently used first (times copied out: a comparator must not take two locks).
  std::vector<std::pair<int64_t, std::shared_ptr<Session>>> by_age;
  for (auto& s : idle_resident) {
    std::lock_guard<std::mutex> lock(s->mu);
    by_age.emplace_back(s->last_used_ms, s);
  }
  std::sort(by_age.begin(), by_age.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  idle_resident.clear();
  for (auto& [t, s] : by_age) idle_resident.push_back(std::move(s));
  for (auto& s : idle_resident) {
    if (resident_bytes <= options_.memory_budget_bytes) break;
    int64_t bytes;
    {
      std::lock_guard<std::mutex> lock(s->mu);
      bytes = s->memory_bytes;
    }
    Evict(s);
    resident_bytes -= bytes;
  }
}

void SessionManager::Evict(const std::shared_ptr<Session>& s) {
  {
    std::lock_guard<std::mutex> lock(s->mu);
    if (!s->resident || s->inflight > 0 || s->writer || s->evicting || s->deleted) return;
    s->evicting = true;
  }
  engine::Work w;
  w.key = s->key;
  w.task = [this, s] {
    {
      std::lock_guard<std::mutex> lock(s->mu);
      if (s->deleted || s->inflight > 0 || !s->resident) {
        s->evicting = false;
        return;  // someone uses it again: keep it
      }
    }
    const fs::path path = SpillPath(s->tenant, s->id);
    std::error_code ec;
    fs::create_directories(path.parent_path(), ec);
    auto bytes = EncodeSession(*s, "");
    absl::Status written = bytes.ok() ? engine::WriteFileAtomically(path, *bytes) : bytes.status();
    std::lock_guard<std::mutex> lock(s->mu);
    s->evicting = false;
    if (!written.ok()) {
      std::fprintf(stderr, "ttt-serve: eviction of %s failed: %s\n", s->id.c_str(),
                   std::string(written.message()).c_str());
      return;
    }
    s->state = engine::SequenceState{};
    s->spill = path;
    s->resident = false;
    s->memory_bytes = 0;
    if (listener_ != nullptr) listener_->OnEvicted();
  };
  (void)scheduler_->Submit(std::move(w), /*bypass_limits=*/true);
}

absl::Status SessionManager::PersistAll() {
  std::vector<std::shared_ptr<Session>> all;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [tenant, by_id] : sessions_) {
      for (auto& [id, s] : by_id) all.push_back(s);
    }
  }
  absl::Status first;
  for (auto& s : all) {
    absl::Status result;
    absl::Status ran = scheduler_->RunAndWait(s->key, [&] {
      {
        std::lock_guard<std::mutex> lock(s->mu);
        if (!s->resident || s->deleted) return;
      }
      const fs::path path = SpillPath(s->tenant, s->id);
      std::error_code ec;
      fs::create_directories(path.parent_path(), ec);
      auto bytes = EncodeSession(*s, "");
      result = bytes.ok() ? engine::WriteFileAtomically(path, *bytes) : bytes.status();
      if (result.ok()) {
        std::lock_guard<std::mutex> lock(s->mu);
        s->spill = path;
        if (listener_ != nullptr) listener_->OnCheckpointWritten(bytes->size(), 0.0);
      }
    });
    if (!ran.ok()) result = ran;
    if (!result.ok() && first.ok()) first = result;
  }
  return first;
}

int64_t SessionManager::session_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return session_count_;
}

int64_t SessionManager::resident_memory_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  int64_t total = 0;
  for (const auto& [tenant, by_id] : sessions_) {
    for (const auto& [id, s] : by_id) {
      std::lock_guard<std::mutex> slock(s->mu);
      if (s->resident) total += s->memory_bytes;
    }
  }
  return total;
}

// ---------------------------------------------------------------------------------------------
// Bookkeeping

absl::Status SessionManager::SubmitOp(Session& s, engine::Work work,
                                      const std::shared_ptr<engine::CancelToken>& cancel) {
  s.BeginOp(cancel);
  absl::Status submitted = scheduler_->Submit(std::move(work));
  if (!submitted.ok()) s.EndOp();  // refused: the operation never started
  return submitted;
}

absl::StatusOr<std::shared_ptr<Session>> SessionManager::Find(const std::string& tenant,
                                                              const std::string& id) {
  if (id.empty()) return absl::InvalidArgumentError("session_id is required");
  std::lock_guard<std::mutex> lock(mu_);
  auto t = sessions_.find(tenant);
  if (t != sessions_.end()) {
    auto it = t->second.find(id);
    if (it != t->second.end()) return it->second;
  }
  // Another tenant's session answers the same: its existence is not revealed.
  return absl::NotFoundError(absl::StrCat("session '", id, "' not found (deleted, expired, or ",
                                          "never created for tenant '", tenant, "')"));
}

absl::Status SessionManager::ValidateTokens(const std::vector<int32_t>& tokens) const {
  const int64_t vocab = model_->config().vocab_size;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= vocab) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", tokens[i], " at index ", i,
                                                      " is outside the vocabulary [0, ", vocab,
                                                      ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status SessionManager::ValidateOptions(const SessionOptions& options) const {
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
  if (options.idle_ttl_seconds < 0 || options.idle_ttl_seconds > 30LL * 24 * 3600) {
    return absl::InvalidArgumentError(absl::StrCat(
        "idle_ttl_seconds must be in [0, 2592000] (0 = server default), got ",
        options.idle_ttl_seconds));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<Session>> SessionManager::Insert(const std::string& tenant,
                                                                const SessionOptions& options,
                                                                engine::SequenceState state,
                                                                const Counters& counters) {
  RETURN_IF_ERROR(ValidateTenant(tenant));
  RETURN_IF_ERROR(ValidateOptions(options));
  std::lock_guard<std::mutex> lock(mu_);
  if (session_count_ >= options_.max_sessions) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the server is at its session limit (", options_.max_sessions,
        " sessions, --max_sessions); delete sessions you no longer need or retry later"));
  }
  std::string id;
  do {
    id = "s-" + RandomHex(16);
  } while (sessions_[tenant].count(id) > 0);
  auto s = std::make_shared<Session>(id, tenant, next_key_++, options, NowMs());
  s->state = std::move(state);
  {
    std::lock_guard<std::mutex> slock(s->mu);
    s->counters = counters;
    s->RefreshLocked();
  }
  sessions_[tenant][id] = s;
  ++session_count_;
  return s;
}

absl::Status SessionManager::EnsureResident(Session& s) {
  {
    std::lock_guard<std::mutex> lock(s.mu);
    if (s.resident) return absl::OkStatus();
  }
  auto bytes = internal::ReadFile(s.spill.string());
  if (!bytes.ok()) {
    return absl::DataLossError(absl::StrCat("session ", s.id,
                                            " could not be reloaded from disk: ",
                                            bytes.status().message()));
  }
  auto decoded = internal::DecodeCheckpoint(std::move(*bytes), s.spill.string(), *model_);
  if (!decoded.ok()) {
    return absl::Status(decoded.status().code(),
                        absl::StrCat("session ", s.id, " could not be reloaded from disk: ",
                                     decoded.status().message()));
  }
  s.state = std::move(decoded->state);
  RemoveQuietly(s.spill);
  std::lock_guard<std::mutex> lock(s.mu);
  s.resident = true;
  s.RefreshLocked();
  return absl::OkStatus();
}

absl::StatusOr<std::string> SessionManager::EncodeSession(Session& s,
                                                          const std::string& checkpoint_id) {
  internal::CheckpointMeta meta;
  meta.model_fingerprint = model_->fingerprint();
  meta.tenant = s.tenant;
  meta.session_id = s.id;
  meta.checkpoint_id = checkpoint_id;
  meta.created_unix_ms = NowMs();
  {
    std::lock_guard<std::mutex> lock(s.mu);
    meta.counters = s.counters;
    meta.options = s.options;
  }
  return internal::EncodeCheckpoint(s.state, meta);
}

// ---------------------------------------------------------------------------------------------
// Sessions

absl::StatusOr<SessionInfo> SessionManager::CreateSession(const std::string& tenant,
                                                          const SessionOptions& options) {
  ASSIGN_OR_RETURN(auto s, Insert(tenant, options, model_->NewSequence(), Counters{}));
  return s->Info();
}

absl::StatusOr<SessionInfo> SessionManager::GetSession(const std::string& tenant,
                                                       const std::string& id) {
  ASSIGN_OR_RETURN(auto s, Find(tenant, id));
  return s->Info();
}

std::vector<SessionInfo> SessionManager::ListSessions(
    const std::string& tenant, const std::map<std::string, std::string>& selector) {
  std::vector<std::shared_ptr<Session>> found;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto t = sessions_.find(tenant);
    if (t != sessions_.end()) {
      for (auto& [id, s] : t->second) found.push_back(s);
    }
  }
  std::vector<SessionInfo> out;
  for (auto& s : found) {
    SessionInfo info = s->Info();
    bool match = true;
    for (const auto& [k, v] : selector) {
      auto it = info.options.labels.find(k);
      match = match && it != info.options.labels.end() && it->second == v;
    }
    if (match) out.push_back(std::move(info));
  }
  return out;
}

absl::Status SessionManager::DeleteSession(const std::string& tenant, const std::string& id) {
  ASSIGN_OR_RETURN(auto s, Find(tenant, id));
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto& by_id = sessions_[tenant];
    if (by_id.erase(id) == 0) {
      return absl::NotFoundError(absl::StrCat("session '", id, "' not found"));
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
  // Drop the state and any spilled file on the engine thread, after the session's queued work.
  engine::Work w;
  w.key = s->key;
  w.task = [s, this] {
    RemoveQuietly(s->spill.empty() ? SpillPath(s->tenant, s->id) : s->spill);
    s->state = engine::SequenceState{};
  };
  (void)scheduler_->Submit(std::move(w), /*bypass_limits=*/true);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Writer>> SessionManager::OpenWriter(const std::string& tenant,
                                                                   const std::string& id,
                                                                   const std::string& what) {
  ASSIGN_OR_RETURN(auto s, Find(tenant, id));
  std::lock_guard<std::mutex> lock(s->mu);
  if (s->writer) {
    return absl::AbortedError(absl::StrCat(
        "session ", id, " is busy: ", s->writer_what,
        " is already writing to it; a session takes one writer at a time (Ingest, committing "
        "Generate, Reset, Restore), retry when that one finishes"));
  }
  s->writer = true;
  s->writer_what = what;
  return std::unique_ptr<Writer>(new Writer(this, s));
}

// ---------------------------------------------------------------------------------------------
// Ingest and scoring

absl::Status SessionManager::SubmitIngest(
    const std::shared_ptr<Session>& s, std::vector<int32_t> tokens, bool end_of_document,
    std::shared_ptr<engine::CancelToken> cancel,
    std::function<void(absl::StatusOr<IngestProgress>)> done) {
  if (!cancel) cancel = std::make_shared<engine::CancelToken>();
  struct Op {
    IngestProgress progress;
    int64_t chunks_before = 0;
  };
  auto op = std::make_shared<Op>();
  engine::Work w;
  w.key = s->key;
  w.state = &s->state;
  w.tokens = std::move(tokens);
  w.cancel = cancel;
  w.prepare = [this, s, op]() -> absl::Status {
    RETURN_IF_ERROR(EnsureResident(*s));
    op->chunks_before = s->state.chunks_applied;
    return absl::OkStatus();
  };
  w.on_progress = [op](absl::Span<const float> logprobs, int64_t) {
    op->progress.tokens += static_cast<int64_t>(logprobs.size());
    for (float lp : logprobs) {
      if (std::isfinite(lp)) {
        op->progress.nll_sum -= lp;
        ++op->progress.nll_count;
      }
    }
  };
  const int64_t chunk = model_->active_ttt_layers().empty() ? 0 : model_->config().ttt_chunk;
  w.on_done = [this, s, op, end_of_document, chunk, done = std::move(done)](absl::Status st) {
    int64_t chunks = 0;
    {
      std::lock_guard<std::mutex> lock(s->mu);
      if (s->resident) {
        chunks = s->state.chunks_applied - op->chunks_before;
        if (chunks < 0) chunks = 0;
        s->counters.tokens_received += op->progress.tokens;
        s->counters.chunks_applied += chunks;
        s->counters.tokens_applied += chunks * chunk;
        if (st.ok() && end_of_document) {
          ++s->counters.documents_completed;
          if (s->options.reset_at_document_end) model_->Reset(s->state);
        }
        s->RefreshLocked();
      }
      op->progress.counters = s->counters;
    }
    if (listener_ != nullptr && chunks > 0) listener_->OnChunkUpdates(chunks);
    s->EndOp();
    if (st.ok()) {
      done(op->progress);
    } else {
      done(st);
    }
  };
  return SubmitOp(*s, std::move(w), cancel);
}

absl::Status SessionManager::Score(const std::string& tenant, const std::string& id,
                                   std::vector<int32_t> tokens,
                                   std::shared_ptr<engine::CancelToken> cancel,
                                   std::function<void(absl::StatusOr<ScoreResult>)> done) {
  ASSIGN_OR_RETURN(auto s, Find(tenant, id));
  if (tokens.empty()) return absl::InvalidArgumentError("nothing to score: give text or token_ids");
  RETURN_IF_ERROR(ValidateTokens(tokens));
  if (!cancel) cancel = std::make_shared<engine::CancelToken>();
  auto scratch = std::make_shared<engine::SequenceState>();
  auto result = std::make_shared<ScoreResult>();
  result->tokens = tokens;
  engine::Work w;
  w.key = s->key;
  w.state = scratch.get();
  w.tokens = std::move(tokens);
  w.cancel = cancel;
  w.prepare = [this, s, scratch]() -> absl::Status {
    RETURN_IF_ERROR(EnsureResident(*s));
    *scratch = s->state.Clone();
    return absl::OkStatus();
  };
  w.on_progress = [result](absl::Span<const float> logprobs, int64_t) {
    result->logprobs.insert(result->logprobs.end(), logprobs.begin(), logprobs.end());
  };
  w.on_done = [s, scratch, result, done = std::move(done)](absl::Status st) {
    *scratch = engine::SequenceState{};
    s->EndOp();
    if (st.ok()) {
      done(std::move(*result));
    } else {
      done(st);
    }
  };
  return SubmitOp(*s, std::move(w), cancel);
}

// ---------------------------------------------------------------------------------------------
// Generation

namespace {

struct GenerateOp {
  std::shared_ptr<Session> session;
  std::unique_ptr<Writer> writer;  // when committing
  engine::SequenceState scratch;   // the copy generation runs on, unless committing
  engine::SequenceState* target = nullptr;
  GenerateParams params;
  engine::Sampler sampler;
  std::shared_ptr<engine::CancelToken> cancel;
  std::function<bool(int32_t, float)> on_token;
  std::function<void(absl::Status, FinishReason, int64_t)> done;
  int64_t generated = 0;
  int64_t position_before = 0;
  int64_t chunks_before = 0;
  std::optional<FinishReason> finish_after_ingest;
  explicit GenerateOp(const GenerateParams& p) : params(p), sampler(p.sampling) {}
};

}  // namespace

absl::Status SessionManager::Generate(const std::string& tenant, const std::string& id,
                                      GenerateParams params,
                                      std::shared_ptr<engine::CancelToken> cancel,
                                      std::function<bool(int32_t, float)> on_token,
                                      std::function<void(absl::Status, FinishReason, int64_t)> done) {
  ASSIGN_OR_RETURN(auto s, Find(tenant, id));
  RETURN_IF_ERROR(engine::ValidateSamplingParams(params.sampling));
  if (params.max_tokens < 1 || params.max_tokens > options_.max_generate_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("max_tokens must be in [1, ",
                                                   options_.max_generate_tokens, "], got ",
                                                   params.max_tokens));
  }
  RETURN_IF_ERROR(ValidateTokens(params.prompt));
  if (params.prompt.empty()) {
    std::lock_guard<std::mutex> lock(s->mu);
    if (s->counters.position == 0) {
      const int64_t bos = model_->config().bos_token_id;
      if (bos < 0 || bos >= model_->config().vocab_size) {
        return absl::FailedPreconditionError(
            "the session is empty and the model has no bos token: give a prompt");
      }
      params.prompt.push_back(static_cast<int32_t>(bos));
    }
  }
  if (!cancel) cancel = std::make_shared<engine::CancelToken>();
  auto op = std::make_shared<GenerateOp>(params);
  op->session = s;
  op->cancel = cancel;
  op->on_token = std::move(on_token);
  op->done = std::move(done);
  if (params.commit) {
    ASSIGN_OR_RETURN(op->writer, OpenWriter(tenant, id, "a committing Generate"));
    op->target = &s->state;
  } else {
    op->target = &op->scratch;
  }

  const int64_t chunk = model_->active_ttt_layers().empty() ? 0 : model_->config().ttt_chunk;
  // Ends the operation (engine thread). Commit bookkeeping, then the writer lease goes before
  // `done`, so the client's next write right after the last response is not refused.
  auto finish = [this, chunk](const std::shared_ptr<GenerateOp>& g, absl::Status st,
                              FinishReason reason) {
    Session& sess = *g->session;
    if (g->params.commit) {
      std::lock_guard<std::mutex> lock(sess.mu);
      if (sess.resident) {
        const int64_t chunks = std::max<int64_t>(0, sess.state.chunks_applied - g->chunks_before);
        sess.counters.tokens_received += std::max<int64_t>(0, sess.state.position - g->position_before);
        sess.counters.chunks_applied += chunks;
        sess.counters.tokens_applied += chunks * chunk;
        sess.counters.tokens_generated += g->generated;
        sess.RefreshLocked();
        if (listener_ != nullptr && chunks > 0) listener_->OnChunkUpdates(chunks);
      }
    }
    g->scratch = engine::SequenceState{};
    g->writer.reset();
    sess.EndOp();
    auto cb = std::move(g->done);
    g->on_token = nullptr;
    if (cb) cb(std::move(st), reason, g->generated);
  };
  // Runs after each ingest (prompt, then every decode step): samples the next token.
  auto step = std::make_shared<std::function<void(absl::Status)>>();
  std::weak_ptr<std::function<void(absl::Status)>> weak_step = step;
  *step = [this, op, finish, weak_step](absl::Status st) {
    GenerateOp& g = *op;
    if (!st.ok()) return finish(op, st, FinishReason::kLength);
    if (g.cancel->cancelled()) {
      return finish(op, absl::CancelledError("the request was cancelled"), FinishReason::kLength);
    }
    if (g.finish_after_ingest) return finish(op, absl::OkStatus(), *g.finish_after_ingest);
    if (g.generated >= g.params.max_tokens) {
      return finish(op, absl::OkStatus(), FinishReason::kLength);
    }
    if (!g.target->last_logits.defined()) {
      return finish(op, absl::FailedPreconditionError("the session has no context to continue"),
                    FinishReason::kLength);
    }
    at::Tensor logits = g.target->last_logits.to(at::kFloat).reshape({-1});
    int32_t token;
    float logprob;
    try {
      token = g.sampler.Sample(logits);
      logprob = at::log_softmax(logits, 0)[token].item<float>();
    } catch (const std::exception& e) {
      return finish(op, absl::InternalError(absl::StrCat("sampling failed: ", e.what())),
                    FinishReason::kLength);
    }
    const int64_t eos = model_->config().eos_token_id;
    if (g.params.stop_at_eos && eos >= 0 && token == eos) {
      return finish(op, absl::OkStatus(), FinishReason::kEos);
    }
    ++g.generated;
    const bool go_on = g.on_token ? g.on_token(token, logprob) : true;
    if (!go_on) g.finish_after_ingest = FinishReason::kStop;
    if (!g.params.commit) {
      if (!go_on) return finish(op, absl::OkStatus(), FinishReason::kStop);
      if (g.generated >= g.params.max_tokens) {
        return finish(op, absl::OkStatus(), FinishReason::kLength);
      }
    }
    auto self = weak_step.lock();
    engine::Work next;
    next.key = g.session->key;
    next.state = g.target;
    next.tokens = {token};
    next.cancel = g.cancel;
    next.on_done = [self](absl::Status s2) { (*self)(std::move(s2)); };
    absl::Status submitted = scheduler_->Submit(std::move(next), /*bypass_limits=*/true);
    if (!submitted.ok()) finish(op, submitted, FinishReason::kLength);
  };

  engine::Work w;
  w.key = s->key;
  w.state = op->target;
  w.tokens = params.prompt;
  w.cancel = cancel;
  w.prepare = [this, op]() -> absl::Status {
    RETURN_IF_ERROR(EnsureResident(*op->session));
    if (!op->params.commit) op->scratch = op->session->state.Clone();
    op->position_before = op->target->position;
    op->chunks_before = op->target->chunks_applied;
    return absl::OkStatus();
  };
  // The step function keeps itself alive through the chain of callbacks that hold it.
  w.on_done = [step](absl::Status st) { (*step)(std::move(st)); };
  absl::Status submitted = SubmitOp(*s, std::move(w), cancel);
  if (!submitted.ok()) op->writer.reset();
  return submitted;
}

// ---------------------------------------------------------------------------------------------
// Reset, fork, checkpoints

absl::Status SessionManager::Reset(const std::string& tenant, const std::string& id,
                                   std::function<void(absl::StatusOr<SessionInfo>)> done) {
  ASSIGN_OR_RETURN(std::shared_ptr<Writer> writer, OpenWriter(tenant, id, "a Reset"));
  ASSIGN_OR_RETURN(auto s, Find(tenant, id));
  engine::Work w;
  w.key = s->key;
  w.task = [this, s, writer = std::move(writer), done]() mutable {
    s->state = model_->NewSequence();
    RemoveQuietly(s->spill);
    {
      std::lock_guard<std::mutex> lock(s->mu);
      s->resident = true;
      s->counters = Counters{};
      s->RefreshLocked();
    }
    writer.reset();
    s->EndOp();
    done(s->Info());
  };
  return SubmitOp(*s, std::move(w), nullptr);
}

absl::Status SessionManager::Fork(const std::string& tenant, const std::string& id,
                                  std::optional<SessionOptions> options,
                                  std::function<void(absl::StatusOr<SessionInfo>)> done) {
  ASSIGN_OR_RETURN(auto s, Find(tenant, id));
  if (options) RETURN_IF_ERROR(ValidateOptions(*options));
  if (session_count() >= options_.max_sessions) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the server is at its session limit (", options_.max_sessions,
        " sessions, --max_sessions); delete sessions you no longer need or retry later"));
  }
  engine::Work w;
  w.key = s->key;
  w.task = [this, s, tenant, options, done]() {
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
    auto forked = Insert(tenant, opts, s->state.Clone(), counters);
    s->EndOp();
    if (!forked.ok()) return done(forked.status());
    done((*forked)->Info());
  };
  return SubmitOp(*s, std::move(w), nullptr);
}

absl::Status SessionManager::Checkpoint(const std::string& tenant, const std::string& id,
                                        const std::string& checkpoint_id,
                                        std::function<void(absl::StatusOr<CheckpointInfo>)> done) {
  ASSIGN_OR_RETURN(auto s, Find(tenant, id));
  std::string ckpt = checkpoint_id.empty() ? "ck-" + RandomHex(12) : checkpoint_id;
  RETURN_IF_ERROR(ValidateName(ckpt, "checkpoint_id", 128));
  engine::Work w;
  w.key = s->key;
  w.task = [this, s, ckpt, done]() {
    const auto start = std::chrono::steady_clock::now();
    absl::Status loaded = EnsureResident(*s);
    if (!loaded.ok()) {
      s->EndOp();
      return done(loaded);
    }
    auto bytes = EncodeSession(*s, ckpt);
    if (!bytes.ok()) {
      s->EndOp();
      return done(bytes.status());
    }
    const fs::path path = CheckpointPath(s->tenant, ckpt);
    std::error_code ec;
    fs::create_directories(path.parent_path(), ec);
    absl::Status written = engine::WriteFileAtomically(path, *bytes);
    CheckpointInfo info;
    info.id = ckpt;
    info.session_id = s->id;
    info.size_bytes = static_cast<int64_t>(bytes->size());
    info.create_time_unix_ms = NowMs();
    info.model_fingerprint = model_->fingerprint();
    {
      std::lock_guard<std::mutex> lock(s->mu);
      info.counters = s->counters;
      info.options = s->options;
    }
    s->EndOp();
    if (!written.ok()) return done(written);
    if (listener_ != nullptr) {
      listener_->OnCheckpointWritten(
          info.size_bytes,
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    done(info);
  };
  return SubmitOp(*s, std::move(w), nullptr);
}

absl::Status SessionManager::Restore(const std::string& tenant, const std::string& checkpoint_id,
                                     const std::string& target_session,
                                     std::optional<SessionOptions> options,
                                     std::function<void(absl::StatusOr<SessionInfo>)> done) {
  RETURN_IF_ERROR(ValidateTenant(tenant));
  RETURN_IF_ERROR(ValidateName(checkpoint_id, "checkpoint_id", 128));
  if (options) RETURN_IF_ERROR(ValidateOptions(*options));
  const fs::path path = CheckpointPath(tenant, checkpoint_id);
  if (!fs::exists(path)) {
    return absl::NotFoundError(absl::StrCat("checkpoint '", checkpoint_id, "' not found"));
  }
  ASSIGN_OR_RETURN(std::string bytes, internal::ReadFile(path.string()));
  ASSIGN_OR_RETURN(auto decoded, internal::DecodeCheckpoint(
                                     std::move(bytes), "'" + checkpoint_id + "'", *model_));
  if (target_session.empty()) {
    ASSIGN_OR_RETURN(auto s, Insert(tenant, options ? *options : decoded.meta.options,
                                    std::move(decoded.state), decoded.meta.counters));
    done(s->Info());
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(std::shared_ptr<Writer> writer, OpenWriter(tenant, target_session, "a Restore"));
  ASSIGN_OR_RETURN(auto s, Find(tenant, target_session));
  auto shared = std::make_shared<internal::DecodedCheckpoint>(std::move(decoded));
  engine::Work w;
  w.key = s->key;
  w.task = [s, shared, writer = std::move(writer), options, done]() mutable {
    s->state = std::move(shared->state);
    RemoveQuietly(s->spill);
    {
      std::lock_guard<std::mutex> lock(s->mu);
      s->resident = true;
      s->counters = shared->meta.counters;
      if (options) s->options = *options;
      s->RefreshLocked();
    }
    writer.reset();
    s->EndOp();
    done(s->Info());
  };
  return SubmitOp(*s, std::move(w), nullptr);
}

absl::StatusOr<std::vector<CheckpointInfo>> SessionManager::ListCheckpoints(
    const std::string& tenant) {
  RETURN_IF_ERROR(ValidateTenant(tenant));
  std::vector<CheckpointInfo> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(TenantDir(tenant) / "checkpoints", ec)) {
    if (entry.path().extension() != ".safetensors") continue;
    auto meta = internal::ReadCheckpointMeta(entry.path().string());
    CheckpointInfo info;
    info.id = entry.path().stem().string();
    std::error_code ec2;
    info.size_bytes = static_cast<int64_t>(fs::file_size(entry.path(), ec2));
    if (meta.ok()) {
      info.session_id = meta->session_id;
      info.create_time_unix_ms = meta->created_unix_ms;
      info.model_fingerprint = meta->model_fingerprint;
      info.counters = meta->counters;
      info.options = meta->options;
    }
    out.push_back(std::move(info));
  }
  std::sort(out.begin(), out.end(),
            [](const CheckpointInfo& a, const CheckpointInfo& b) { return a.id < b.id; });
  return out;
}

absl::Status SessionManager::DeleteCheckpoint(const std::string& tenant,
                                              const std::string& checkpoint_id) {
  RETURN_IF_ERROR(ValidateTenant(tenant));
  RETURN_IF_ERROR(ValidateName(checkpoint_id, "checkpoint_id", 128));
  std::error_code ec;
  if (!fs::remove(CheckpointPath(tenant, checkpoint_id), ec)) {
    return absl::NotFoundError(absl::StrCat("checkpoint '", checkpoint_id, "' not found"));
  }
  return absl::OkStatus();
}

absl::Status SessionManager::ExportSession(const std::string& tenant, const std::string& id,
                                           std::function<void(absl::StatusOr<std::string>)> done) {
  ASSIGN_OR_RETURN(auto s, Find(tenant, id));
  engine::Work w;
  w.key = s->key;
  w.task = [this, s, done]() {
    absl::Status loaded = EnsureResident(*s);
    auto bytes = loaded.ok() ? EncodeSession(*s, "") : absl::StatusOr<std::string>(loaded);
    s->EndOp();
    done(std::move(bytes));
  };
  return SubmitOp(*s, std::move(w), nullptr);
}

absl::StatusOr<std::string> SessionManager::ExportCheckpoint(const std::string& tenant,
                                                             const std::string& checkpoint_id) {
  RETURN_IF_ERROR(ValidateTenant(tenant));
  RETURN_IF_ERROR(ValidateName(checkpoint_id, "checkpoint_id", 128));
  const fs::path path = CheckpointPath(tenant, checkpoint_id);
  if (!fs::exists(path)) {
    return absl::NotFoundError(absl::StrCat("checkpoint '", checkpoint_id, "' not found"));
  }
  return internal::ReadFile(path.string());
}

absl::StatusOr<SessionInfo> SessionManager::ImportSession(const std::string& tenant,
                                                          std::string bytes,
                                                          std::optional<SessionOptions> options) {
  RETURN_IF_ERROR(ValidateTenant(tenant));
  if (static_cast<int64_t>(bytes.size()) > options_.max_checkpoint_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("import of ", bytes.size(),
                                                     " bytes exceeds the limit of ",
                                                     options_.max_checkpoint_bytes, " bytes"));
  }
  if (bytes.empty()) return absl::InvalidArgumentError("import carried no bytes");
  ASSIGN_OR_RETURN(auto decoded,
                   internal::DecodeCheckpoint(std::move(bytes), "(imported bytes)", *model_));
  if (options) RETURN_IF_ERROR(ValidateOptions(*options));
  ASSIGN_OR_RETURN(auto s, Insert(tenant, options ? *options : decoded.meta.options,
                                  std::move(decoded.state), decoded.meta.counters));
  return s->Info();
}

}  // namespace ttt::session
