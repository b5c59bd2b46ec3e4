// Fused per-row kernels for the CPU float32 forward: RMSNorm and RoPE as one call each, in place
// of the 10-14 LibTorch operations their tensor forms dispatch. A small model's decode step is
// dispatch-bound (~1 us per operation, hundreds per step), so these set its latency.
#pragma once

#include <ATen/ATen.h>

namespace ttt::engine::internal {

// True when `x` can take the kernels below: a CPU float32 tensor outside autograd.
bool RowKernelsApply(const at::Tensor& x);

// weight * x / sqrt(mean(x^2, last dim) + eps) over the last dimension of x [..., d];
// weight [d] float32.
at::Tensor RmsNormRows(const at::Tensor& x, const at::Tensor& weight, double eps);

// Rotary embedding, as x * cos + rotate_half(x) * sin with rotate_half(x) = cat(-x[half:],
// x[:half]): x [n, heads, hd], cos/sin [n, 1, hd] float32.
at::Tensor RopeRows(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

// The same two kernels on raw rows, for callers that keep their activations in their own buffers
// (the short-step forward): the tensor forms above run exactly these loops.
// y[0, d) = weight * x / sqrt(mean(x^2) + eps); y may be x.
void RmsNormRow(const float* x, const float* weight, int64_t d, double eps, float* y);
// y[0, hd) = the rotary embedding of x[0, hd) with factors cos/sin[0, hd); y must not alias x.
void RopeRow(const float* x, const float* cos, const float* sin, int64_t hd, float* y);

// The TTT target's depthwise convolution (cross-correlation over time, kConvWidth taps, zero
// padding kConvWidth / 2 each side, inside each chunk) of `chunks` chunks of `chunk` rows,
// x [chunks * chunk, d], with taps [d, 1, kConvWidth] (as stored), into y (same shape, no alias).
// Each output sums its taps in order, the first tap onto zero.
void ChunkConvRows(const float* x, const float* taps, int64_t chunks, int64_t chunk, int64_t d,
                   float* y);

// ChunkConvRows over a tensor x [chunks, chunk, d]: [chunks, chunk, d]. REQUIRES:
// RowKernelsApply(x), taps float32.
at::Tensor ChunkConvTensor(const at::Tensor& x, const at::Tensor& taps);

}  // namespace ttt::engine::internal
