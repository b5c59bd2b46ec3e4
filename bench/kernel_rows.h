// engine_bench --only=kernels (issue 26): the two per-session kernels of a batched decode step
// (engine/internal/batched_kernels.h) apart from the rest of the step, each against the bytes it
// must read at this machine's read bandwidth (bench/roofline.h): attention of one new row per
// session over its cached keys and values, and the fast-weight term with deltas stored fp32 and
// bf16. These are the parts of a step whose bytes grow with the sessions.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "bench/roofline.h"
#include "engine/config.h"

namespace ttt::bench {

// For each count in `sessions`: one layer's attention call for one decode row per session after
// `cached` tokens (the config's window applies), and one TTT layer's delta term, best of 5 on
// `now`'s clock; milliseconds, GB/s and the fraction of `machine`'s read bandwidth for the bytes.
// REQUIRES: machine.MeasureReadBandwidth() was called.
void KernelTable(const engine::ModelConfig& config, const std::vector<int>& sessions,
                 int64_t cached, const Roofline& machine, const std::function<double()>& now);

// For each count in `sessions` (rows): the short step's dense products at the config's widest
// shapes (d_model -> d_ff and back), engine::internal::SmallRowProduct against OpenBLAS through
// engine::internal::Linear (sgemv per row up to two rows, else sgemm: as the short step ran them
// before), best of 5 on `now`'s clock: milliseconds, GFLOP/s and the ratio.
void DenseProductTable(const engine::ModelConfig& config, const std::vector<int>& sessions,
                       const std::function<double()>& now);

}  // namespace ttt::bench
