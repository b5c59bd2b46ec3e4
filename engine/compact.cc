// CompactStates and ExpandState (engine/compact.h): fresh tensors only, never an in-place write,
// so forks that share a buffer never see each other's compaction.
#include "engine/compact.h"

#include <unordered_map>
#include <vector>

#include <c10/core/InferenceMode.h>

#include "engine/internal/sequence_tensors.h"

namespace ttt::engine {
namespace {

constexpr at::ScalarType kCompactType = at::kBFloat16;

// A copy of `t` as `dtype` in a buffer of its own, exactly its elements (a cache view's spare
// rows are not carried over).
at::Tensor FreshCopy(const at::Tensor& t, at::ScalarType dtype) {
  return t.to(t.options().dtype(dtype).memory_format(at::MemoryFormat::Contiguous),
              /*non_blocking=*/false, /*copy=*/true);
}

// The fp32 handles of the set's states that compaction may replace, grouped by the tensor they
// refer to (a fork's handle is a copy of its parent's, the same TensorImpl, until one of them
// writes), each with its state's flag to set when it is replaced by a bf16 copy (null: the
// tensor is only trimmed, an fp32 copy of its elements without the buffer's spare rows).
struct Candidates {
  struct Handle {
    at::Tensor* tensor;
    bool* compact_flag;
  };
  std::unordered_map<const void*, std::vector<Handle>> groups;
  std::vector<const void*> order;  // first-seen order, so the work is deterministic

  void Add(at::Tensor& t, bool* compact_flag) {
    if (!t.defined() || t.scalar_type() != at::kFloat || t.numel() == 0) return;
    if (compact_flag == nullptr && t.storage().nbytes() <= t.nbytes()) return;  // no spare rows
    auto [it, fresh] = groups.try_emplace(t.unsafeGetTensorImpl());
    if (fresh) order.push_back(it->first);
    it->second.push_back({&t, compact_flag});
  }
};

// Whether one state alone holds the tensor: no other state (in the set or not), no other view.
// A buffer states share is paid once already; a bf16 copy of it would save half of that while
// they are all idle, and cost a whole fp32 copy for each of them that is used again (each
// expands into a buffer of its own), so it stays as it is.
bool HeldByOneState(const std::vector<Candidates::Handle>& group) {
  const at::Tensor& t = *group.front().tensor;
  return group.size() == 1 && t.use_count() == 1 && t.storage().use_count() == 1;
}

}  // namespace

CompactResult CompactStates(absl::Span<SequenceState* const> states,
                            const CompactOptions& options) {
  c10::InferenceMode guard;  // the copies are inference tensors, as the rest of a state's
  Candidates candidates;
  for (SequenceState* state : states) {
    SequenceTensors& s = TensorsOf(*state);
    for (TttLayerState& slot : s.ttt) {
      // A factored slot's base is shared with its parent by design: it stays.
      if (slot.increments.empty()) candidates.Add(slot.delta, &s.compact_deltas);
      candidates.Add(slot.pending_z, nullptr);
      candidates.Add(slot.pending_x0, nullptr);
    }
    bool* cache_flag = options.kv_cache ? &s.compact_caches : nullptr;
    for (LayerCache& c : s.cache) {
      if (c.SharedRows() > 0) continue;  // its own rows follow a prefix other states read
      candidates.Add(c.keys, cache_flag);
      candidates.Add(c.values, cache_flag);
    }
  }
  CompactResult result;
  for (const void* impl : candidates.order) {
    const std::vector<Candidates::Handle>& group = candidates.groups.at(impl);
    if (!HeldByOneState(group)) continue;
    const at::Tensor& original = *group.front().tensor;
    result.bytes_before += static_cast<int64_t>(original.storage().nbytes());
    const bool round = group.front().compact_flag != nullptr;
    const at::Tensor compact = FreshCopy(original, round ? kCompactType : at::kFloat);
    result.bytes_after += static_cast<int64_t>(compact.nbytes());
    for (const Candidates::Handle& h : group) {
      *h.tensor = compact;  // the fp32 buffer goes with its last handle
      if (round) *h.compact_flag = true;
    }
  }
  for (SequenceState* state : states) result.states += IsCompact(*state) ? 1 : 0;
  return result;
}

bool IsCompact(const SequenceState& state) {
  const SequenceTensors& s = TensorsOf(state);
  return s.compact_deltas || s.compact_caches;
}

bool ExpandState(SequenceState& state) {
  SequenceTensors& s = TensorsOf(state);
  if (!s.compact_deltas && !s.compact_caches) return false;
  c10::InferenceMode guard;
  auto expand = [](at::Tensor& t) {
    if (t.defined() && t.scalar_type() == kCompactType) t = FreshCopy(t, at::kFloat);
  };
  if (s.compact_deltas) {
    for (TttLayerState& slot : s.ttt) expand(slot.delta);
  }
  if (s.compact_caches) {
    for (LayerCache& c : s.cache) {
      expand(c.keys);
      expand(c.values);
    }
  }
  s.compact_deltas = s.compact_caches = false;
  return true;
}

}  // namespace ttt::engine
