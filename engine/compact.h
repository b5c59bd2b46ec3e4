// Compact idle states: a session idle for a while keeps its fast-weight deltas (and, when asked,
// its KV cache) as bf16 copies, half the bytes, and goes back to fp32 when it is next used. The
// tier between a resident fp32 state and one evicted to disk (session/residency.cc decides when).
// Its other buffers lose their spare rows (a cache or chunk buffer grown in place keeps room to
// append: up to half a long cache), exactly, with no rounding; the next append grows them again.
//
// Compaction rounds each value to bf16 (8 significant bits: a relative error of at most 2^-8 per
// element) once; expanding is exact, so a state compacted twice loses nothing more. Neither
// operation ever writes a buffer in place: both put a fresh tensor in the state, so a state that
// shares buffers with its copy-on-write forks (SequenceState::Fork) never changes what the forks
// see. Engine thread, like every use of a state's tensors.
#pragma once

#include <cstdint>

#include "absl/types/span.h"
#include "engine/sequence.h"

namespace ttt::engine {

struct CompactOptions {
  // Also the KV caches (fp32 ones; a model that keeps its cache in bf16 already has nothing to
  // gain). Off: only the fast-weight deltas.
  bool kv_cache = false;
};

// What CompactStates did.
struct CompactResult {
  int64_t states = 0;        // states that hold at least one compact (bf16) tensor now
  int64_t bytes_before = 0;  // of the buffers replaced (each once, though several states held it)
  int64_t bytes_after = 0;   // of their bf16 copies and trimmed fp32 copies
};

// Compacts `states`: each fp32 delta (and cache, with options.kv_cache) that one of them alone
// holds is replaced by a bf16 copy, and each cache or chunk buffer it alone holds loses its spare
// rows. A buffer that states share (copy-on-write forks and their parent, idle or not) stays as it
// is, fp32 and shared: it is paid once already, and a bf16 copy would cost a whole fp32 copy for
// each of its holders used again (each expands into a buffer of its own). So does a fork's factored
// delta (internal/fast_weight.h: its base is shared) and a cache with a shared prefix. States
// already compact are fine (nothing of theirs is compacted twice).
CompactResult CompactStates(absl::Span<SequenceState* const> states, const CompactOptions& options);

// Whether `state` holds a compact tensor (a Model step must not see it before ExpandState).
bool IsCompact(const SequenceState& state);

// Puts every compact tensor of `state` back in fp32, each in a fresh buffer (forks that share the
// bf16 copy keep it). Returns whether there was anything to expand.
bool ExpandState(SequenceState& state);

}  // namespace ttt::engine
