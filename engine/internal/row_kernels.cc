#include "engine/internal/row_kernels.h"

#include <ATen/core/grad_mode.h>

#include <cmath>
#include <vector>

#include "engine/internal/model_weights.h"

namespace ttt::engine::internal {

bool RowKernelsApply(const at::Tensor& x) {
  return x.device().is_cpu() && x.scalar_type() == at::kFloat && !x.requires_grad() &&
         !at::GradMode::is_enabled();
}

at::Tensor RmsNormRows(const at::Tensor& x, const at::Tensor& weight, double eps) {
  TORCH_CHECK(
      weight.scalar_type() == at::kFloat && weight.dim() == 1 && weight.size(0) == x.size(-1),
      "RmsNormRows: float32 weight [d]");
  const at::Tensor in = x.contiguous(), w = weight.contiguous();
  at::Tensor out = at::empty_like(in);
  const int64_t d = in.size(-1), rows = d == 0 ? 0 : in.numel() / d;
  const float* src = in.data_ptr<float>();
  const float* wd = w.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r) RmsNormRow(src + r * d, wd, d, eps, dst + r * d);
  return out;
}

void RmsNormRow(const float* x, const float* weight, int64_t d, double eps, float* y) {
  double squares = 0;  // in double: the mean of d squares without float's growing error
  for (int64_t c = 0; c < d; ++c) squares += static_cast<double>(x[c]) * x[c];
  const float scale = static_cast<float>(1.0 / std::sqrt(squares / d + eps));
  for (int64_t c = 0; c < d; ++c) y[c] = weight[c] * (x[c] * scale);
}

void RopeRow(const float* x, const float* cos, const float* sin, int64_t hd, float* y) {
  const int64_t half = hd / 2;
  for (int64_t k = 0; k < half; ++k) y[k] = x[k] * cos[k] + (-x[k + half]) * sin[k];
  for (int64_t k = half; k < hd; ++k) y[k] = x[k] * cos[k] + x[k - half] * sin[k];
}

at::Tensor RopeRows(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK(x.dim() == 3 && cos.dim() == 3 && cos.sizes() == sin.sizes() &&
                  cos.size(0) == x.size(0) && cos.size(2) == x.size(2) && x.size(2) % 2 == 0 &&
                  cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat,
              "RopeRows: x [n, heads, hd], cos/sin [n, 1, hd] float32");
  const at::Tensor in = x.contiguous(), c = cos.contiguous(), s = sin.contiguous();
  at::Tensor out = at::empty_like(in);
  const int64_t n = in.size(0), heads = in.size(1), hd = in.size(2);
  const float* src = in.data_ptr<float>();
  const float* cd = c.data_ptr<float>();
  const float* sd = s.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t at = (i * heads + h) * hd;
      RopeRow(src + at, cd + i * hd, sd + i * hd, hd, dst + at);
    }
  }
  return out;
}

void ChunkConvRows(const float* x, const float* taps, int64_t chunks, int64_t chunk, int64_t d,
                   float* y) {
  constexpr int64_t kPad = kConvWidth / 2;
  std::vector<float> by_tap(kConvWidth * d);  // [tap][channel]: the inner loop runs over channels
  for (int64_t c = 0; c < d; ++c) {
    for (int64_t w = 0; w < kConvWidth; ++w) by_tap[w * d + c] = taps[c * kConvWidth + w];
  }
  for (int64_t g = 0; g < chunks; ++g) {
    const float* in = x + g * chunk * d;
    float* out = y + g * chunk * d;
    for (int64_t t = 0; t < chunk; ++t) {
      float* row = out + t * d;
      for (int64_t c = 0; c < d; ++c) row[c] = 0;
      for (int64_t w = 0; w < kConvWidth; ++w) {
        const int64_t source = t + w - kPad;
        if (source < 0 || source >= chunk) continue;
        const float* tap = by_tap.data() + w * d;
        const float* from = in + source * d;
        for (int64_t c = 0; c < d; ++c) row[c] += tap[c] * from[c];
      }
    }
  }
}

at::Tensor ChunkConvTensor(const at::Tensor& x, const at::Tensor& taps) {
  TORCH_CHECK(
      x.dim() == 3 && taps.scalar_type() == at::kFloat && taps.numel() == x.size(2) * kConvWidth,
      "ChunkConvTensor: x [chunks, chunk, d], taps [d, 1, kConvWidth] float32");
  const at::Tensor in = x.contiguous(), k = taps.contiguous();
  at::Tensor out = at::empty_like(in);
  ChunkConvRows(in.data_ptr<float>(), k.data_ptr<float>(), in.size(0), in.size(1), in.size(2),
                out.data_ptr<float>());
  return out;
}

}  // namespace ttt::engine::internal
