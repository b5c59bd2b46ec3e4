// Which resident sessions hold which state buffers: copy-on-write forks share their parent's
// buffers (engine::SequenceState::Fork), so a session's memory is its share of each buffer it
// holds (the buffer's bytes over the number of sessions holding it) and the shares of all sessions
// add up to the bytes really held, each shared buffer counted once.
//
// Thread-safe; its lock is a leaf (taken with a session's mu held, never the other way round).
#pragma once

#include <cstdint>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "engine/sequence.h"

namespace ttt::session::internal {

class BufferCensus {
 public:
  // One holder that held `before` now holds `after` (either may be empty).
  void Replace(const std::vector<engine::HeldBuffer>& before,
               const std::vector<engine::HeldBuffer>& after);
  // A holder's share of `held` (what it holds now): each buffer's bytes over its holders.
  int64_t ShareOf(const std::vector<engine::HeldBuffer>& held) const;
  // Bytes of the distinct buffers held.
  int64_t distinct_bytes() const;

 private:
  struct Entry {
    int64_t bytes = 0;
    int64_t holders = 0;
  };
  mutable std::mutex mu_;
  std::unordered_map<uintptr_t, Entry> entries_ ABSL_GUARDED_BY(mu_);
  int64_t distinct_bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

// Over the held lists of a set of sessions: the bytes of their distinct buffers, and what
// dropping one of them frees (only the buffers no other one of them still holds). Not
// thread-safe: one caller's planning (eviction, the pool's figure).
class SharedBytes {
 public:
  void Add(const std::vector<engine::HeldBuffer>& held);
  // Removes one holder of `held` (added before); returns the bytes no one holds any more.
  int64_t Remove(const std::vector<engine::HeldBuffer>& held);
  int64_t bytes() const { return bytes_; }

 private:
  std::unordered_map<uintptr_t, std::pair<int64_t, int64_t>> holders_;  // bytes, holders
  int64_t bytes_ = 0;
};

}  // namespace ttt::session::internal
