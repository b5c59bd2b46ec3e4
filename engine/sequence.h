// What one sequence (a session's stream) carries between calls: its position, KV cache, and per
// TTT layer the fast-weight delta and the unfinished chunk's buffer. Plain data: a session owns
// one; the Model reads and advances it. Not thread-safe; one user at a time.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <ATen/ATen.h>  // not <torch/torch.h>: a third of the compile time

#include "absl/status/statusor.h"
#include "engine/config.h"
#include "engine/safetensors.h"

namespace ttt::engine {

struct LayerCache {
  at::Tensor keys;    // [kv_heads, n, head_dim], RoPE applied; n <= window when windowed
  at::Tensor values;  // [kv_heads, n, head_dim]
};

struct TttLayerState {
  int64_t layer = 0;          // decoder layer index
  at::Tensor delta;        // [d_model, d_ff] fp32: eta * sum of the completed chunks' updates
  at::Tensor pending_z;    // [p, d_ff] fp32: Z rows of the unfinished chunk (p < chunk)
  at::Tensor pending_x0;   // [p, d_model] fp32: X0 rows of the unfinished chunk
};

struct SequenceState {
  int64_t position = 0;        // tokens consumed so far (absolute position of the next token)
  int64_t chunks_applied = 0;  // chunk updates folded into the fast weights
  std::vector<LayerCache> cache;  // one per decoder layer
  std::vector<TttLayerState> ttt;  // one per TTT layer, in layer order
  at::Tensor last_logits;   // [vocab] fp32: next-token logits; undefined before any token

  // Tokens of the unfinished chunk (0 when the stream sits on a chunk boundary).
  int64_t PendingTokens() const { return ttt.empty() ? 0 : ttt.front().pending_z.size(0); }
  // A deep copy (a fork): nothing is shared with the original.
  SequenceState Clone() const;
  // Bytes of its tensors' elements (what it serializes to).
  int64_t MemoryBytes() const;
  // Bytes of the buffers its tensors keep alive, each buffer once, whole: more than MemoryBytes
  // by the spare rows of caches grown in place. What the state really holds (the budget's figure).
  int64_t HeldBytes() const;
  // Frobenius norm of each TTT layer's delta, in layer order.
  std::vector<double> DeltaNorms() const;

  // Tensors and metadata that restore this state bit-exactly (see Deserialize).
  NamedTensors ToTensors() const;
  std::map<std::string, std::string> Metadata() const;
  // The inverse is Model::RestoreSequence, which checks every shape against the model.
};

}  // namespace ttt::engine
