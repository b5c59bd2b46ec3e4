// A TTT layer's fast-weight delta in its two layouts, and the one place the forward reads it.
//
// Dense: TttLayerState::delta alone, owned by the state (every session that was never forked).
// Factored: a copy-on-write fork's chunk updates kept as low-rank increments on top of a base
// delta that other states share (TttLayerState::increments; a chunk's update V^T Z has rank
// <= chunk), so that a fork that ingests grows by C * (d_model + d_ff) floats per chunk instead of
// copying the d_model * d_ff base. The update's clip and the delta cap need Frobenius norms, which
// come from inner products of the factors (the Gram form of train/: <V_i^T Z_i, V_j^T Z_j> =
// sum((V_i V_j^T) * (Z_i Z_j^T)), <B, V^T Z> = sum((V B) * Z)), so the base is never copied. A
// state goes factored when a chunk completes while its base is shared, and back to a dense delta
// of its own once its increments would hold more bytes than one (MaterialiseDelta).
//
// The forward's kernels (internal/forward.cc, batched_kernels.h) read the dense `delta` and call
// AddIncrementTerms for the rest: the layout and the kernels meet here.
//
// A dense delta (or a factored slot's base) is fp32 or bf16 (ModelConfig::ttt_delta_dtype, or an
// idle state's compact copy): every read widens bf16 to fp32 and accumulates in fp32; every update
// is computed in fp32 and rounded once as it is stored. Increments are always fp32.
#pragma once

#include <cstdint>

#include <ATen/ATen.h>

#include "engine/internal/sequence_tensors.h"

namespace ttt::engine::internal {

// What a chunk update is scaled by: the learning rate, the per-chunk clip and the delta cap
// (ModelConfig's ttt_clip and ttt_delta_cap; 0 = off).
struct FoldParams {
  double eta = 0;
  double clip = 0;
  double cap = 0;
};

// True when `new_rows` more increment rows (whole chunks) on top of the slot's base are cheaper,
// in bytes, than a dense delta of its own, and the base is shared (or the slot already factored):
// then the slot's next chunk updates go into increments.
// Off (engine::SetForkIncrements(false)): a shared delta is copied at its first write.
bool FoldsFactored(const TttLayerState& slot, int64_t new_rows);

// The most increment rows a factored slot of a [d_model, d_ff] delta holds: whole chunks whose
// factors take fewer bytes than a dense delta (FoldsFactored goes dense before more). 0 when no
// chunk fits. What a restored state's increments are bounded by.
int64_t MaxIncrementRows(int64_t d_model, int64_t d_ff, int64_t chunk);

// `delta` (a dense delta or a base) as fp32: itself, or a bf16 one widened (exactly) into a fresh
// tensor. For reads that run once per chunk or call; a decode step's reads widen in the kernel.
at::Tensor FloatDelta(const at::Tensor& delta);

// The slot's effective delta as one dense [d_model, d_ff] fp32 tensor: `delta` itself when dense
// (no copy; an idle state's bf16 copy, engine/compact.h, comes as fp32 in a fresh tensor), else
// base_scale * delta + sum_i scales[i] * v_i^T z_i in a fresh tensor.
at::Tensor EffectiveDelta(const TttLayerState& slot);

// Frobenius norm of the effective delta (from the tracked norm when factored: no materialising).
double EffectiveDeltaNorm(const TttLayerState& slot);

// Turns a factored slot into a dense delta it owns (no-op when dense).
void MaterialiseDelta(TttLayerState& slot);

// Multiplies the slot's effective delta by `factor` (dense or factored; a shared delta is
// replaced, not written).
void ScaleDelta(TttLayerState& slot, double factor);

// Folds one chunk's update v^T z (v [chunk, d_model] targets, z [chunk, d_ff], f32) into the
// slot as an increment: clipped, scaled by eta, then the cap applied to the whole delta.
void FoldIncrement(TttLayerState& slot, const at::Tensor& v, const at::Tensor& z,
                   const FoldParams& params);

// Stores `value` [d_model, d_ff] f32 (the caller's scratch, not kept) as the dense slot's delta in
// `dtype` (kFloat or kBFloat16: rounded to nearest even, the one rounding of a bf16 delta's
// update): in place when the slot owns a delta of that type, else in a fresh tensor.
void StoreDelta(TttLayerState& slot, const at::Tensor& value, at::ScalarType dtype);

// The read: `out` [n, d_model] holds delta @ z[r] for rows z [n, d_ff] (f32) on entry (what the
// dense kernels compute from `delta`); on return, the effective delta's product. A no-op when
// the slot is dense.
void AddIncrementTerms(const TttLayerState& slot, const at::Tensor& z, at::Tensor out);

// In-Place TTT over one segment of a factored slot: `z` [rows, d_ff] is the unfinished chunk's
// `pending` rows followed by the new ones; `targets` [complete, chunk, d_model] the targets of the
// chunks it completes (rows / chunk). Folds those chunks as increments and returns, for the new
// rows (from row `pending` on), z @ (the delta in force for its chunk)^T, [rows - pending,
// d_model]: the factored form of forward.cc's running deltas.
at::Tensor FactoredSegmentTerms(TttLayerState& slot, const at::Tensor& z, const at::Tensor& targets,
                                int64_t pending, int64_t chunk, const FoldParams& params);

}  // namespace ttt::engine::internal
