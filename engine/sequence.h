// What one sequence (a session's stream) carries between calls: its position, KV cache, and per
// TTT layer the fast-weight delta and the unfinished chunk's buffer. An opaque handle: a session
// owns one and sees plain numbers; the Model reads and advances its tensors
// (engine/internal/sequence_tensors.h). Not thread-safe; one user at a time.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace ttt::engine {

struct SequenceTensors;  // engine/internal/sequence_tensors.h

// One buffer a state keeps alive: `identity` is the same for every state holding that buffer
// (states forked from one another share buffers until they write), so summing `bytes` over
// distinct identities counts shared memory once. An identity may be reused once no state holds
// its buffer any more.
struct HeldBuffer {
  uintptr_t identity = 0;
  int64_t bytes = 0;
};

class SequenceState {
 public:
  // A state holding nothing (what a session keeps while its state is released or evicted).
  // Model::NewSequence gives a fresh stream.
  SequenceState();
  ~SequenceState();
  SequenceState(SequenceState&& other) noexcept;
  SequenceState& operator=(SequenceState&& other) noexcept;
  SequenceState(const SequenceState&) = delete;  // Clone() makes the copy explicit
  SequenceState& operator=(const SequenceState&) = delete;

  // Tokens consumed so far (the absolute position of the next token).
  int64_t position() const;
  // Chunk updates folded into the fast weights.
  int64_t chunks_applied() const;
  // Tokens of the unfinished chunk (0 when the stream sits on a chunk boundary).
  int64_t PendingTokens() const;
  // A deep copy: nothing is shared with the original.
  SequenceState Clone() const;
  // A copy-on-write fork: shares every buffer with the original until one of them writes (each
  // write to a state tensor goes in place only into a buffer its state alone holds, else into a
  // fresh one), and a fork whose fast weights then learn keeps its chunk updates as low-rank
  // increments on the shared base (engine/internal/fast_weight.h), and whose KV cache grows keeps
  // the shared rows as a read-only prefix and appends to a tail of its own. Neither ever sees the
  // other's writes. Costs no tensor memory until a write, then what it writes.
  SequenceState Fork() const;
  // Bytes of its tensors' elements (what it serializes to).
  int64_t MemoryBytes() const;
  // Bytes of the buffers its tensors keep alive, each buffer once, whole: more than MemoryBytes
  // by the spare rows of caches grown in place. What the state really holds (the budget's figure).
  int64_t HeldBytes() const;
  // The buffers behind HeldBytes, each once, with their identities (shared bytes counted once
  // across states: session/ accounts resident memory by these).
  std::vector<HeldBuffer> HeldBuffers() const;
  // The decoder layers with TTT state, in order.
  std::vector<int64_t> TttLayers() const;
  // Frobenius norm of each TTT layer's delta, in TttLayers() order.
  std::vector<double> DeltaNorms() const;
  // Whether some TTT layer keeps low-rank increments on its base delta (a fork that learned,
  // SetForkIncrements): its encoding then holds them too (checkpoint format 3).
  bool HoldsIncrements() const;

  // The state's own metadata entries ("state.position", "state.chunks_applied") that, with its
  // tensors, restore it bit-exactly (EncodeSequence, Model::RestoreSequence).
  std::map<std::string, std::string> Metadata() const;

 private:
  friend SequenceTensors& TensorsOf(SequenceState& state);
  friend const SequenceTensors& TensorsOf(const SequenceState& state);
  std::unique_ptr<SequenceTensors> tensors_;  // null while it holds nothing
};

// Whether a fork that reads more keeps its chunk updates as low-rank increments on the delta it
// shares with its parent (the default: it grows by its increments, and a checkpoint or export
// holds them as they are, so it restores bit for bit) instead of copying the delta at its first
// write (off: ttt-serve --fork_increments=false). Process-wide; set at start-up.
void SetForkIncrements(bool on);

// The safetensors encoding of `state`'s tensors with string `metadata` under "__metadata__"
// (pass Metadata() merged with the caller's own entries). INVALID_ARGUMENT when `metadata` is not
// valid UTF-8; INTERNAL when LibTorch fails. Engine thread (reads the state's tensors).
absl::StatusOr<std::string> EncodeSequence(const SequenceState& state,
                                           const std::map<std::string, std::string>& metadata);

}  // namespace ttt::engine
