// In-Place TTT over one segment of a sequence (an ingest longer than its chunk) with a dense
// delta: the chunk updates of a call folded into a few large products instead of one
// [d_model, d_ff] update, running sum and delta product per chunk.
//
// The rule (DESIGN.md section 1, the reference's): chunk j's rows read D_j; then
// U_j = V_j^T Z_j, clipped to Frobenius norm `clip`, scaled by eta, is added, and the sum is
// rescaled to norm `cap` when longer: D_{j+1} = c_j (D_j + eta s_j U_j). Inside a block of whole
// chunks every D_j is alpha_j D + sum_{i<j} w_ji U_i with scalar coefficients, and every norm the
// clip and the cap need is a quadratic form of the block's Gram matrices (<U_i, U_k> =
// sum((V_i V_k^T) * (Z_i Z_k^T)), <D, U_i> = sum(V_i * (Z_i D^T))), the Gram form of
// train/ (engine/train_forward.cc's CappedRunningSums). So a block costs z D^T, Z Z^T, V V^T,
// the masked Gram times V and one update V^T (w * Z): the coefficients come from a recursion over
// scalars in double, and no per-chunk [d_model, d_ff] matrix is ever formed. Blocks stay small
// (kScanBlockRows) so the Gram's cost, quadratic in the block, stays below the products that
// read and write the delta; the delta is materialised once per block.
#pragma once

#include <cstdint>

#include <ATen/ATen.h>

#include "engine/internal/fast_weight.h"

namespace ttt::engine::internal {

// Rows of one block (rounded down to whole chunks, at least one chunk).
constexpr int64_t kScanBlockRows = 64;

// In-Place TTT for one dense delta over one segment: `z` [rows, d_ff] f32 is the unfinished
// chunk's `pending` rows followed by the new ones; `targets` [complete, chunk, d_model] f32 the
// targets of the chunks the segment completes (complete = rows / chunk). Returns, for the rows
// from `pending` on, z @ (the delta in force for the row's chunk)^T, [rows - pending, d_model];
// folds the completed chunks into `delta` [d_model, d_ff] (in place when `in_place`, else into a
// fresh tensor). A bf16 delta is widened once, the segment runs in fp32, and the result is rounded
// back to bf16 once at the end (not per chunk: fewer roundings than a chunk-by-chunk ingest).
// `block_rows` is the block size, kScanBlockRows unless a test asks.
at::Tensor DenseSegmentTerms(at::Tensor& delta, const at::Tensor& z, const at::Tensor& targets,
                             int64_t pending, int64_t chunk, const FoldParams& params,
                             bool in_place, int64_t block_rows = kScanBlockRows);

}  // namespace ttt::engine::internal
