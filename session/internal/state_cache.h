// A cache of adapted states (issue 27): when many sessions read the same document from the same
// starting state, the first computes its chunk updates and the others adopt a copy-on-write fork
// of the state it reached instead of computing them again.
//
// What identifies a state: its *path*, a base and the token ids ingested since. A base is either
// the model's empty state (a new session, after Reset or a reset at a document end), named by the
// model's fingerprint, or an opaque base: 32 random bytes drawn when a session's state stops
// being a known path (restore, import, reload by another process, a committing generation),
// which only that session and its forks carry. A path's key at a chunk boundary chains SHA-256
// from the base: key(b) = SHA-256(key(previous key point) || the token ids since it), so equal
// keys mean the same base and the same tokens, and two bases are never confused. The cache's key
// adds the scope (the tenant, or one shared scope when configured) and the model fingerprint.
//
// Results: a state is cached only at a chunk boundary, where the state is the fast weights,
// the KV cache and the position (no unfinished chunk), and a session adopts it exactly there,
// so what follows is computed from the very same state: scores after a hit are bit-identical to
// those of the session that computed it, given the same split of the tokens into batches (the
// contract's float tolerance otherwise, as for any split).
//
// Thread-safe (one mutex, a leaf); session/ calls it on the engine thread, which owns the states
// it stores and hands out, and anyone reads its stats.
#pragma once

#include <array>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "engine/sequence.h"
#include "session/internal/buffer_census.h"
#include "session/session.h"

namespace ttt::session::internal {

using PathKey = std::array<uint8_t, 32>;

// Where a session's state is on its path: the last key point (the base, or the last chunk
// boundary after it), the tokens since, and the log-probabilities of every token since the
// base (a cache hit reports those of the tokens it skipped, so an Ingest's loss is the same).
// Engine thread, as the state it describes.
struct StatePath {
  // The longest path tracked: past it, the session neither looks up nor populates until its
  // next base (its log-probabilities would grow without bound).
  static constexpr int64_t kMaxTokens = int64_t{1} << 16;

  // The model's empty state at position 0.
  static StatePath Empty(const std::string& model_fingerprint);
  // A base nobody else has, at `position`.
  static StatePath Opaque(int64_t position);

  bool tracked = false;
  PathKey key{};                // of the last key point
  int64_t key_position = 0;     // its absolute position
  std::vector<int32_t> tail;    // tokens since it
  std::vector<float> logprobs;  // of each token since the base
  // The key after `tokens` continue from `key`.
  static PathKey Chain(const PathKey& key, const int32_t* tokens, size_t count);
  // The state changed in place by `event` with `parameter` (a fade at a document end): the
  // path's key becomes that of the state now, at its position, so equal states changed alike
  // keep equal keys and no key names the state before. No-op when untracked.
  void Mark(std::string_view event, double parameter);
  // Whether it describes a state at `position` (a state changed behind the path's back does not
  // match it, and is then rebased).
  bool Matches(int64_t position) const {
    return tracked && key_position + static_cast<int64_t>(tail.size()) == position;
  }
};

class StateCache {
 public:
  // `budget_bytes` > 0. `shared_across_tenants`: one scope for all tenants (a tenant can then
  // tell from a hit's speed what another has read: only for deployments whose tenants trust
  // each other).
  StateCache(int64_t budget_bytes, bool shared_across_tenants, std::string model_fingerprint);

  // The cache's key of path key `path` for `tenant`.
  PathKey KeyFor(const std::string& tenant, const PathKey& path) const;

  struct Hit {
    engine::SequenceState state;  // a copy-on-write fork of the cached state
    std::vector<float> logprobs;  // of each token from the path's base to its boundary
  };
  // The entry under `key` (it becomes the most recently used), forked. Engine thread.
  std::optional<Hit> Lookup(const PathKey& key);
  // Counts a hit the caller took, which applied `tokens` without computing them.
  void CountHit(int64_t tokens);
  // Counts a lookup that found nothing at any of the boundaries it tried.
  void CountMiss();
  // Stores a fork of `state` under `key` (no-op when present: it is then the most recently
  // used), then drops the least recently used entries until the budget holds (the new one too,
  // when it alone exceeds it). Engine thread.
  void Insert(const PathKey& key, const engine::SequenceState& state, std::vector<float> logprobs);
  // Drops every entry. Engine thread.
  void Clear();

  StateCacheStats stats() const;

 private:
  struct KeyHash {
    size_t operator()(const PathKey& k) const;
  };
  struct Entry {
    PathKey key;
    engine::SequenceState state;
    std::vector<engine::HeldBuffer> held;
    std::vector<float> logprobs;
  };
  using Lru = std::list<Entry>;  // most recently used first

  // mu_ held: drops the least recently used entries while over budget.
  void EvictOverBudgetLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int64_t BytesLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int64_t budget_bytes_;
  const bool shared_across_tenants_;
  const std::string model_fingerprint_;

  mutable std::mutex mu_;
  Lru lru_ ABSL_GUARDED_BY(mu_);
  std::unordered_map<PathKey, Lru::iterator, KeyHash> index_ ABSL_GUARDED_BY(mu_);
  BufferCensus census_;  // the entries' buffers, each once
  int64_t logprob_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  StateCacheStats counts_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ttt::session::internal
