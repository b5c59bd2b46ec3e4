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
  // A deep copy (a fork): nothing is shared with the original.
  SequenceState Clone() const;
  // Bytes of its tensors' elements (what it serializes to).
  int64_t MemoryBytes() const;
  // Bytes of the buffers its tensors keep alive, each buffer once, whole: more than MemoryBytes
  // by the spare rows of caches grown in place. What the state really holds (the budget's figure).
  int64_t HeldBytes() const;
  // The decoder layers with TTT state, in order.
  std::vector<int64_t> TttLayers() const;
  // Frobenius norm of each TTT layer's delta, in TttLayers() order.
  std::vector<double> DeltaNorms() const;

  // The state's own metadata entries ("state.position", "state.chunks_applied") that, with its
  // tensors, restore it bit-exactly (EncodeSequence, Model::RestoreSequence).
  std::map<std::string, std::string> Metadata() const;

 private:
  friend SequenceTensors& TensorsOf(SequenceState& state);
  friend const SequenceTensors& TensorsOf(const SequenceState& state);
  std::unique_ptr<SequenceTensors> tensors_;  // null while it holds nothing
};

// The safetensors encoding of `state`'s tensors with string `metadata` under "__metadata__"
// (pass Metadata() merged with the caller's own entries). INVALID_ARGUMENT when `metadata` is not
// valid UTF-8; INTERNAL when LibTorch fails. Engine thread (reads the state's tensors).
absl::StatusOr<std::string> EncodeSequence(const SequenceState& state,
                                           const std::map<std::string, std::string>& metadata);

}  // namespace ttt::engine
