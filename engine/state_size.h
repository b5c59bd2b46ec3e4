// How large a valid SequenceState of a model can be, from the model's configuration alone: what
// a reader of untrusted state bytes (an import) checks sizes against before it holds them.
#pragma once

#include <cstdint>
#include <optional>

#include "engine/model.h"

namespace ttt::engine {

// The bound is on a state's tensor bytes as EncodeSequence writes them (what an import holds),
// which are also never fewer than its resident bytes (SequenceState::MemoryBytes): with
// ttt_delta_dtype bfloat16 a delta is resident in 2 bytes a value but written widened to F32, so
// the bound counts 4 (a 2-byte count would refuse such a model's own largest exports).
struct StateSizeBound {
  // Bytes of everything but the KV cache at its largest: every TTT layer's fp32 delta, its
  // low-rank increments when factored and a full unfinished chunk (chunk - 1 rows of Z and X0),
  // and the last logits.
  int64_t fixed_bytes = 0;
  // KV-cache bytes per cached token, all layers, keys and values.
  int64_t bytes_per_cached_token = 0;
  // The most tokens a valid state caches: window - 1 for a windowed model, nullopt for full
  // attention (the cache grows with the stream).
  std::optional<int64_t> max_cached_tokens;
  // The most tensors a state serialises to (StateTensors, engine/internal/sequence_tensors.h):
  // 3 more per TTT layer when factored.
  int64_t tensor_count = 0;

  // The bound on the tensors' bytes when at most `cached_tokens` are cached.
  int64_t BytesWith(int64_t cached_tokens) const {
    return fixed_bytes + bytes_per_cached_token * cached_tokens;
  }
};

// REQUIRES: model is loaded. Mirrors the shapes Model::RestoreSequence accepts.
StateSizeBound MaxStateSize(const Model& model);

}  // namespace ttt::engine
