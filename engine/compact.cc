// CompactStates and ExpandState (engine/compact.h): fresh tensors only, never an in-place write,
// so forks that share a buffer never see each other's compaction.
#include "engine/compact.h"

#include <unordered_map>
#include <utility>
#include <vector>

#include <c10/core/InferenceMode.h>

#include "engine/internal/sequence_tensors.h"

namespace ttt::engine {
namespace {

constexpr at::ScalarType kCompactType = at::kBFloat16;
constexpr float kInt8Max = 127;  // symmetric: -127..127, so -x quantizes to -q

// A copy of `t` as `dtype` in a buffer of its own, exactly its elements (a cache view's spare
// rows are not carried over).
at::Tensor FreshCopy(const at::Tensor& t, at::ScalarType dtype) {
  return t.to(t.options().dtype(dtype).memory_format(at::MemoryFormat::Contiguous),
              /*non_blocking=*/false, /*copy=*/true);
}

// Cache rows [..., n, head_dim] as int8, each row with the scale s = max |x| / 127 (an all-zero
// row: s = 0, q = 0), q = round(x / s) half to even; fresh tensors, `rows` untouched.
std::pair<at::Tensor, at::Tensor> QuantizeRows(const at::Tensor& rows) {
  const at::Tensor scale = rows.abs().amax(-1, /*keepdim=*/true).div_(kInt8Max);
  const at::Tensor divisor = at::where(scale > 0, scale, at::ones_like(scale));
  at::Tensor q = rows.div(divisor).round_().clamp_(-kInt8Max, kInt8Max).to(at::kChar);
  return {std::move(q), scale};
}

// The fp32 handles of the set's states that compaction may replace, grouped by the tensor they
// refer to (a fork's handle is a copy of its parent's, the same TensorImpl, until one of them
// writes), each with its state's flag to set when it is replaced by a compact copy (null: the
// tensor is only trimmed, an fp32 copy of its elements without the buffer's spare rows) and,
// for an int8 cache, where its rows' scales go.
struct Candidates {
  struct Handle {
    at::Tensor* tensor;
    bool* compact_flag;
    at::Tensor* int8_scale;  // null: bf16 (or trimmed)
  };
  std::unordered_map<const void*, std::vector<Handle>> groups;
  std::vector<const void*> order;  // first-seen order, so the work is deterministic

  void Add(at::Tensor& t, bool* compact_flag, at::Tensor* int8_scale = nullptr) {
    if (!t.defined() || t.scalar_type() != at::kFloat || t.numel() == 0) return;
    if (compact_flag == nullptr && t.storage().nbytes() <= t.nbytes()) return;  // no spare rows
    auto [it, fresh] = groups.try_emplace(t.unsafeGetTensorImpl());
    if (fresh) order.push_back(it->first);
    it->second.push_back({&t, compact_flag, int8_scale});
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

std::optional<KvCompaction> KvCompactionNamed(std::string_view name) {
  if (name == "off") return KvCompaction::kOff;
  if (name == "bf16") return KvCompaction::kBf16;
  if (name == "int8") return KvCompaction::kInt8;
  return std::nullopt;
}

at::Tensor CacheRowsAsFloat(const at::Tensor& rows, const at::Tensor& scale) {
  if (!rows.defined() || rows.scalar_type() == at::kFloat) return rows;
  if (rows.scalar_type() == at::kChar) return rows.to(at::kFloat).mul_(scale);
  return FreshCopy(rows, at::kFloat);
}

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
    bool* cache_flag = options.kv_cache != KvCompaction::kOff ? &s.compact_caches : nullptr;
    const bool int8 = options.kv_cache == KvCompaction::kInt8;
    for (LayerCache& c : s.cache) {
      if (c.SharedRows() > 0) continue;  // its own rows follow a prefix other states read
      candidates.Add(c.keys, cache_flag, int8 ? &c.keys_scale : nullptr);
      candidates.Add(c.values, cache_flag, int8 ? &c.values_scale : nullptr);
    }
  }
  CompactResult result;
  for (const void* impl : candidates.order) {
    const std::vector<Candidates::Handle>& group = candidates.groups.at(impl);
    if (!HeldByOneState(group)) continue;
    const Candidates::Handle& h = group.front();  // the only one
    result.bytes_before += static_cast<int64_t>(h.tensor->storage().nbytes());
    if (h.int8_scale != nullptr) {
      auto [q, scale] = QuantizeRows(*h.tensor);
      result.bytes_after += static_cast<int64_t>(q.nbytes() + scale.nbytes());
      *h.tensor = std::move(q);  // the fp32 buffer goes with its last handle
      *h.int8_scale = std::move(scale);
    } else {
      const bool round = h.compact_flag != nullptr;
      at::Tensor compact = FreshCopy(*h.tensor, round ? kCompactType : at::kFloat);
      result.bytes_after += static_cast<int64_t>(compact.nbytes());
      *h.tensor = std::move(compact);
    }
    if (h.compact_flag != nullptr) *h.compact_flag = true;
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
  auto expand = [](at::Tensor& t, at::Tensor& scale) {
    t = CacheRowsAsFloat(t, scale);  // a fresh buffer unless fp32 already
    scale = at::Tensor();
  };
  if (s.compact_deltas) {
    at::Tensor none;
    for (TttLayerState& slot : s.ttt) expand(slot.delta, none);
  }
  if (s.compact_caches) {
    for (LayerCache& c : s.cache) {
      expand(c.keys, c.keys_scale);
      expand(c.values, c.values_scale);
    }
  }
  s.compact_deltas = s.compact_caches = false;
  return true;
}

}  // namespace ttt::engine
