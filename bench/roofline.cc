#include "bench/roofline.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>

#include "engine/internal/batched_kernels.h"

namespace ttt::bench {
namespace {

constexpr double kFloatBytes = 4;  // the benchmark's models are float32

// Dense weights of the model a call reads once, whatever its rows: every projection, the MLP
// and the head (the embedding contributes only the rows looked up).
double DenseWeights(const engine::ModelConfig& c) {
  const double d = c.hidden_size, f = c.intermediate_size, q = c.num_attention_heads * c.head_dim,
               kv = c.num_key_value_heads * c.head_dim;
  return c.num_hidden_layers * (d * q + 2 * d * kv + q * d + 3 * d * f + 2 * d) +
         double(c.vocab_size) * d + d;
}

// Dense matmul FLOPs of one row (projections, MLP, head), attention excluded.
double DenseFlopsPerRow(const engine::ModelConfig& c) {
  const double d = c.hidden_size, f = c.intermediate_size, q = c.num_attention_heads * c.head_dim,
               kv = c.num_key_value_heads * c.head_dim;
  return c.num_hidden_layers * 2 * (d * q + 2 * d * kv + q * d + 3 * d * f) + 2 * d * c.vocab_size;
}

// Activation floats one row writes and later reads per layer: the layer's inputs and outputs
// (x, norms, q, k, v, attention output, o, residual, gate, up, z, down).
double ActivationFloatsPerRow(const engine::ModelConfig& c) {
  const double d = c.hidden_size, f = c.intermediate_size, q = c.num_attention_heads * c.head_dim,
               kv = c.num_key_value_heads * c.head_dim;
  return c.num_hidden_layers * (6 * d + 2 * q + 2 * kv + 3 * f) + c.vocab_size;
}

// Bytes of the last-level cache: sysfs first (glibc's sysconf reads CPUID, which a VM may fill
// with the host's figure: 320 MiB on this project's 32 MiB VM), then sysconf, else 32 MiB.
int64_t LastLevelCacheBytes() {
  std::ifstream in("/sys/devices/system/cpu/cpu0/cache/index3/size");
  int64_t kib = 0;
  if (in >> kib && kib > 0) return kib * 1024;
  const long bytes = sysconf(_SC_LEVEL3_CACHE_SIZE);
  return bytes > 0 ? bytes : int64_t{32} << 20;
}

// The roofline time of `bytes` and `flops`: whichever of moving and computing takes longer.
double PartSeconds(double bytes, double flops, double bandwidth, double peak) {
  return std::max(bytes / bandwidth, flops / peak);
}

}  // namespace

Cost CallCost(const engine::ModelConfig& c, int64_t sessions, int64_t rows, int64_t cached,
              bool ttt) {
  const double d = c.hidden_size, f = c.intermediate_size, q = c.num_attention_heads * c.head_dim,
               kv = c.num_key_value_heads * c.head_dim;
  const double ttt_layers = ttt && c.ttt_mode ? double(c.ttt_layers.size()) : 0;
  const int64_t keep = c.sliding_window ? std::max<int64_t>(*c.sliding_window - 1, 0) : cached;

  // Per session: FLOPs of the dense products and of attention (each row over its visible keys).
  double visible_keys = 0;
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t position = cached + i;
    visible_keys += c.sliding_window ? std::min(position + 1, *c.sliding_window) : position + 1;
  }
  Cost session;
  session.streamed_flops = c.num_hidden_layers * 4 * q * visible_keys;
  session.flops = rows * DenseFlopsPerRow(c) + session.streamed_flops;
  // KV: the cached rows still visible are read, the new rows written and read.
  session.streamed_bytes =
      c.num_hidden_layers * 2 * kv * kFloatBytes * (std::min(cached, keep) + 2 * rows);
  session.bytes = session.streamed_bytes;
  session.bytes += rows * (ActivationFloatsPerRow(c) + d) * 2 * kFloatBytes;  // + embedding rows

  Cost shared;
  shared.bytes = DenseWeights(c) * kFloatBytes;
  if (ttt_layers > 0) {
    const int64_t pending = c.ttt_chunk > 0 ? cached % c.ttt_chunk : 0;
    const int64_t completed = c.ttt_chunk > 0 ? (pending + rows) / c.ttt_chunk : 0;
    // Each row: z @ delta^T; each completed chunk: the conv, the target projection, V^T Z.
    session.flops += ttt_layers * rows * 2 * d * f;
    session.flops += ttt_layers * completed * c.ttt_chunk * (2 * 5 * d + 2 * d * d + 2 * d * f);
    // The delta read once; the unfinished chunk's new rows (z, x0) written and read once.
    const double delta_bytes =
        c.ttt_delta_dtype == engine::TttDeltaDtype::kBFloat16 ? 2 : kFloatBytes;
    session.bytes += ttt_layers * (d * f * delta_bytes + rows * (f + d) * 2 * kFloatBytes);
    // A short call (a decode step, a piece inside its chunk) streams the delta through the
    // batched delta kernel; a longer call's delta terms and updates are products.
    if (rows < c.ttt_chunk) {
      session.streamed_bytes += ttt_layers * d * f * delta_bytes;
      session.streamed_flops += ttt_layers * rows * 2 * d * f;
    }
    if (completed > 0) {
      session.bytes += ttt_layers * d * f * delta_bytes;           // the delta written back once
      shared.bytes += ttt_layers * (d * d + 5 * d) * kFloatBytes;  // W_target, the conv
    }
  }
  return {shared.bytes + sessions * session.bytes, shared.flops + sessions * session.flops,
          sessions * session.streamed_bytes, sessions * session.streamed_flops};
}

std::vector<Cost> RunCosts(const engine::ModelConfig& c, int64_t sessions, int64_t start,
                           int64_t tokens, int64_t piece, bool ttt) {
  std::vector<Cost> calls;
  for (int64_t at = 0; at < tokens; at += piece) {
    calls.push_back(CallCost(c, sessions, std::min(piece, tokens - at), start + at, ttt));
  }
  return calls;
}

namespace {

// Bytes/s of reading a `bytes` buffer `passes` times in a row on one thread (best of five
// timings, after one pass that faults the pages in and warms whatever cache holds them). The
// reader is LibTorch's own vectorised sum (AVX2/AVX-512 as the CPU allows): a plain loop built
// for baseline x86-64 reads at a third of the speed from cache here.
double ReadBandwidth(int64_t bytes, int passes, const std::function<double()>& now) {
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  const at::Tensor buffer = at::ones({bytes / int64_t{sizeof(float)}});
  float sink = buffer.sum().item<float>();
  double best = 1e30;
  for (int timing = 0; timing < 5; ++timing) {
    const double start = now();
    for (int pass = 0; pass < passes; ++pass) sink += buffer.sum().item<float>();
    best = std::min(best, now() - start);
  }
  at::set_num_threads(threads);
  if (sink < 0) std::printf("(impossible sum)\n");  // keeps the sums observable
  return double(bytes) * passes / best;
}

}  // namespace

void Roofline::MeasureReadBandwidth() {
  llc_bytes_ = LastLevelCacheBytes();
  const int64_t memory_bytes = std::max<int64_t>(int64_t{256} << 20, 8 * llc_bytes_);
  read_bandwidth_ = ReadBandwidth(memory_bytes, 1, now_);
  // A quarter of the cache, read until 256 MiB have passed: what a step whose bytes stay
  // cached from one call to the next (a small model's weights and states) reads at.
  const int64_t cached_bytes = std::max<int64_t>(llc_bytes_ / 4, 1 << 20);
  cached_bandwidth_ = ReadBandwidth(cached_bytes, int((int64_t{256} << 20) / cached_bytes), now_);
  std::printf(
      "\n# roofline: single-thread streaming read %.1f GB/s from memory (a %lld MiB "
      "buffer), %.1f GB/s from the last-level cache (%lld of its %lld MiB)\n",
      read_bandwidth_ / 1e9, (long long)(memory_bytes >> 20), cached_bandwidth_ / 1e9,
      (long long)(cached_bytes >> 20), (long long)(llc_bytes_ >> 20));
}

double Roofline::Bandwidth(double bytes_per_call) const {
  return bytes_per_call <= llc_bytes_ / 2 ? cached_bandwidth_ : read_bandwidth_;
}

double Roofline::SgemmPeak(int64_t rows, int64_t d_model, int64_t d_ff) {
  const std::vector<int64_t> key = {rows, d_model, d_ff};
  if (auto it = peaks_.find(key); it != peaks_.end()) return it->second;
  at::Tensor x = at::randn({rows, d_model}), weight = at::randn({d_ff, d_model});
  at::Tensor out = at::empty({rows, d_ff});
  auto blas = [&] {
    if (rows <= 2) {
      for (int64_t r = 0; r < rows; ++r) at::mv(weight, x[r]);
    } else {
      at::linear(x, weight);
    }
  };
  auto kernel = [&] {
    engine::internal::SmallRowProduct(x.data_ptr<float>(), rows, d_model, weight.data_ptr<float>(),
                                      d_ff, nullptr, out.data_ptr<float>());
  };
  const double peak =
      std::max(ProductRate(blas, rows, d_model, d_ff), ProductRate(kernel, rows, d_model, d_ff));
  peaks_[key] = peak;
  return peak;
}

double Roofline::ProductRate(const std::function<void()>& product, int64_t rows, int64_t d_model,
                             int64_t d_ff) const {
  product();
  // Repetitions per timing: enough for ~5 ms, so the clock's resolution does not matter.
  double start = now_();
  product();
  const double once = std::max(now_() - start, 1e-7);
  const int64_t repeats = std::clamp<int64_t>(int64_t(5e-3 / once), 1, 100000);
  double best = 1e30;
  // Best of 15: on a 2-vCPU VM the other vCPU's job moves a single timing by up to 1.6x
  // (bench/RESULTS.md, the attention kernel's section); the ceiling is the best the core did.
  for (int t = 0; t < 15; ++t) {
    start = now_();
    for (int64_t r = 0; r < repeats; ++r) product();
    best = std::min(best, (now_() - start) / repeats);
  }
  return 2.0 * rows * d_model * d_ff / best;
}

double Roofline::Seconds(const std::vector<Cost>& calls, int64_t rows, int64_t d_model,
                         int64_t d_ff) {
  const double peak = SgemmPeak(rows, d_model, d_ff);
  double seconds = 0;
  for (const Cost& call : calls) {
    seconds += PartSeconds(call.bytes, call.flops, Bandwidth(call.bytes), peak);
  }
  return seconds;
}

double Roofline::PhaseBoundSeconds(const std::vector<Cost>& calls, int64_t rows, int64_t d_model,
                                   int64_t d_ff) {
  const double peak = SgemmPeak(rows, d_model, d_ff);
  double seconds = 0;
  for (const Cost& call : calls) {
    const double bandwidth = Bandwidth(call.bytes);
    seconds += PartSeconds(call.streamed_bytes, call.streamed_flops, bandwidth, peak) +
               PartSeconds(call.bytes - call.streamed_bytes, call.flops - call.streamed_flops,
                           bandwidth, peak);
  }
  return seconds;
}

void Roofline::Add(const std::string& label, double tokens_per_second, double seconds,
                   const std::vector<Cost>& calls, int64_t rows,
                   const engine::ModelConfig& config) {
  const int64_t d = config.hidden_size, f = config.intermediate_size;
  const double peak = SgemmPeak(rows, d, f);
  Row row{
      label, tokens_per_second, seconds, 0, 0, 0, 0, 0, 0, rows, static_cast<int64_t>(calls.size()),
      false};
  for (const Cost& call : calls) {
    row.bytes += call.bytes;
    row.flops += call.flops;
    row.memory_seconds += call.bytes / Bandwidth(call.bytes);
    row.compute_seconds += call.flops / peak;
  }
  row.roofline = Seconds(calls, rows, d, f);
  row.phase_bound = PhaseBoundSeconds(calls, rows, d, f);
  row.cached = !calls.empty() && Bandwidth(row.bytes / calls.size()) == cached_bandwidth_;
  rows_.push_back(row);
}

void Roofline::Print() const {
  std::printf(
      "\n| row | measured | rows per call | MB per call | MFLOP per call | memory time "
      "per call (from) | compute time per call (peak at the shape) | roofline | achieved "
      "fraction | one-thread phase bound | its fraction of the roofline | achieved vs the "
      "phase bound |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (const Row& r : rows_) {
    const double calls = double(r.calls), tokens = r.tokens_per_second * r.seconds;
    const double peak = r.compute_seconds > 0 ? r.flops / r.compute_seconds : 0;
    std::printf(
        "| %s | %.0f tok/s | %lld | %.2f | %.2f | %.3f ms (%s) | %.3f ms (%.1f GFLOP/s) "
        "| %.0f tok/s | %.2f | %.0f tok/s | %.2f | %.2f |\n",
        r.label.c_str(), r.tokens_per_second, (long long)r.rows, r.bytes / calls / 1e6,
        r.flops / calls / 1e6, r.memory_seconds / calls * 1e3, r.cached ? "cache" : "memory",
        r.compute_seconds / calls * 1e3, peak / 1e9, tokens / r.roofline, r.roofline / r.seconds,
        tokens / r.phase_bound, r.roofline / r.phase_bound, r.phase_bound / r.seconds);
  }
  std::printf(
      "(roofline per call: max(bytes / read bandwidth, FLOPs / peak of the "
      "[rows, d_model] x [d_model, d_ff] product), the bandwidth of the last-level cache "
      "where a call's bytes fit in half of it, else of memory; achieved = roofline time / "
      "measured time. Phase bound: the streaming phases (attention over the KV rows, a decode "
      "step's delta term) and the rest each at their own roofline, one after the other, as one "
      "thread runs them: roofline / phase bound is the largest fraction one thread can reach)\n");
}

}  // namespace ttt::bench
