// The roofline of this machine for the engine's calls (issue 26 item 1): what a decode step or an
// ingest call must move through memory and compute, and how fast this machine can do either, so
// that engine_bench prints each measured row as a fraction of what the machine allows. A call's
// roofline time is max(bytes / read bandwidth, FLOPs / sgemm peak at the call's shape): the time
// the bytes it must move take at the measured single-thread streaming read bandwidth (from memory,
// or from the last-level cache where the call's bytes fit in it, as a small model's do), against
// the time its FLOPs take at the best LibTorch product of the call's dense shape. One thread runs
// a step's streaming phases (attention, the delta term) apart from its dense products, so each row
// also gets a phase bound: the two parts' rooflines added (Roofline::PhaseBoundSeconds).
//
// The byte counts are the minimum a call must move, not what the engine happens to move: the
// dense weights once per call, each session's fast-weight deltas once (and once more written back
// when a chunk completes), each session's visible KV rows, and every activation written once and
// read once. Not thread-safe (the peak cache); one benchmark thread uses it.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "engine/config.h"

namespace ttt::bench {

// Bytes and FLOPs of one or more engine calls. `streamed_bytes` and `streamed_flops` are the part
// of them in the per-session streaming phases (attention over each session's KV rows, the
// fast-weight term over each session's delta): a few FLOPs per byte, so bound by the read
// bandwidth, and on one thread run before or after the dense products, not beside them.
struct Cost {
  double bytes = 0;
  double flops = 0;
  double streamed_bytes = 0;
  double streamed_flops = 0;
  Cost& operator+=(const Cost& other) {
    bytes += other.bytes;
    flops += other.flops;
    streamed_bytes += other.streamed_bytes;
    streamed_flops += other.streamed_flops;
    return *this;
  }
};

// One engine call: `sessions` sessions, each `rows` new tokens after `cached` earlier tokens of
// its stream (`cached` % chunk of them in the unfinished TTT chunk). `ttt`: the TTT layers update
// (a model served with ttt_lr 0 reads no deltas).
Cost CallCost(const engine::ModelConfig& config, int64_t sessions, int64_t rows, int64_t cached,
              bool ttt);

// The calls of a run that feeds `sessions` streams, each starting at `start` tokens, `tokens`
// more in pieces of `piece`: the cost of every call, in order.
std::vector<Cost> RunCosts(const engine::ModelConfig& config, int64_t sessions, int64_t start,
                           int64_t tokens, int64_t piece, bool ttt);

// This machine's ceilings, measured once per benchmark run with the benchmark's clock.
class Roofline {
 public:
  // `now`: seconds on the benchmark's clock (wall or CPU).
  explicit Roofline(std::function<double()> now) : now_(std::move(now)) {}

  // Measures and prints the single-thread streaming read bandwidth from memory (a buffer of at
  // least 256 MiB and 8x the last-level cache) and from the last-level cache (a quarter of it).
  // REQUIRES: called before Seconds or Add.
  void MeasureReadBandwidth();
  // The bandwidth a call that moves `bytes_per_call` reads at: the cache's when they fit in half
  // of it (they then stay cached from one call to the next), else memory's.
  double Bandwidth(double bytes_per_call) const;

  // Best FLOP/s of a [rows, d_model] x [d_model, d_ff] product (the step's widest dense shape):
  // the better of OpenBLAS (one at::mm, or for up to two rows one at::mv per row) and the
  // engine's SmallRowProduct; operands hot in cache, one call per timed repetition (its dispatch
  // included). Cached per `rows`.
  double SgemmPeak(int64_t rows, int64_t d_model, int64_t d_ff);

  // Seconds the roofline allows for `calls` whose dense products have `rows` rows each.
  double Seconds(const std::vector<Cost>& calls, int64_t rows, int64_t d_model, int64_t d_ff);
  // Seconds one thread needs at least when the streaming phases do not overlap the dense
  // products: each part at its own roofline, max(bytes / bandwidth, FLOPs / peak), the two parts
  // added, per call. roofline / phase bound is the largest achieved fraction one thread reaches.
  double PhaseBoundSeconds(const std::vector<Cost>& calls, int64_t rows, int64_t d_model,
                           int64_t d_ff);

  // Records one measured row: `seconds` spent on `calls` (products of `rows` rows).
  void Add(const std::string& label, double tokens_per_second, double seconds,
           const std::vector<Cost>& calls, int64_t rows, const engine::ModelConfig& config);

  // The recorded rows as a Markdown table.
  void Print() const;

 private:
  struct Row {
    std::string label;
    double tokens_per_second, seconds, bytes, flops, memory_seconds, compute_seconds, roofline,
        phase_bound;
    int64_t rows, calls;
    bool cached;  // bound by the cache's bandwidth, not memory's
  };

  // Best FLOP/s of `product` ([rows, d_model] x [d_model, d_ff]) over 15 timings.
  double ProductRate(const std::function<void()>& product, int64_t rows, int64_t d_model,
                     int64_t d_ff) const;

  std::function<double()> now_;
  int64_t llc_bytes_ = 0;
  double read_bandwidth_ = 0;    // bytes/s from memory
  double cached_bandwidth_ = 0;  // bytes/s from the last-level cache
  std::map<std::vector<int64_t>, double> peaks_;
  std::vector<Row> rows_;
};

}  // namespace ttt::bench
