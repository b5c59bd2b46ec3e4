// The tensors behind a SequenceState: what the forward reads and advances (KV cache, per TTT
// layer the fast-weight delta and the unfinished chunk's buffer, the last logits). Only engine/
// and LibTorch programs (train/, bench/, engine tests) include this; everyone else holds the
// opaque engine::SequenceState (engine/sequence.h). Not thread-safe; one user at a time.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <ATen/ATen.h>  // not <torch/torch.h>: a third of the compile time

#include "absl/types/span.h"
#include "engine/internal/safetensors.h"
#include "engine/sequence.h"

namespace ttt::engine {

// One layer's KV cache in two segments: a read-only prefix that other states hold too, then the
// state's own rows. A state that appends to rows another state shares (a copy-on-write fork, or
// its parent) moves them into `shared_*` untouched and appends to a tail of its own
// (internal/state_buffer.h: ShareCachePrefix), so it pays only for its own tokens; attention
// reads both, in order, with the same arithmetic as one buffer. Most states hold no prefix.
struct LayerCache {
  at::Tensor keys;    // [kv_heads, n, head_dim], RoPE applied: the rows after the shared prefix
  at::Tensor values;  // [kv_heads, n, head_dim]
  at::Tensor shared_keys;    // [kv_heads, s, head_dim] or undefined: the prefix, never written
  at::Tensor shared_values;  // [kv_heads, s, head_dim] or undefined
  // While `keys`/`values` are int8 (an idle state's compact cache, engine/compact.h): each row's
  // scale, [kv_heads, n, 1] fp32, the row standing for its int8 values times it. Else undefined.
  at::Tensor keys_scale;
  at::Tensor values_scale;

  int64_t SharedRows() const { return shared_keys.defined() ? shared_keys.size(1) : 0; }
  // The tokens it caches, prefix and own rows (<= window - 1 when windowed).
  int64_t Rows() const { return SharedRows() + keys.size(1); }
};

// Chunk updates kept factored on top of a base delta that other states share (a copy-on-write
// fork, internal/fast_weight.h): the layer's fast weight is then
//   base_scale * delta + sum_i scales[i] * v_i^T z_i
// where increment i is rows [i * chunk, (i + 1) * chunk) of `v` and `z` (a chunk's targets and Z
// rows: its update V^T Z has rank <= chunk). Empty (no rows, base_scale 1) while the delta is
// dense. Rows are only ever appended (internal/state_buffer.h), so states may share them too.
struct DeltaIncrements {
  double base_scale = 1;       // the delta cap's factors applied since the base was shared
  std::vector<double> scales;  // per increment: eta * its clip factor * the cap's factors since
  at::Tensor v;                // [k * chunk, d_model] fp32: targets V of each increment
  at::Tensor z;                // [k * chunk, d_ff] fp32: Z rows of each increment
  double norm_sq = 0;          // squared Frobenius norm of the effective delta (the cap's input)

  bool empty() const { return scales.empty(); }
};

struct TttLayerState {
  int64_t layer = 0;           // decoder layer index
  at::Tensor delta;            // [d_model, d_ff] fp32: eta * sum of the completed chunks' updates
                               // (with increments: their base, shared with other states)
  at::Tensor pending_z;        // [p, d_ff] fp32: Z rows of the unfinished chunk (p < chunk)
  at::Tensor pending_x0;       // [p, d_model] fp32: X0 rows of the unfinished chunk
  DeltaIncrements increments;  // empty unless the chunk updates since a fork sit on a shared base
};

// Plain data; a copy shares the tensors. Every write to a state tensor either owns its buffer
// (internal/state_buffer.h: OwnsBuffer) or replaces the tensor, so a copy is a copy-on-write
// fork (SequenceState::Fork); SequenceState::Clone copies the tensors.
struct SequenceTensors {
  int64_t position = 0;            // tokens consumed so far (absolute position of the next token)
  int64_t chunks_applied = 0;      // chunk updates folded into the fast weights
  std::vector<LayerCache> cache;   // one per decoder layer
  std::vector<TttLayerState> ttt;  // one per TTT layer, in layer order
  at::Tensor last_logits;          // [vocab] fp32: next-token logits; undefined before any token
  // An idle state's compact copies (engine/compact.h): which of its fp32 tensors sit in bf16
  // (caches: or int8) until ExpandState. A Model step never sees such a state.
  bool compact_deltas = false;
  bool compact_caches = false;

  // Tokens of the unfinished chunk (0 when the stream sits on a chunk boundary).
  int64_t PendingTokens() const { return ttt.empty() ? 0 : ttt.front().pending_z.size(0); }
};

// Rows of a cache as fp32 (engine/compact.cc): int8 ones times their `scale`, bf16 ones widened,
// fp32 ones as they are (the same tensor).
at::Tensor CacheRowsAsFloat(const at::Tensor& rows, const at::Tensor& scale);

// The state's tensors. The mutable form gives a state that holds none (default-constructed or
// moved from) an empty set first; the const form sees an empty set then.
SequenceTensors& TensorsOf(SequenceState& state);
const SequenceTensors& TensorsOf(const SequenceState& state);

// A state holding `tensors` (the engine builds states this way).
SequenceState MakeSequenceState(SequenceTensors tensors);

// The tensors that restore the state bit-exactly (with SequenceState::Metadata(); the inverse is
// RestoreSequence in engine/internal/model_tensors.h), self-contained: a factored delta
// (internal/fast_weight.h) comes as its base "ttt.<layer>.delta" plus "ttt.<layer>.increments.v",
// ".z" and ".coefficients" (F64: base_scale, norm_sq, each increment's scale). The tensors
// alias the state's (but the coefficients).
NamedTensors StateTensors(const SequenceState& state);

// One sequence's part of a batched forward (Model::Ingest's IngestItem, on the tensors).
struct TensorItem {
  SequenceTensors* state = nullptr;  // advanced in place
  absl::Span<const int32_t> tokens;  // the caller's IngestItem::tokens (or a piece of them)
};

}  // namespace ttt::engine
