// The decoder forward over one batch of sequence segments (Model::Ingest, Model::ForwardTrain).
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/ATen.h>

#include "absl/types/span.h"
#include "engine/internal/fast_weight.h"
#include "engine/internal/model_weights.h"
#include "engine/internal/sequence_tensors.h"
#include "engine/model.h"

namespace ttt::engine {

// Rows up to which a dense product runs as one matrix-vector product per row instead of one
// GEMM: for one or two rows (decode steps) OpenBLAS's GEMM repacks the whole weight on every
// call. Measured with engine_bench (bench/RESULTS.md, session 17): for 768x2048 weights two rows
// are 10-20 % faster as two products, four rows 17-20 % faster as one GEMM.
constexpr int64_t kMatVecRows = 2;
// Rows up to which a short step's dense product runs as internal::SmallRowProduct instead of
// OpenBLAS (sgemv per row, or a GEMM that packs the weights on every call): a decode step's rows
// then do not depend on the step's other rows. engine_bench --only=kernels (bench/RESULTS.md,
// "The short step's dense products"): 1.1-2.3x OpenBLAS's speed at 2-16 rows, slower beyond.
constexpr int64_t kKernelProductRows = 16;

namespace internal {
struct ShortBuffers;  // internal/short_step.cc
// Rows of `x` times `weight`^T (+ bias), as at::linear; up to kMatVecRows rows of a CPU float32
// `x` outside autograd as matrix-vector products.
at::Tensor Linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias = {});
}  // namespace internal

// Runs the model over `items` (each non-empty) and advances their states. Dense products
// (projections, MLP, LM head) run once over the concatenated rows of every item. In inference
// (grad mode off) on a CPU in float32, items of up to kVarlenRows new tokens that stay inside
// their TTT chunk (decode steps, small pieces) also share one varlen attention call and one
// fast-weight product, and their state tensors grow in place; longer items run attention and the
// fast-weight term per item (their work dwarfs a call's overhead). A step whose items are all
// short runs the short-step form (internal/short_step.cc): the same arithmetic over raw floats in
// per-thread buffers, no LibTorch operation per layer (Run states when it applies). Under grad mode
// everything is out of place, so ForwardTrain stays differentiable. Not thread-safe: one forward
// per states.
class ModelAccess {
 public:
  static constexpr int64_t kVarlenRows = 16;

  ModelAccess(const Model& model, absl::Span<TensorItem> items);
  // What Model keeps private, for the engine's own files (model.cc, sequence.cc, state_size.cc).
  static std::unique_ptr<Model> NewModel(ModelConfig config,
                                         std::unique_ptr<Model::Weights> weights);
  static Model::Weights& WeightsOf(const Model& model) { return *model.weights_; }
  // Returns per item the logits [n_i, vocab] (fp32) of its new tokens. After a short step they
  // view this thread's workspace: valid until the thread's next forward.
  std::vector<at::Tensor> Run();

 private:
  int64_t Count(size_t b) const { return offsets_[b + 1] - offsets_[b]; }
  at::Tensor Rows(const at::Tensor& t, size_t b) const {
    return t.slice(0, offsets_[b], offsets_[b + 1]);
  }
  int64_t CacheKeep() const;
  int64_t CacheReserve(int64_t needed) const;

  at::Tensor Layer(size_t l, const at::Tensor& x, const at::Tensor& embeddings);
  at::Tensor Attend(size_t l, at::Tensor q, at::Tensor k, at::Tensor v);
  void AttendVarlen(size_t l, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    at::Tensor& out);
  at::Tensor AttendOne(size_t l, at::Tensor q, at::Tensor k, at::Tensor v, SequenceTensors& state);
  at::Tensor MaskedAttention(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                             int64_t q_first, int64_t k_first) const;
  at::Tensor FastWeightTerms(const LayerWeights& lw, const at::Tensor& z, const at::Tensor& x0);
  void FastWeightTermsVarlen(const LayerWeights& lw, const at::Tensor& zf, const at::Tensor& x0f,
                             at::Tensor& out);
  at::Tensor FastWeightTermOne(const LayerWeights& lw, const at::Tensor& z_new,
                               const at::Tensor& x0_new, SequenceTensors& state);
  void AppendFloatRows(at::Tensor& pending, const at::Tensor& source, int64_t row0,
                       int64_t n) const;
  at::Tensor ChunkTargets(const LayerWeights& lw, const at::Tensor& x0) const;
  at::Tensor ChunkUpdates(const LayerWeights& lw, const at::Tensor& z, const at::Tensor& x0) const;
  internal::FoldParams FoldParamsOf() const;
  void FoldChunks(const LayerWeights& lw, const std::vector<SequenceTensors*>& states);

  // The short-step form (internal/short_step.cc). REQUIRES: every item varlen.
  std::vector<at::Tensor> RunShort(const std::vector<int64_t>& tokens,
                                   const std::vector<float>& positions);
  void ShortLayer(size_t l, const internal::ShortBuffers& buffers);
  // eta * the clipped chunk update of each state's full unfinished chunk, [states, d, d_ff], as
  // ChunkUpdates computes it but over raw floats (a decode step that completes a chunk); undefined
  // when the BLAS routines are out of reach or a tensor is not laid out for them.
  at::Tensor ScaledChunkUpdates(const LayerWeights& lw,
                                const std::vector<SequenceTensors*>& states);

  const Model& model_;
  const Model::Weights& w_;
  const ModelConfig& cfg_;
  absl::Span<TensorItem> items_;
  std::vector<int64_t> offsets_;
  std::vector<bool> varlen_;  // per item: takes the batched varlen path
  bool any_varlen_ = false;
  bool in_place_ = false;  // grad mode off: state tensors may grow in place
  at::Tensor cos_, sin_;   // [rows, 1, head_dim] RoPE factors of every row
};

}  // namespace ttt::engine
