// Sampling over CPU float logits with our own seeded generator, so results are reproducible
// across machines and LibTorch versions.
#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "absl/strings/str_cat.h"

namespace ttt::engine {

namespace {

// The `m` best ids by logit (ties by id, so the order is total and deterministic), best first.
std::vector<int32_t> Best(const float* data, int64_t vocab, int64_t m) {
  std::vector<int32_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  auto by_logit = [data](int32_t a, int32_t b) {
    return data[a] > data[b] || (data[a] == data[b] && a < b);
  };
  if (m < vocab) std::nth_element(order.begin(), order.begin() + m, order.end(), by_logit);
  order.resize(m);
  std::sort(order.begin(), order.end(), by_logit);
  return order;
}

// Draws one of probs[0, n) (unnormalised) and returns its id.
template <typename IdOf>
int32_t Draw(std::mt19937_64& rng, const std::vector<double>& probs, int64_t n, IdOf id_of) {
  const double kept = std::accumulate(probs.begin(), probs.begin() + n, 0.0);
  // 53 random bits -> uniform in [0, 1), independent of the standard library's distributions.
  const double u = static_cast<double>(rng() >> 11) * (1.0 / 9007199254740992.0) * kept;
  double acc = 0;
  for (int64_t i = 0; i < n; ++i) {
    acc += probs[i];
    if (u < acc) return id_of(i);
  }
  return id_of(n - 1);
}

}  // namespace

absl::Status ValidateSamplingParams(const SamplingParams& params) {
  if (!std::isfinite(params.temperature) || params.temperature < 0 || params.temperature > 100) {
    return absl::InvalidArgumentError(
        absl::StrCat("temperature ", params.temperature, " must be in [0, 100] (0 = greedy)"));
  }
  if (params.top_k < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_k ", params.top_k, " must be >= 0 (0 = no limit)"));
  }
  if (!std::isfinite(params.top_p) || params.top_p <= 0 || params.top_p > 1) {
    return absl::InvalidArgumentError(absl::StrCat("top_p ", params.top_p, " must be in (0, 1]"));
  }
  return absl::OkStatus();
}

int32_t Sampler::Sample(absl::Span<const float> logits) {
  const float* data = logits.data();
  const int64_t vocab = static_cast<int64_t>(logits.size());
  if (params_.temperature == 0) {
    return static_cast<int32_t>(std::max_element(data, data + vocab) - data);
  }
  const double top = *std::max_element(data, data + vocab);
  auto weight = [&](int32_t id) { return std::exp((data[id] - top) / params_.temperature); };
  const int64_t k = params_.top_k > 0 ? std::min(params_.top_k, vocab) : vocab;
  if (k == vocab && params_.top_p >= 1) {
    // Every token is a candidate: one pass in id order, no sort. (A full sort per drawn token
    // took a third of the server's time with 16 generating streams; bench/RESULTS.md.)
    std::vector<double> probs(vocab);
    for (int32_t id = 0; id < vocab; ++id) probs[id] = weight(id);
    return Draw(rng_, probs, vocab, [](int64_t i) { return static_cast<int32_t>(i); });
  }
  // Nucleus over the whole vocabulary: its mass is relative to every token's.
  double total = 0;
  if (k == vocab) {
    for (int32_t id = 0; id < vocab; ++id) total += weight(id);
  }
  // The best candidates in order (by logit, ties by id): the top_k, or a prefix long enough to
  // hold the nucleus (usually the first 64; grown 8x while it falls short).
  for (int64_t m = k < vocab ? k : std::min<int64_t>(vocab, 64);; m = std::min(vocab, m * 8)) {
    const std::vector<int32_t> best = Best(data, vocab, m);
    std::vector<double> probs(m);
    double best_mass = 0;
    for (int64_t i = 0; i < m; ++i) best_mass += probs[i] = weight(best[i]);
    if (k < vocab) total = best_mass;  // top_k: the nucleus is relative to the k candidates
    // Nucleus: the smallest prefix whose mass reaches top_p.
    int64_t keep = -1;
    double mass = 0;
    for (int64_t i = 0; i < m && params_.top_p < 1; ++i) {
      mass += probs[i] / total;
      if (mass >= params_.top_p) {
        keep = i + 1;
        break;
      }
    }
    if (keep < 0 && m < k) continue;  // the nucleus reaches past this prefix
    if (keep < 0) keep = m;           // every candidate (top_p 1, or rounding short of it)
    return Draw(rng_, probs, keep, [&](int64_t i) { return best[i]; });
  }
}

}  // namespace ttt::engine
