// The forward of a short step: every item a decode step or a short piece inside its TTT chunk, on
// the CPU in float32 outside autograd (ModelAccess::Run picks it). A small model's decode step is
// dispatch-bound (~1 us per LibTorch operation), so here no LibTorch operation runs per layer:
// the activations are raw floats in this thread's workspace (internal/workspace.h), every dense
// product of up to kKernelProductRows rows is one SmallRowProduct (internal/batched_kernels.h:
// the weights read once, no packing, a row's bits independent of the batch), a larger one the
// BLAS routine LibTorch's own product would call (sgemm_, the same arguments), and the rest (norms,
// RoPE, SiLU's product, residuals, the embedding lookup, attention over the KV window, the
// fast-weight term) are plain loops over those floats. The KV caches and chunk buffers grow inside
// their preallocated rows (internal/state_buffer.h). Only a step that completes a TTT chunk
// dispatches operations (adding the chunk's update to the delta, FoldChunks). The results are the
// tensor path's to within rounding, not bit for bit: SiLU and the RoPE factors use glibc's
// expf/cosf/sinf where LibTorch uses SLEEF's (~1 ulp; short_step_test holds the two together).
#include <ATen/ATen.h>
#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine/internal/batched_kernels.h"
#include "engine/internal/forward.h"
#include "engine/internal/row_kernels.h"
#include "engine/internal/workspace.h"

namespace ttt::engine {
namespace internal {

// The step's activations: views of the workspace (the same ones from step to step when the row
// count repeats) and their floats, rows consecutive.
struct ShortBuffers {
  int64_t rows = 0;
  at::Tensor q, k, v;                    // [rows, heads or kv_heads, head_dim]
  at::Tensor attended, gate, fast;       // [rows, heads * head_dim], [rows, d_ff], [rows, d_model]
  at::Tensor embeddings, normed;         // [rows, d_model]: X0 of the TTT target is one of them
  float* hidden = nullptr;               // the residual stream x [rows, d_model]
  float* projected = nullptr;            // an output projection's rows [rows, d_model]
  float* up = nullptr;                   // [rows, d_ff]
  float *cos = nullptr, *sin = nullptr;  // RoPE factors [rows, head_dim]
  float* rotated = nullptr;              // one head of scratch for RoPE
};

}  // namespace internal

namespace {

using internal::ChunkConvRows;
using internal::FloatView;
using internal::ShortBuffers;
using internal::Slot;

// The Fortran BLAS GEMM LibTorch's CPU products call (at::native's gemm<float>), looked up in this
// process at first use: the library LibTorch loaded, so a product here gives the same bits as
// LibTorch's. Null when LibTorch's BLAS does not export it (a LibTorch with MKL linked in
// statically): then the products go through LibTorch's operations.
using SgemmFn = void (*)(const char*, const char*, const int*, const int*, const int*, const float*,
                         const float*, const int*, const float*, const int*, const float*, float*,
                         const int*);

SgemmFn InProcessSgemm() {
  static const SgemmFn sgemm = reinterpret_cast<SgemmFn>(dlsym(RTLD_DEFAULT, "sgemm_"));
  return sgemm;
}

// out [rows, n] = x [rows, k] @ weight^T (+ bias): up to kKernelProductRows rows one
// SmallRowProduct, else the GEMM internal::Linear calls (at::addmm_out / mm_out: out^T = weight
// x^T in column-major terms). A weight under autograd or not in row-major floats, or no BLAS in
// reach for a larger product, takes LibTorch's operations.
void Product(const float* x, int64_t rows, int64_t k, const at::Tensor& weight,
             const at::Tensor& bias, float* out) {
  const int64_t n = weight.size(0);
  const bool rows_major = !weight.requires_grad() && weight.scalar_type() == at::kFloat &&
                          weight.stride(1) == 1 && weight.stride(0) == k &&
                          (!bias.defined() || bias.is_contiguous());
  if (rows_major && rows <= kKernelProductRows) {
    internal::SmallRowProduct(x, rows, k, weight.data_ptr<float>(), n,
                              bias.defined() ? bias.data_ptr<float>() : nullptr, out);
    return;
  }
  const SgemmFn sgemm = InProcessSgemm();
  if (!rows_major || sgemm == nullptr) {
    at::Tensor dest = FloatView(out, {rows, n});
    dest.copy_(internal::Linear(FloatView(const_cast<float*>(x), {rows, k}), weight, bias));
    return;
  }
  const float* b = bias.defined() ? bias.data_ptr<float>() : nullptr;
  if (b != nullptr) {
    for (int64_t r = 0; r < rows; ++r) std::memcpy(out + r * n, b, n * sizeof(float));
  }
  const int ik = static_cast<int>(k), in = static_cast<int>(n), im = static_cast<int>(rows);
  const float alpha = 1, beta = b != nullptr ? 1 : 0;
  const char trans_w = 't', trans_x = 'n';
  sgemm(&trans_w, &trans_x, &in, &im, &ik, &alpha, weight.data_ptr<float>(), &ik, x, &ik, &beta,
        out, &in);
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
void RopeInPlace(float* x, int64_t heads, int64_t hd, const ShortBuffers& buf) {
  for (int64_t r = 0; r < buf.rows; ++r) {
    for (int64_t h = 0; h < heads; ++h) {
      float* head = x + (r * heads + h) * hd;
      std::memcpy(buf.rotated, head, hd * sizeof(float));
      internal::RopeRow(buf.rotated, buf.cos + r * hd, buf.sin + r * hd, hd, head);
    }
  }
}

// z[i] = silu(z[i]) * u[i] over `n` floats, with silu(x) = x / (1 + exp(-x)) as LibTorch writes it.
void SwiGluInPlace(float* z, const float* u, int64_t n) {
  for (int64_t i = 0; i < n; ++i) z[i] = z[i] / (1.0f + std::exp(-z[i])) * u[i];
}

// True when `t` is a float32 tensor whose floats are in row-major order from its data pointer.
bool RawFloats(const at::Tensor& t) {
  return t.defined() && t.scalar_type() == at::kFloat && t.is_contiguous() && !t.requires_grad();
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
  const int64_t heads = cfg_.num_attention_heads, kv_heads = cfg_.num_key_value_heads;
  ShortBuffers buf;
  buf.rows = rows;
  buf.q = ws.Tensor(Slot::kQ, {rows, heads, hd});
  buf.k = ws.Tensor(Slot::kK, {rows, kv_heads, hd});
  buf.v = ws.Tensor(Slot::kV, {rows, kv_heads, hd});
  buf.attended = ws.Tensor(Slot::kAttended, {rows, heads * hd});
  buf.gate = ws.Tensor(Slot::kGate, {rows, f});
  buf.fast = ws.Tensor(Slot::kFast, {rows, d});
  buf.embeddings = ws.Tensor(Slot::kEmbeddings, {rows, d});
  buf.normed = ws.Tensor(Slot::kNormed, {rows, d});
  buf.hidden = ws.Tensor(Slot::kHidden, {rows, d}).data_ptr<float>();
  buf.projected = ws.Tensor(Slot::kProjected, {rows, d}).data_ptr<float>();
  buf.up = ws.Tensor(Slot::kUp, {rows, f}).data_ptr<float>();
  buf.cos = ws.Tensor(Slot::kCos, {rows, hd}).data_ptr<float>();
  buf.sin = ws.Tensor(Slot::kSin, {rows, hd}).data_ptr<float>();
  buf.rotated = ws.Tensor(Slot::kRotated, {hd}).data_ptr<float>();
  float* embeddings = buf.embeddings.data_ptr<float>();

  const float* embed = w_.embed.data_ptr<float>();  // contiguous (Model's loader makes it so)
  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(buf.hidden + r * d, embed + tokens[r] * d, d * sizeof(float));
    std::memcpy(embeddings + r * d, embed + tokens[r] * d, d * sizeof(float));
  }
  // RoPE factors: cos and sin of position * inv_freq, the half-width angles twice over.
  const float* inv_freq = w_.inv_freq.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < hd / 2; ++j) {
      const float angle = positions[r] * inv_freq[j];
      buf.cos[r * hd + j] = buf.cos[r * hd + j + hd / 2] = std::cos(angle);
      buf.sin[r * hd + j] = buf.sin[r * hd + j + hd / 2] = std::sin(angle);
    }
  }

  for (size_t l = 0; l < w_.layers.size(); ++l) ShortLayer(l, buf);

  float* normed = buf.normed.data_ptr<float>();
  NormRows(buf.hidden, w_.final_norm, rows, d, cfg_.rms_norm_eps, normed);
  at::Tensor logits = ws.Tensor(Slot::kLogits, {rows, vocab});
  Product(normed, rows, d, w_.lm_head, {}, logits.data_ptr<float>());
  std::vector<at::Tensor> per_item;
  for (size_t b = 0; b < items_.size(); ++b) {
    per_item.push_back(
        items_.size() == 1
            ? logits
            : FloatView(logits, logits.data_ptr<float>() + offsets_[b] * vocab, {Count(b), vocab}));
    items_[b].state->position += Count(b);
  }
  return per_item;
}

// One decoder layer of a short step, as ModelAccess::Layer computes it.
void ModelAccess::ShortLayer(size_t l, const ShortBuffers& buf) {
  const LayerWeights& lw = w_.layers[l];
  const int64_t rows = buf.rows, d = cfg_.hidden_size, hd = cfg_.head_dim;
  const int64_t f = cfg_.intermediate_size, heads = cfg_.num_attention_heads;
  const int64_t kv_heads = cfg_.num_key_value_heads;
  const double eps = cfg_.rms_norm_eps;
  float* normed = buf.normed.data_ptr<float>();
  float* q = buf.q.data_ptr<float>();
  float* k = buf.k.data_ptr<float>();
  float* gate = buf.gate.data_ptr<float>();
  float* fast = buf.fast.data_ptr<float>();

  NormRows(buf.hidden, lw.input_norm, rows, d, eps, normed);
  Product(normed, rows, d, lw.q_proj, lw.q_bias, q);
  Product(normed, rows, d, lw.k_proj, lw.k_bias, k);
  Product(normed, rows, d, lw.v_proj, lw.v_bias, buf.v.data_ptr<float>());
  if (lw.q_norm.defined()) {
    NormRows(q, lw.q_norm, rows * heads, hd, eps, q);
    NormRows(k, lw.k_norm, rows * kv_heads, hd, eps, k);
  }
  RopeInPlace(q, heads, hd, buf);
  RopeInPlace(k, kv_heads, hd, buf);
  at::Tensor attended = buf.attended;
  AttendVarlen(l, buf.q, buf.k, buf.v, attended);
  Product(attended.data_ptr<float>(), rows, heads * hd, lw.o_proj, {}, buf.projected);
  AddInto(buf.hidden, buf.projected, rows * d);  // the residual after attention

  NormRows(buf.hidden, lw.post_norm, rows, d, eps, normed);
  Product(normed, rows, d, lw.gate_proj, {}, gate);
  Product(normed, rows, d, lw.up_proj, {}, buf.up);
  SwiGluInPlace(gate, buf.up, rows * f);
  Product(gate, rows, f, lw.down_proj, {}, buf.projected);
  if (lw.ttt_slot >= 0) {
    const at::Tensor& x0 = cfg_.ttt_target == TttTarget::kInputEmbed ? buf.embeddings : buf.normed;
    at::Tensor out = buf.fast;
    FastWeightTermsVarlen(lw, buf.gate, x0, out);
    AddInto(buf.projected, fast, rows * d);
  }
  AddInto(buf.hidden, buf.projected, rows * d);
}

at::Tensor ModelAccess::ScaledChunkUpdates(const LayerWeights& lw,
                                           const std::vector<SequenceTensors*>& states) {
  const SgemmFn sgemm = InProcessSgemm();
  const bool proj = lw.ttt_proj.defined();
  if (sgemm == nullptr || !RawFloats(lw.ttt_conv) || (proj && !RawFloats(lw.ttt_proj))) {
    return {};
  }
  const int64_t chunk = cfg_.ttt_chunk, d = cfg_.hidden_size, f = cfg_.intermediate_size;
  for (SequenceTensors* state : states) {
    const TttLayerState& slot = state->ttt[lw.ttt_slot];
    if (!RawFloats(slot.pending_z) || !RawFloats(slot.pending_x0)) return {};
  }
  internal::Workspace& ws = internal::Workspace::ForThisThread();
  const int64_t n = static_cast<int64_t>(states.size());
  float* convolved = ws.Tensor(Slot::kConvolved, {chunk, d}).data_ptr<float>();
  float* targets = proj ? ws.Tensor(Slot::kTargets, {chunk, d}).data_ptr<float>() : convolved;
  at::Tensor scaled = ws.Tensor(Slot::kChunkUpdates, {n, d, f});
  const int ic = static_cast<int>(chunk), id = static_cast<int>(d), iff = static_cast<int>(f);
  const float one = 1, zero = 0;
  const char no = 'n', yes = 't';
  for (int64_t i = 0; i < n; ++i) {
    const TttLayerState& slot = states[i]->ttt[lw.ttt_slot];
    ChunkConvRows(slot.pending_x0.data_ptr<float>(), lw.ttt_conv.data_ptr<float>(), 1, chunk, d,
                  convolved);
    if (proj) {  // targets [chunk, d] = convolved @ ttt_proj (as stored): column-major P^T C^T
      sgemm(&no, &no, &id, &ic, &id, &one, lw.ttt_proj.data_ptr<float>(), &id, convolved, &id,
            &zero, targets, &id);
    }
    // update [d, f] = targets^T @ z: column-major update^T = z^T targets.
    float* update = scaled.data_ptr<float>() + i * d * f;
    sgemm(&no, &yes, &iff, &id, &ic, &one, slot.pending_z.data_ptr<float>(), &iff, targets, &id,
          &zero, update, &iff);
    float factor = 1;
    if (cfg_.ttt_clip > 0) {  // the clip of ChunkUpdates: to Frobenius norm ttt_clip at most
      double squares = 0;
      for (int64_t j = 0; j < d * f; ++j) squares += static_cast<double>(update[j]) * update[j];
      factor = std::min(static_cast<float>(cfg_.ttt_clip / (std::sqrt(squares) + 1e-12)), 1.0f);
    }
    const float eta = static_cast<float>(w_.eta);
    for (int64_t j = 0; j < d * f; ++j) update[j] = update[j] * factor * eta;
  }
  return scaled;
}

}  // namespace ttt::engine
