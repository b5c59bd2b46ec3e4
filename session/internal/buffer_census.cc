#include "session/internal/buffer_census.h"

#include <algorithm>

namespace ttt::session::internal {

void BufferCensus::Replace(const std::vector<engine::HeldBuffer>& before,
                           const std::vector<engine::HeldBuffer>& after) {
  std::lock_guard<std::mutex> lock(mu_);
  // Adds first, so a buffer in both lists never leaves the census on the way.
  for (const engine::HeldBuffer& b : after) {
    Entry& e = entries_[b.identity];
    if (e.holders++ == 0) {
      e.bytes = b.bytes;
      distinct_bytes_ += b.bytes;
    }
  }
  for (const engine::HeldBuffer& b : before) {
    auto it = entries_.find(b.identity);
    if (it == entries_.end()) continue;
    if (--it->second.holders == 0) {
      distinct_bytes_ -= it->second.bytes;
      entries_.erase(it);
    }
  }
}

int64_t BufferCensus::ShareOf(const std::vector<engine::HeldBuffer>& held) const {
  std::lock_guard<std::mutex> lock(mu_);
  int64_t share = 0;
  for (const engine::HeldBuffer& b : held) {
    auto it = entries_.find(b.identity);
    share += it == entries_.end() ? b.bytes : b.bytes / std::max<int64_t>(1, it->second.holders);
  }
  return share;
}

int64_t BufferCensus::distinct_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return distinct_bytes_;
}

void SharedBytes::Add(const std::vector<engine::HeldBuffer>& held) {
  for (const engine::HeldBuffer& b : held) {
    auto& [bytes, holders] = holders_[b.identity];
    if (holders++ == 0) {
      bytes = b.bytes;
      bytes_ += b.bytes;
    }
  }
}

int64_t SharedBytes::Remove(const std::vector<engine::HeldBuffer>& held) {
  int64_t freed = 0;
  for (const engine::HeldBuffer& b : held) {
    auto it = holders_.find(b.identity);
    if (it == holders_.end()) continue;
    if (--it->second.second == 0) {
      freed += it->second.first;
      holders_.erase(it);
    }
  }
  bytes_ -= freed;
  return freed;
}

}  // namespace ttt::session::internal
