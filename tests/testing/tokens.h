// Random token ids for tests: `n` ids in [3, vocab) (past the special ids 0-2), from `seed`.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace ttt::testing {

inline std::vector<int32_t> Tokens(int n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> v;
  for (int i = 0; i < n; ++i) v.push_back(3 + static_cast<int32_t>(rng() % (vocab - 3)));
  return v;
}

}  // namespace ttt::testing
