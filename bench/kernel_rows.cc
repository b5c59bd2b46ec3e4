#include "bench/kernel_rows.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cstdio>
#include <tuple>

#include "engine/internal/batched_kernels.h"
#include "engine/internal/forward.h"

namespace ttt::bench {
namespace {

// Best of 5 calls of `call`, after one untimed call.
double BestSeconds(const std::function<void()>& call, const std::function<double()>& now) {
  call();
  double best = 1e30;
  for (int r = 0; r < 5; ++r) {
    const double start = now();
    call();
    best = std::min(best, now() - start);
  }
  return best;
}

void PrintRow(const char* kernel, int sessions, double bytes, double seconds,
              const Roofline& machine) {
  const double bandwidth = machine.Bandwidth(bytes);
  std::printf("| %s | %d | %.2f | %.3f ms | %.1f | %.2f |\n", kernel, sessions, bytes / 1e6,
              seconds * 1e3, bytes / seconds / 1e9, bytes / bandwidth / seconds);
}

}  // namespace

void KernelTable(const engine::ModelConfig& c, const std::vector<int>& sessions, int64_t cached,
                 const Roofline& machine, const std::function<double()>& now) {
  c10::InferenceMode inference;
  const int64_t heads = c.num_attention_heads, kv_heads = c.num_key_value_heads, hd = c.head_dim;
  const int64_t window = c.sliding_window.value_or(0);
  const int64_t visible = window > 0 ? std::min(cached + 1, window) : cached + 1;
  const int64_t d = c.hidden_size, f = c.intermediate_size;
  std::printf(
      "\nThe per-session kernels of one decode step (engine/internal/batched_kernels.h), one "
      "layer, %lld cached tokens (%lld visible keys), best of 5: bytes read against the read "
      "bandwidth of bench/roofline.h\n"
      "| kernel | sessions | MB read | time per call | GB/s | fraction of the read bandwidth "
      "|\n|---|---|---|---|---|---|\n",
      (long long)cached, (long long)visible);
  at::manual_seed(3);
  for (int n : sessions) {
    // Attention: each session's own cache, [kv_heads, cached + 1, hd] (the new row last).
    const at::Tensor q = at::randn({n, heads, hd});
    const at::Tensor k_new = at::randn({n, kv_heads, hd}), v_new = at::randn({n, kv_heads, hd});
    std::vector<at::Tensor> keys, values;
    for (int s = 0; s < n; ++s) {
      keys.push_back(at::randn({kv_heads, cached + 1, hd}));
      values.push_back(at::randn({kv_heads, cached + 1, hd}));
    }
    std::vector<engine::internal::AttentionSeq> seqs;
    for (int s = 0; s < n; ++s) seqs.push_back({s, 1, &keys[s], &values[s], nullptr, nullptr});
    at::Tensor attended = at::empty({n, heads * hd});
    const double attention = BestSeconds(
        [&] {
          engine::internal::VarlenAttention(q, k_new, v_new, seqs, kv_heads, window, attended);
        },
        now);
    PrintRow("attention", n, 2.0 * n * kv_heads * visible * hd * 4, attention, machine);

    // The fast-weight term: one row per session against its own delta, fp32 and bf16.
    const at::Tensor z = at::rand({n, f}) * 2 - 1;
    at::Tensor out = at::empty({n, d});
    std::vector<at::Tensor> f32, bf16;
    for (int s = 0; s < n; ++s) {
      f32.push_back(at::rand({d, f}) * 2 - 1);
      bf16.push_back(f32.back().to(at::kBFloat16));
    }
    std::vector<engine::internal::DeltaSeq> seqs32, seqs16;
    for (int s = 0; s < n; ++s) {
      seqs32.push_back({s, 1, &f32[s]});
      seqs16.push_back({s, 1, &bf16[s]});
    }
    const double fp32 =
        BestSeconds([&] { engine::internal::BatchedDeltaProduct(z, seqs32, out); }, now);
    const double half =
        BestSeconds([&] { engine::internal::BatchedDeltaProduct(z, seqs16, out); }, now);
    PrintRow("delta term, fp32", n, 4.0 * n * d * f, fp32, machine);
    PrintRow("delta term, bf16", n, 2.0 * n * d * f, half, machine);
  }
}

void DenseProductTable(const engine::ModelConfig& c, const std::vector<int>& sessions,
                       const std::function<double()>& now) {
  c10::InferenceMode inference;
  const int64_t d = c.hidden_size, f = c.intermediate_size;
  std::printf(
      "\nThe short step's dense products (engine/internal/batched_kernels.h SmallRowProduct "
      "against OpenBLAS as the short step called it before: sgemv per row up to two rows, else "
      "sgemm), weights hot in the cache, best of 5, weights %lld x %lld\n"
      "| shape | rows | SmallRowProduct | GFLOP/s | OpenBLAS | GFLOP/s | time ratio "
      "(OpenBLAS / kernel) |\n|---|---|---|---|---|---|---|\n",
      (long long)d, (long long)f);
  at::manual_seed(5);
  for (auto [k, n, name] : {std::tuple<int64_t, int64_t, const char*>{d, f, "up (d -> d_ff)"},
                            {f, d, "down (d_ff -> d)"}}) {
    const at::Tensor w = at::randn({n, k});
    for (int rows : sessions) {
      const at::Tensor x = at::randn({rows, k});
      at::Tensor out = at::empty({rows, n});
      const double kernel = BestSeconds(
          [&] {
            engine::internal::SmallRowProduct(x.data_ptr<float>(), rows, k, w.data_ptr<float>(), n,
                                              nullptr, out.data_ptr<float>());
          },
          now);
      const double blas = BestSeconds([&] { out = engine::internal::Linear(x, w); }, now);
      const double flops = 2.0 * rows * k * n;
      std::printf("| %s | %d | %.3f ms | %.1f | %.3f ms | %.1f | %.2f |\n", name, rows,
                  kernel * 1e3, flops / kernel / 1e9, blas * 1e3, flops / blas / 1e9,
                  blas / kernel);
    }
  }
}

}  // namespace ttt::bench
