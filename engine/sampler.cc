// Sampling over CPU float logits with our own seeded generator, so results are reproducible
// across machines and LibTorch versions.
#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "absl/strings/str_cat.h"

namespace ttt::engine {

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

int32_t Sampler::Sample(const at::Tensor& logits) {
  at::Tensor cpu = logits.detach().to(at::kFloat).cpu().contiguous();
  const float* data = cpu.data_ptr<float>();
  const int64_t vocab = cpu.numel();
  if (params_.temperature == 0) {
    return static_cast<int32_t>(std::max_element(data, data + vocab) - data);
  }
  // Candidates sorted by logit (ties by id, so the order is total and deterministic).
  std::vector<int32_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  const int64_t k = params_.top_k > 0 ? std::min(params_.top_k, vocab) : vocab;
  auto by_logit = [data](int32_t a, int32_t b) {
    return data[a] > data[b] || (data[a] == data[b] && a < b);
  };
  std::partial_sort(order.begin(), order.begin() + k, order.end(), by_logit);
  order.resize(k);

  std::vector<double> probs(k);
  const double top = data[order[0]];
  double total = 0;
  for (int64_t i = 0; i < k; ++i) {
    probs[i] = std::exp((data[order[i]] - top) / params_.temperature);
    total += probs[i];
  }
  // Nucleus: the smallest prefix whose mass reaches top_p.
  int64_t keep = k;
  if (params_.top_p < 1) {
    double mass = 0;
    for (int64_t i = 0; i < k; ++i) {
      mass += probs[i] / total;
      if (mass >= params_.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  const double kept = std::accumulate(probs.begin(), probs.begin() + keep, 0.0);
  // 53 random bits -> uniform in [0, 1), independent of the standard library's distributions.
  const double u = static_cast<double>(rng_() >> 11) * (1.0 / 9007199254740992.0) * kept;
  double acc = 0;
  for (int64_t i = 0; i < keep; ++i) {
    acc += probs[i];
    if (u < acc) return order[i];
  }
  return order[keep - 1];
}

}  // namespace ttt::engine
