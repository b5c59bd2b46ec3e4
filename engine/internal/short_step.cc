// The forward of a short step: every item a decode step or a short piece inside its TTT chunk, on
// the CPU in float32 outside autograd (ModelAccess::Run picks it). A small model's decode step is
// dispatch-bound (~1 us per LibTorch operation), so here the activations live in this thread's
// workspace (internal/workspace.h), the elementwise work (norms, RoPE, SiLU's product, residuals,
// the embedding lookup) runs as plain loops over it, and each dense product writes straight into
// its buffer: a few operations per layer instead of ~60. The arithmetic is the general path's,
// operation for operation (the same BLAS calls, the same row kernels, LibTorch's own SiLU and
// cos/sin), so the results are bit-identical to it (engine_bench --only=digest shows it).
#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>

#include "engine/internal/forward.h"
#include "engine/internal/row_kernels.h"
#include "engine/internal/workspace.h"

namespace ttt::engine {
namespace internal {

// The step's activations, [rows, width] views of the workspace.
struct ShortBuffers {
  int64_t rows = 0;
  at::Tensor hidden;      // the residual stream x
  at::Tensor embeddings;  // the embedding rows (X0 of an input_embed TTT target)
  at::Tensor normed;      // RMSNorm outputs
  at::Tensor q, k, v, attended, projected, gate, up, fast;
  at::Tensor cos, sin;    // RoPE factors [rows, head_dim]
  at::Tensor rotated;     // one head of scratch for RoPE
};

}  // namespace internal

namespace {

using internal::FloatView;
using internal::Slot;

float* Row(const at::Tensor& t, int64_t r) { return t.data_ptr<float>() + r * t.size(1); }

// out [rows, n] = x [rows, k] @ weight^T (+ bias), with the BLAS calls internal::Linear makes:
// up to kMatVecRows rows one matrix-vector product per row (addmv_out is at::mv's own call),
// else one GEMM (at::linear's addmm / mm). A weight under autograd takes internal::Linear.
void LinearInto(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                at::Tensor& out) {
  const int64_t rows = x.size(0), k = x.size(1), n = out.size(1);
  if (weight.requires_grad()) {
    out.copy_(internal::Linear(x, weight, bias));
  } else if (rows > kMatVecRows) {
    if (bias.defined()) {
      at::addmm_out(out, bias, x, weight.t());
    } else {
      at::mm_out(out, x, weight.t());
    }
  } else if (rows == 1 && bias.defined()) {
    at::Tensor dest = FloatView(Row(out, 0), {n});
    at::addmv_out(dest, bias, weight, FloatView(Row(x, 0), {k}));
  } else {
    for (int64_t r = 0; r < rows; ++r) {
      at::Tensor dest = FloatView(Row(out, r), {n});
      at::addmv_out(dest, dest, weight, FloatView(Row(x, r), {k}), /*beta=*/0, /*alpha=*/1);
    }
    if (bias.defined()) {
      const float* b = bias.data_ptr<float>();
      for (int64_t r = 0; r < rows; ++r) {
        float* o = Row(out, r);
        for (int64_t j = 0; j < n; ++j) o[j] = o[j] + b[j];
      }
    }
  }
}

// RMSNorm of each of `rows` rows of `width` floats (consecutive) from `x` into `y` (may be x).
void NormRows(const float* x, const at::Tensor& weight, int64_t rows, int64_t width, double eps,
              float* y) {
  const float* w = weight.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r) {
    internal::RmsNormRow(x + r * width, w, width, eps, y + r * width);
  }
}

// RoPE in place on [rows, heads, hd] `x` with the rows' factors.
void RopeInPlace(const at::Tensor& x, int64_t heads, const internal::ShortBuffers& buf) {
  const int64_t hd = buf.cos.size(1);
  float* data = x.data_ptr<float>();
  for (int64_t r = 0; r < buf.rows; ++r) {
    for (int64_t h = 0; h < heads; ++h) {
      float* head = data + (r * heads + h) * hd;
      float* scratch = buf.rotated.data_ptr<float>();
      std::memcpy(scratch, head, hd * sizeof(float));
      internal::RopeRow(scratch, Row(buf.cos, r), Row(buf.sin, r), hd, head);
    }
  }
}

// y[i] = y[i] + x[i] over `n` floats.
void AddInto(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = y[i] + x[i];
}

}  // namespace

std::vector<at::Tensor> ModelAccess::RunShort(const std::vector<int64_t>& tokens,
                                              const std::vector<float>& positions) {
  internal::Workspace& ws = internal::Workspace::ForThisThread();
  const int64_t rows = static_cast<int64_t>(tokens.size()), d = cfg_.hidden_size;
  const int64_t f = cfg_.intermediate_size, hd = cfg_.head_dim, vocab = cfg_.vocab_size;
  const int64_t q_width = cfg_.num_attention_heads * hd, kv_width = cfg_.num_key_value_heads * hd;
  internal::ShortBuffers buf;
  buf.rows = rows;
  buf.hidden = ws.Tensor(Slot::kHidden, {rows, d});
  buf.embeddings = ws.Tensor(Slot::kEmbeddings, {rows, d});
  buf.normed = ws.Tensor(Slot::kNormed, {rows, d});
  buf.q = ws.Tensor(Slot::kQ, {rows, q_width});
  buf.k = ws.Tensor(Slot::kK, {rows, kv_width});
  buf.v = ws.Tensor(Slot::kV, {rows, kv_width});
  buf.attended = ws.Tensor(Slot::kAttended, {rows, q_width});
  buf.projected = ws.Tensor(Slot::kProjected, {rows, d});
  buf.gate = ws.Tensor(Slot::kGate, {rows, f});
  buf.up = ws.Tensor(Slot::kUp, {rows, f});
  buf.fast = ws.Tensor(Slot::kFast, {rows, d});
  buf.cos = ws.Tensor(Slot::kCos, {rows, hd});
  buf.sin = ws.Tensor(Slot::kSin, {rows, hd});
  buf.rotated = ws.Tensor(Slot::kRotated, {hd});

  // The embedding rows (index_select's copy).
  const at::Tensor embed = w_.embed.contiguous();
  for (int64_t r = 0; r < rows; ++r) {
    const float* source = embed.data_ptr<float>() + tokens[r] * d;
    std::memcpy(Row(buf.hidden, r), source, d * sizeof(float));
    std::memcpy(Row(buf.embeddings, r), source, d * sizeof(float));
  }
  // RoPE factors: the angles position * inv_freq twice over (Run's outer and cat), then
  // LibTorch's own cos and sin over the same [rows * head_dim] floats.
  const at::Tensor angles = ws.Tensor(Slot::kAngles, {rows, hd});
  const float* inv_freq = w_.inv_freq.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r) {
    float* a = Row(angles, r);
    for (int64_t j = 0; j < hd / 2; ++j) a[j] = a[j + hd / 2] = positions[r] * inv_freq[j];
  }
  at::cos_out(buf.cos, angles);
  at::sin_out(buf.sin, angles);

  for (size_t l = 0; l < w_.layers.size(); ++l) ShortLayer(l, buf);

  NormRows(buf.hidden.data_ptr<float>(), w_.final_norm, rows, d, cfg_.rms_norm_eps,
           buf.normed.data_ptr<float>());
  at::Tensor logits = ws.Tensor(Slot::kLogits, {rows, vocab});
  LinearInto(buf.normed, w_.lm_head, {}, logits);
  std::vector<at::Tensor> per_item;
  for (size_t b = 0; b < items_.size(); ++b) {
    per_item.push_back(FloatView(logits, Row(logits, offsets_[b]), {Count(b), vocab}));
    items_[b].state->position += Count(b);
  }
  return per_item;
}

// One decoder layer of a short step, as ModelAccess::Layer computes it.
void ModelAccess::ShortLayer(size_t l, const internal::ShortBuffers& buf) {
  const LayerWeights& lw = w_.layers[l];
  const int64_t rows = buf.rows, d = cfg_.hidden_size, hd = cfg_.head_dim;
  const int64_t heads = cfg_.num_attention_heads, kv_heads = cfg_.num_key_value_heads;
  const double eps = cfg_.rms_norm_eps;
  float* hidden = buf.hidden.data_ptr<float>();
  float* normed = buf.normed.data_ptr<float>();
  float* projected = buf.projected.data_ptr<float>();

  NormRows(hidden, lw.input_norm, rows, d, eps, normed);
  at::Tensor q = buf.q, k = buf.k, v = buf.v, attended = buf.attended;
  LinearInto(buf.normed, lw.q_proj, lw.q_bias, q);
  LinearInto(buf.normed, lw.k_proj, lw.k_bias, k);
  LinearInto(buf.normed, lw.v_proj, lw.v_bias, v);
  if (lw.q_norm.defined()) {
    NormRows(q.data_ptr<float>(), lw.q_norm, rows * heads, hd, eps, q.data_ptr<float>());
    NormRows(k.data_ptr<float>(), lw.k_norm, rows * kv_heads, hd, eps, k.data_ptr<float>());
  }
  RopeInPlace(q, heads, buf);
  RopeInPlace(k, kv_heads, buf);
  AttendVarlen(l, FloatView(q.data_ptr<float>(), {rows, heads, hd}),
               FloatView(k.data_ptr<float>(), {rows, kv_heads, hd}),
               FloatView(v.data_ptr<float>(), {rows, kv_heads, hd}), attended);
  at::Tensor out = buf.projected;
  LinearInto(attended, lw.o_proj, {}, out);
  AddInto(hidden, projected, rows * d);  // the residual after attention

  NormRows(hidden, lw.post_norm, rows, d, eps, normed);
  at::Tensor gate = buf.gate, up = buf.up;
  LinearInto(buf.normed, lw.gate_proj, {}, gate);
  LinearInto(buf.normed, lw.up_proj, {}, up);
  at::silu_(gate);
  float* z = gate.data_ptr<float>();
  const float* u = up.data_ptr<float>();
  for (int64_t i = 0; i < gate.numel(); ++i) z[i] = z[i] * u[i];
  LinearInto(gate, lw.down_proj, {}, out);
  if (lw.ttt_slot >= 0) {
    const at::Tensor& x0 = cfg_.ttt_target == TttTarget::kInputEmbed ? buf.embeddings : buf.normed;
    at::Tensor fast = buf.fast;
    FastWeightTermsVarlen(lw, gate, x0, fast);
    AddInto(projected, fast.data_ptr<float>(), rows * d);
  }
  AddInto(hidden, projected, rows * d);
}

}  // namespace ttt::engine
