// The per-sequence parts of one engine step (attention over each sequence's own cache, each
// sequence's own fast-weight delta) as single calls over all sequences of the step, so that the
// number of operations a step dispatches does not grow with the number of sequences (DESIGN.md,
// "Batching: the shape that scales"). CPU, float32: they read each sequence's tensors in place
// (varlen, no padding and no gather copy; deltas f32 or bf16), as vLLM's CPU attention and
// Punica's gather-matmul do.
#pragma once

#include <cstdint>

#include <ATen/ATen.h>

#include "absl/types/span.h"

namespace ttt::engine::internal {

// One sequence's queries in a varlen attention call.
struct AttentionSeq {
  int64_t row0 = 0;  // its first row in the step's rows
  int64_t rows = 0;  // its new tokens
  // [kv_heads, total, head_dim] f32 views (rows of head_dim contiguous): the cache, grown by
  // `rows` rows that the call fills with the new tokens' keys and values.
  at::Tensor* keys = nullptr;
  at::Tensor* values = nullptr;
  // A read-only prefix of the cache that comes before `keys`/`values` (LayerCache::shared_keys,
  // a fork's shared rows; same layout), or null.
  const at::Tensor* shared_keys = nullptr;
  const at::Tensor* shared_values = nullptr;
};

// Writes each sequence's new keys and values (rows row0.. of k_new/v_new [R, kv_heads, head_dim]
// f32 contiguous, RoPE applied) into the last rows of its grown cache, then computes causal
// attention of its new rows over its own keys: query i of a sequence sees key j when
// j <= cached + i and, with window > 0, j > cached + i - window. q: [R, heads, head_dim] f32
// contiguous; writes the sequences' rows of out [R, heads * head_dim] f32 contiguous.
// Grouped-query attention: heads / kv_heads query heads share a key head.
void VarlenAttention(const at::Tensor& q, const at::Tensor& k_new, const at::Tensor& v_new,
                     absl::Span<const AttentionSeq> seqs, int64_t kv_heads, int64_t window,
                     at::Tensor& out);

// One sequence's rows in a batched fast-weight product.
struct DeltaSeq {
  int64_t row0 = 0;
  int64_t rows = 0;
  const at::Tensor* delta = nullptr;  // [d_model, d_ff] f32 or bf16 contiguous
};

// out[r] = delta_s @ z[r] for every row r of every sequence s. z: [R, d_ff] f32 contiguous;
// out: [R, d_model] f32 contiguous (rows of other sequences untouched). A bf16 delta is widened
// lane by lane as it is read (no fp32 copy) and gives the bits its fp32 copy would.
void BatchedDeltaProduct(const at::Tensor& z, absl::Span<const DeltaSeq> seqs, at::Tensor& out);

// out [rows, n] = x [rows, k] @ w^T (+ bias), raw f32 row-major (w [n, k]; bias [n] or null):
// the dense products of a short step. Each block of weight rows is read from memory once and
// multiplied with every row of x while it sits in the L1 cache, with no packing (OpenBLAS's GEMM
// repacks the whole weight on every call: a third of a 16-session decode step). Each output's
// arithmetic is fixed (eight lanes over k in order, then one sum tree), so a row gives the same
// bits whatever other rows the call has and however the columns are split between threads.
void SmallRowProduct(const float* x, int64_t rows, int64_t k, const float* w, int64_t n,
                     const float* bias, float* out);

}  // namespace ttt::engine::internal
