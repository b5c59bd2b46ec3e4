// One session's record: its identity, guarded bookkeeping (options, counters, the writer flag,
// operations in flight) and the engine-owned SequenceState. Shared by the manager's files.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "engine/compact.h"
#include "engine/scheduler.h"
#include "engine/sequence.h"
#include "session/internal/buffer_census.h"
#include "session/internal/state_cache.h"
#include "session/session.h"

namespace ttt::session {

inline int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// The acknowledgement of one done Ingest message.
struct PendingIngestAck {
  bool needs_commit = false;  // applied in sync mode: acknowledged only once committed
  std::function<void(const absl::Status& committed)> acknowledge;
};

// One session. Bookkeeping is guarded by mu; `state` belongs to the engine thread (only work
// queued under `key` touches it), except before the session is published.
class Session {
 public:
  // `census` (may be null: a record never published) counts the buffers its state holds.
  Session(std::string id_in, std::string tenant_in, uint64_t key_in, SessionOptions opts,
          int64_t created, std::shared_ptr<internal::BufferCensus> census_in = nullptr)
      : id(std::move(id_in)),
        tenant(std::move(tenant_in)),
        key(key_in),
        census(std::move(census_in)),
        options(std::move(opts)),
        created_ms(created),
        last_used_ms(created) {}
  ~Session() {
    if (census != nullptr) census->Replace(held, {});
  }

  const std::string id;
  const std::string tenant;
  const uint64_t key;  // scheduler key
  const std::shared_ptr<internal::BufferCensus> census;

  mutable std::mutex mu;
  SessionOptions options;  // guarded by mu
  Counters counters;       // guarded by mu
  // The buffers its state holds (empty while evicted), as the census and the pool see them;
  // a fork shares its parent's until one of them writes. Guarded by mu.
  std::vector<engine::HeldBuffer> held;
  int64_t memory_bytes = 0;  // bytes of `held`, shared ones whole; guarded by mu
  std::vector<std::pair<int64_t, double>> delta_norms;  // guarded by mu
  int64_t created_ms;                                   // guarded by mu
  int64_t last_used_ms;                                 // guarded by mu
  bool resident = true;                                 // guarded by mu
  bool compact = false;     // its state is compact (engine/compact.h); guarded by mu
  bool writer = false;      // guarded by mu
  std::string writer_what;  // guarded by mu
  int64_t inflight = 0;     // operations admitted and not finished; guarded by mu
  bool deleted = false;     // guarded by mu
  bool evicting = false;    // guarded by mu
  // Written by a writer since its last copy in the store (write-behind picks it up); mu.
  bool dirty = false;
  int64_t persisted_ms = 0;  // when its state was last written to the store; guarded by mu
  // The counters of that copy: where a sync Ingest whose write failed goes back to; mu.
  Counters durable_counters;
  bool persist_queued = false;   // a write-behind is queued; guarded by mu
  bool handover_queued = false;  // a handover on request is queued; guarded by mu
  // Shared through etcd (ManagerOptions::cluster): the fencing revision of this process's
  // ownership (0: not owned, so every later commit here fails), the blob its committed head
  // names, and the commits made under this ownership (they name the next blob); guarded by mu.
  int64_t fence = 0;
  std::string head_blob;
  int64_t commits = 0;
  std::vector<std::weak_ptr<engine::CancelToken>> cancels;  // guarded by mu
  // Sync durability commits a run of queued Ingest messages once, after the last of them: the
  // messages submitted and not yet done, and the acknowledgements of those done that wait for
  // that commit (in submission order; each takes the commit's outcome). Guarded by mu.
  int64_t ingests_queued = 0;
  std::vector<PendingIngestAck> awaiting_commit;

  // Engine thread only.
  engine::SequenceState state;
  // Where `state` is on its path from a base (the state cache's key); untracked until known
  // (a state from a file is rebased at its first Ingest). Engine thread, set with `state`.
  internal::StatePath path;

  SessionInfo InfoLocked() const {
    SessionInfo info;
    info.id = id;
    info.tenant = tenant;
    info.options = options;
    info.counters = counters;
    // Its share: a buffer held with forks counts in part, so the sessions' figures add up.
    info.memory_bytes = census != nullptr ? census->ShareOf(held) : memory_bytes;
    info.delta_norms = delta_norms;
    info.create_time_unix_ms = created_ms;
    info.last_used_unix_ms = last_used_ms;
    info.resident = resident;
    info.compact = resident && compact;
    info.writer_active = writer;
    return info;
  }
  SessionInfo Info() const {
    std::lock_guard<std::mutex> lock(mu);
    return InfoLocked();
  }
  // Shared through etcd: what deleting the session on the cluster needs (the fence and the
  // head's blob), taken once: the fence here becomes 0, so nothing deletes it twice.
  struct Ownership {
    int64_t fence = 0;
    std::string blob;
  };
  Ownership TakeOwnership() {
    std::lock_guard<std::mutex> lock(mu);
    Ownership owned{fence, head_blob};
    fence = 0;
    return owned;
  }

  // Engine thread (or before publication), mu held: derived figures from the state.
  void RefreshLocked() {
    counters.position = state.position();
    counters.tokens_pending = state.PendingTokens();
    compact = engine::IsCompact(state);
    SetHeldLocked(state.HeldBuffers());
    const std::vector<double> norms = state.DeltaNorms();
    const std::vector<int64_t> layers = state.TttLayers();
    delta_norms.clear();
    for (size_t i = 0; i < norms.size() && i < layers.size(); ++i) {
      delta_norms.emplace_back(layers[i], norms[i]);
    }
  }
  // Engine thread: bytes of the buffers `copy` (a fork of this session's state) holds that the
  // session's state does not: what the copy costs beyond the session.
  int64_t BytesBeyond(const engine::SequenceState& copy) const {
    std::lock_guard<std::mutex> lock(mu);
    int64_t bytes = 0;
    for (const engine::HeldBuffer& b : copy.HeldBuffers()) {
      const bool shared = std::any_of(held.begin(), held.end(), [&](const engine::HeldBuffer& h) {
        return h.identity == b.identity;
      });
      if (!shared) bytes += b.bytes;
    }
    return bytes;
  }
  // mu held: the state now holds `now` (empty once it is released or evicted).
  void SetHeldLocked(std::vector<engine::HeldBuffer> now) {
    if (census != nullptr) census->Replace(held, now);
    held = std::move(now);
    memory_bytes = 0;
    for (const engine::HeldBuffer& b : held) memory_bytes += b.bytes;
  }
  // Engine thread, mu held, after a write: counts `tokens` received and the chunk updates since
  // `chunks_before` (each of `chunk` tokens). Returns the chunks; the caller refreshes.
  int64_t AccountWriteLocked(int64_t tokens, int64_t chunks_before, int64_t chunk) {
    const int64_t chunks = std::max<int64_t>(0, state.chunks_applied() - chunks_before);
    dirty = true;
    counters.tokens_received += tokens;
    counters.chunks_applied += chunks;
    counters.tokens_applied += chunks * chunk;
    return chunks;
  }
  void BeginOp(const std::shared_ptr<engine::CancelToken>& cancel) {
    std::lock_guard<std::mutex> lock(mu);
    ++inflight;
    last_used_ms = NowMs();
    if (cancel) {
      cancels.erase(
          std::remove_if(cancels.begin(), cancels.end(), [](const auto& w) { return w.expired(); }),
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

}  // namespace ttt::session
