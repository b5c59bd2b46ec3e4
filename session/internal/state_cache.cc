#include "session/internal/state_cache.h"

#include <cstring>
#include <random>
#include <utility>

#include "util/sha256.h"

namespace ttt::session::internal {
namespace {

// Domain tags keep the hashes of the different kinds of input apart.
constexpr char kEmptyBaseTag[] = "ttt-state-cache/1 empty-base";
constexpr char kChainTag[] = "ttt-state-cache/1 chain";
constexpr char kScopeTag[] = "ttt-state-cache/1 scope";
constexpr char kEventTag[] = "ttt-state-cache/1 event";
// The one scope of a cache shared across tenants (tenant ids never contain '*').
constexpr char kSharedScope[] = "*shared*";

PathKey Digest(util::Sha256& h) {
  const std::array<uint8_t, 32> d = h.Final();
  PathKey k;
  std::memcpy(k.data(), d.data(), k.size());
  return k;
}

void UpdateWithString(util::Sha256& h, const std::string& s) {
  const uint64_t size = s.size();
  h.Update(&size, sizeof(size));  // length first: no two (scope, fingerprint) pairs hash alike
  h.Update(s);
}

}  // namespace

StatePath StatePath::Empty(const std::string& model_fingerprint) {
  util::Sha256 h;
  h.Update(kEmptyBaseTag);
  UpdateWithString(h, model_fingerprint);
  StatePath p;
  p.tracked = true;
  p.key = Digest(h);
  return p;
}

StatePath StatePath::Opaque(int64_t position) {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  StatePath p;
  p.tracked = true;
  for (size_t i = 0; i < p.key.size(); i += 8) {
    const uint64_t r = rng();
    std::memcpy(p.key.data() + i, &r, 8);
  }
  p.key_position = position;
  return p;
}

PathKey StatePath::Chain(const PathKey& key, const int32_t* tokens, size_t count) {
  util::Sha256 h;
  h.Update(kChainTag);
  h.Update(key.data(), key.size());
  h.Update(tokens, count * sizeof(int32_t));
  return Digest(h);
}

void StatePath::Mark(std::string_view event, double parameter) {
  if (!tracked) return;
  util::Sha256 h;
  h.Update(kEventTag);
  h.Update(key.data(), key.size());
  const uint64_t count = tail.size();
  h.Update(&count, sizeof(count));
  if (!tail.empty()) h.Update(tail.data(), tail.size() * sizeof(int32_t));  // never a null range
  UpdateWithString(h, std::string(event));
  h.Update(&parameter, sizeof(parameter));  // its bits: no two values print alike here
  key = Digest(h);
  key_position += static_cast<int64_t>(tail.size());
  tail.clear();
}

size_t StateCache::KeyHash::operator()(const PathKey& k) const {
  size_t v;
  std::memcpy(&v, k.data(), sizeof(v));  // a SHA-256 digest: any 8 bytes are uniform
  return v;
}

StateCache::StateCache(int64_t budget_bytes, bool shared_across_tenants,
                       std::string model_fingerprint)
    : budget_bytes_(budget_bytes),
      shared_across_tenants_(shared_across_tenants),
      model_fingerprint_(std::move(model_fingerprint)) {}

PathKey StateCache::KeyFor(const std::string& tenant, const PathKey& path) const {
  util::Sha256 h;
  h.Update(kScopeTag);
  UpdateWithString(h, shared_across_tenants_ ? std::string(kSharedScope) : tenant);
  UpdateWithString(h, model_fingerprint_);
  h.Update(path.data(), path.size());
  return Digest(h);
}

std::optional<StateCache::Hit> StateCache::Lookup(const PathKey& key) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = index_.find(key);
  if (it == index_.end()) return std::nullopt;
  lru_.splice(lru_.begin(), lru_, it->second);
  return Hit{it->second->state.Fork(), it->second->logprobs};
}

void StateCache::CountMiss() {
  std::lock_guard<std::mutex> lock(mu_);
  ++counts_.misses;
}

void StateCache::CountHit(int64_t tokens) {
  std::lock_guard<std::mutex> lock(mu_);
  ++counts_.hits;
  counts_.tokens_skipped += tokens;
}

void StateCache::Insert(const PathKey& key, const engine::SequenceState& state,
                        std::vector<float> logprobs) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = index_.find(key);
  if (it != index_.end()) {
    lru_.splice(lru_.begin(), lru_, it->second);
    return;
  }
  Entry e{key, state.Fork(), {}, std::move(logprobs)};
  e.held = e.state.HeldBuffers();
  census_.Replace({}, e.held);
  logprob_bytes_ += static_cast<int64_t>(e.logprobs.size() * sizeof(float));
  lru_.push_front(std::move(e));
  index_[key] = lru_.begin();
  ++counts_.insertions;
  EvictOverBudgetLocked();
}

void StateCache::EvictOverBudgetLocked() {
  while (!lru_.empty() && BytesLocked() > budget_bytes_) {
    Entry& victim = lru_.back();
    census_.Replace(victim.held, {});
    logprob_bytes_ -= static_cast<int64_t>(victim.logprobs.size() * sizeof(float));
    index_.erase(victim.key);
    lru_.pop_back();
    ++counts_.evictions;
  }
}

void StateCache::Clear() {
  std::lock_guard<std::mutex> lock(mu_);
  for (Entry& e : lru_) census_.Replace(e.held, {});
  lru_.clear();
  index_.clear();
  logprob_bytes_ = 0;
}

int64_t StateCache::BytesLocked() const { return census_.distinct_bytes() + logprob_bytes_; }

StateCacheStats StateCache::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  StateCacheStats s = counts_;
  s.entries = static_cast<int64_t>(lru_.size());
  s.bytes = BytesLocked();
  s.budget_bytes = budget_bytes_;
  return s;
}

}  // namespace ttt::session::internal
