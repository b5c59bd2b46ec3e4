// engine_bench --only=compact (issue 27 #3): what compacting an idle session (engine/compact.h)
// saves, what bringing a session back costs in each tier (resident fp32, compact bf16, evicted to
// a file), and what the bf16 rounding costs in loss on real text.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "engine/model.h"

namespace ttt::bench {

// Bytes of one session after `tokens` tokens (in one piece, then 32 decode steps: the state a
// served session holds) in fp32, with its deltas compact, and with its KV cache compact too;
// sessions per GiB of each and the ratio to fp32. Then the reload latency of each tier, p50 and
// p99 over `reps` reloads, on `now`'s clock.
void CompactTable(const std::string& label, const engine::Model& model, int64_t tokens, int reps,
                  const std::function<double()>& now);

// The quality cost on `valid_path` (token ids, one document per line: a validation split, never
// the test split): per document, the first half (at most `prefix` tokens) is read in pieces of
// 256, the state is compacted and expanded again, and the rest (at most `prefix` tokens) read on;
// its loss against a copy never compacted, per token and as a paired bootstrap over documents.
void CompactQuality(const engine::Model& model, const std::string& valid_path, int64_t prefix);

}  // namespace ttt::bench
