// Compact idle states: a session idle for a while keeps its fast-weight deltas (and, when asked,
// its KV cache) as bf16 copies, half the bytes, and goes back to fp32 when it is next used; its
// KV cache may instead go to int8 with one fp32 scale per row, a quarter of the bytes. The
// tier between a resident fp32 state and one evicted to disk (session/residency.cc decides when).
// Its other buffers lose their spare rows (a cache or chunk buffer grown in place keeps room to
// append: up to half a long cache), exactly, with no rounding; the next append grows them again.
//
// Compaction rounds each value to bf16 (8 significant bits: a relative error of at most 2^-8 per
// element) once, or a cache row (one head's keys or values at one position: head_dim values) to
// int8 with the symmetric scale s = max |x| / 127, q = round(x / s), so each value is off by at
// most s / 2 (and fp32's rounding of q * s); expanding is exact (bf16 widened, q * s), and a
// compact tensor is never compacted again, so a state compacted twice loses nothing more. Neither
// operation ever writes a buffer in place: both put a fresh tensor in the state, so a state that
// shares buffers with its copy-on-write forks (SequenceState::Fork) never changes what the forks
// see. Engine thread, like every use of a state's tensors.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include "absl/types/span.h"
#include "engine/sequence.h"

namespace ttt::engine {

// What compaction does to a KV cache (fp32 ones; a model that keeps its cache in bf16 already
// has nothing to gain from kBf16).
enum class KvCompaction {
  kOff,   // the cache stays fp32 (its spare rows trimmed): only the deltas are compacted
  kBf16,  // bf16: half the bytes, each value within 2^-8 of itself
  kInt8,  // int8 and one fp32 scale per row: (head_dim + 4) / (4 head_dim) of the bytes
};

// "off", "bf16" or "int8"; nullopt for anything else.
std::optional<KvCompaction> KvCompactionNamed(std::string_view name);

struct CompactOptions {
  KvCompaction kv_cache = KvCompaction::kOff;
};

// What CompactStates did.
struct CompactResult {
  int64_t states = 0;        // states that hold at least one compact (bf16/int8) tensor now
  int64_t bytes_before = 0;  // of the buffers replaced (each once, though several states held it)
  int64_t bytes_after = 0;   // of their compact copies (int8: with scales), trimmed fp32 copies
};

// Compacts `states`: each fp32 delta (and cache, unless options.kv_cache is kOff) that one of
// them alone holds is replaced by a bf16 (a cache: bf16 or int8) copy, and each cache or chunk
// buffer it alone holds loses its spare rows. A buffer that states share (copy-on-write forks and
// their parent, idle or not) stays as it is, fp32 and shared: it is paid once already, and a bf16
// copy would cost a whole fp32 copy for each of its holders used again (each expands into a buffer
// of its own). So does a fork's factored delta (internal/fast_weight.h: its base is shared) and a
// cache with a shared prefix. States already compact are fine (nothing of theirs is compacted
// twice).
CompactResult CompactStates(absl::Span<SequenceState* const> states, const CompactOptions& options);

// Whether `state` holds a compact tensor (a Model step must not see it before ExpandState).
bool IsCompact(const SequenceState& state);

// Puts every compact tensor of `state` back in fp32, each in a fresh buffer (forks that share the
// bf16 copy keep it). Returns whether there was anything to expand.
bool ExpandState(SequenceState& state);

}  // namespace ttt::engine
