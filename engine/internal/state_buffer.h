// Growable row buffers for a sequence's state tensors (KV cache, the unfinished TTT chunk).
//
// A state tensor stays a plain view ([kv_heads, n, head_dim] for a cache, [p, width] for a
// chunk buffer) so that SequenceState's public shape is unchanged, but it may sit in a larger
// buffer with spare rows after it. Appending writes into the spare rows when the view alone owns
// its buffer (nothing else, not even another view, shares the storage: a copy handed out by
// ToTensors or a plain struct copy forces a fresh buffer first), so a decode step appends one row
// instead of copying the whole cache or chunk (vLLM's preallocated KV blocks, without pages).
#pragma once

#include <cstdint>

#include <ATen/ATen.h>

#include "engine/internal/sequence_tensors.h"

namespace ttt::engine::internal {

// True when nothing but `view` refers to its tensor or its storage (no copy of the handle, no
// other view), so it may be written in place without anyone else seeing the change.
bool OwnsBuffer(const at::Tensor& view);

// Appends `rows` (same shape as `view` except along `dim`, which must be 0 or 1) to `view` along
// `dim`. In place when `view` owns spare room; otherwise moves `view` into a fresh buffer with room
// for `reserve` rows along `dim` (at least what is needed). Differentiable callers must not use
// this (the in-place write bypasses autograd).
void AppendRows(at::Tensor& view, const at::Tensor& rows, int64_t dim, int64_t reserve);

// Grows `view` by `m` rows along `dim` (0 or 1) whose contents are unspecified: the caller
// writes them next (the varlen kernels copy new keys and chunk rows straight into them).
// In place or in a fresh buffer, as AppendRows.
void GrowRows(at::Tensor& view, int64_t dim, int64_t m, int64_t reserve);

// Keeps the last `keep` rows of `view` along `dim` (no copy), or moves them into a buffer of
// `reserve` rows when the one they sit in is more than twice that (so a long ingest through a
// sliding window does not pin its whole buffer).
void KeepLastRows(at::Tensor& view, int64_t dim, int64_t keep, int64_t reserve);

// Empties `view` (a chunk buffer whose rows were folded in) and, when it owns its buffer, points
// it back at the buffer's first row so the next chunk reuses the memory.
void ClearRows(at::Tensor& view, int64_t dim);

// Bytes of the buffers behind `view`, spare rows included (what the state really holds).
int64_t BufferBytes(const at::Tensor& view);

// Before a state appends to `cache`: when its own rows are another state's too (a fork shares
// them) and it has no shared prefix yet, those rows become the prefix, untouched, and its own
// rows start empty, so the appends that follow cost only the new rows (not a copy of the cache).
// A cache that already has a prefix copies only its own rows at such an append (AppendRows).
void ShareCachePrefix(LayerCache& cache);

// Keeps the last `keep` rows of `cache` (a window sliding past the prefix drops it first, by a
// view), as KeepLastRows does for its own rows.
void KeepLastCacheRows(LayerCache& cache, int64_t keep, int64_t reserve);

// `own` rows after the `shared` prefix as one tensor along dim 1: `own` itself when there is no
// prefix, else a fresh concatenation (what a reader of one whole cache needs).
at::Tensor WholeCache(const at::Tensor& shared, const at::Tensor& own);

}  // namespace ttt::engine::internal
