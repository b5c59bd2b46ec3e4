// engine/internal/row_kernels: the fused RMSNorm and RoPE kernels against their LibTorch tensor
// forms (the forms the engine uses elsewhere: autograd, bf16, other devices), and the TTT
// target's chunk convolution against at::conv1d.
#include "engine/internal/row_kernels.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

namespace ttt::engine::internal {
namespace {

at::Tensor RmsNormTensors(const at::Tensor& x, const at::Tensor& w, double eps) {
  return w * (x * at::rsqrt(x.pow(2).mean(-1, /*keepdim=*/true) + eps));
}

at::Tensor RopeTensors(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  const at::Tensor rotated = at::cat({-x.slice(-1, half), x.slice(-1, 0, half)}, -1);
  return x * cos + rotated * sin;
}

double MaxDiff(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).abs().max().item<double>();
}

TEST(RowKernelsTest, RmsNormMatchesTheTensorForm) {
  c10::InferenceMode inference;
  at::manual_seed(1);
  for (const std::vector<int64_t>& shape :
       std::vector<std::vector<int64_t>>{{1, 128}, {7, 768}, {3, 2, 64}, {0, 16}}) {
    const at::Tensor x = at::randn(shape) * 3;
    const at::Tensor w = at::randn({shape.back()});
    const at::Tensor got = RmsNormRows(x, w, 1e-6);
    ASSERT_EQ(got.sizes(), x.sizes());
    if (x.numel() > 0) {
      EXPECT_LT(MaxDiff(got, RmsNormTensors(x, w, 1e-6)), 1e-5);
    }
  }
  // A strided view (a slice of columns) is read as its values, not its storage.
  const at::Tensor wide = at::randn({5, 64});
  const at::Tensor view = wide.slice(1, 0, 32);
  const at::Tensor w = at::ones({32});
  EXPECT_LT(MaxDiff(RmsNormRows(view, w, 1e-5), RmsNormTensors(view, w, 1e-5)), 1e-5);
}

// The TTT target's depthwise convolution inside each chunk, as forward.cc's at::conv1d form.
TEST(RowKernelsTest, ChunkConvMatchesConv1d) {
  c10::InferenceMode inference;
  at::manual_seed(3);
  for (int64_t chunk : {1, 2, 6, 16}) {
    const at::Tensor x = at::randn({3, chunk, 24}), taps = at::randn({24, 1, 5});
    const at::Tensor expected =
        at::conv1d(x.transpose(1, 2), taps, {}, 1, /*padding=*/2, 1, /*groups=*/24).transpose(1, 2);
    EXPECT_LT(MaxDiff(ChunkConvTensor(x, taps), expected), 1e-5) << "chunk " << chunk;
  }
}

TEST(RowKernelsTest, RopeMatchesTheTensorForm) {
  c10::InferenceMode inference;
  at::manual_seed(2);
  for (const std::vector<int64_t>& shape :
       std::vector<std::vector<int64_t>>{{1, 2, 64}, {9, 4, 16}, {3, 1, 2}}) {
    const at::Tensor x = at::randn(shape);
    const at::Tensor angles = at::randn({shape[0], 1, shape[2]}) * 10;
    const at::Tensor got = RopeRows(x, angles.cos(), angles.sin());
    ASSERT_EQ(got.sizes(), x.sizes());
    EXPECT_LT(MaxDiff(got, RopeTensors(x, angles.cos(), angles.sin())), 1e-6);
  }
}

// The raw-row forms the short-step forward uses: in place (norms of q and k heads, RoPE through a
// scratch row) they give the tensor forms' values bit for bit.
TEST(RowKernelsTest, RawRowsInPlaceEqualTheTensorFormsExactly) {
  c10::InferenceMode inference;
  at::manual_seed(3);
  const at::Tensor x = at::randn({3, 2, 64}) * 3, w = at::randn({64});
  at::Tensor in_place = x.clone();
  float* data = in_place.data_ptr<float>();
  for (int64_t r = 0; r < 6; ++r) {
    RmsNormRow(data + r * 64, w.data_ptr<float>(), 64, 1e-6, data + r * 64);
  }
  EXPECT_TRUE(at::equal(in_place, RmsNormRows(x, w, 1e-6)));

  const at::Tensor angles = at::randn({3, 1, 64}) * 10;
  const at::Tensor cos = angles.cos(), sin = angles.sin();
  at::Tensor rotated = x.clone();
  std::vector<float> scratch(64);
  for (int64_t i = 0; i < 3; ++i) {
    for (int64_t h = 0; h < 2; ++h) {
      float* head = rotated.data_ptr<float>() + (i * 2 + h) * 64;
      std::copy(head, head + 64, scratch.begin());
      RopeRow(scratch.data(), cos.data_ptr<float>() + i * 64, sin.data_ptr<float>() + i * 64, 64,
              head);
    }
  }
  EXPECT_TRUE(at::equal(rotated, RopeRows(x, cos, sin)));
  EXPECT_LT(MaxDiff(rotated, RopeTensors(x, cos, sin)), 1e-6);
}

TEST(RowKernelsTest, ApplyOnlyToFloatOutsideAutograd) {
  c10::InferenceMode inference;
  EXPECT_TRUE(RowKernelsApply(at::zeros({2, 4})));
  EXPECT_FALSE(RowKernelsApply(at::zeros({2, 4}, at::kBFloat16)));
}

TEST(RowKernelsTest, NotUnderAutograd) {
  at::Tensor x = at::zeros({2, 4}).requires_grad_(true);
  EXPECT_FALSE(RowKernelsApply(x));
  EXPECT_FALSE(RowKernelsApply(at::zeros({2, 4})));  // grad mode is on here
}

}  // namespace
}  // namespace ttt::engine::internal
