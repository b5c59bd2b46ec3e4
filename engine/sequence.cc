// SequenceState's copies, accounting and (de)serialization; restoring lives in Model, which knows
// the shapes a state must have.
#include "engine/sequence.h"

#include <memory>
#include <set>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/internal/fast_weight.h"
#include "engine/internal/model_tensors.h"
#include "engine/internal/sequence_tensors.h"
#include "engine/internal/state_buffer.h"
#include "engine/model.h"
#include "util/status_macros.h"

namespace ttt::engine {

SequenceState::SequenceState() = default;
SequenceState::~SequenceState() = default;
SequenceState::SequenceState(SequenceState&& other) noexcept = default;
SequenceState& SequenceState::operator=(SequenceState&& other) noexcept = default;

SequenceTensors& TensorsOf(SequenceState& state) {
  if (state.tensors_ == nullptr) state.tensors_ = std::make_unique<SequenceTensors>();
  return *state.tensors_;
}

const SequenceTensors& TensorsOf(const SequenceState& state) {
  static const SequenceTensors* const kEmpty = new SequenceTensors();
  return state.tensors_ == nullptr ? *kEmpty : *state.tensors_;
}

SequenceState MakeSequenceState(SequenceTensors tensors) {
  SequenceState state;
  TensorsOf(state) = std::move(tensors);
  return state;
}

int64_t SequenceState::position() const { return TensorsOf(*this).position; }
int64_t SequenceState::chunks_applied() const { return TensorsOf(*this).chunks_applied; }
int64_t SequenceState::PendingTokens() const { return TensorsOf(*this).PendingTokens(); }

SequenceState SequenceState::Clone() const {
  const SequenceTensors& from = TensorsOf(*this);
  SequenceTensors copy;
  copy.position = from.position;
  copy.chunks_applied = from.chunks_applied;
  for (const LayerCache& c : from.cache) copy.cache.push_back({c.keys.clone(), c.values.clone()});
  for (const TttLayerState& t : from.ttt) {
    DeltaIncrements increments = t.increments;
    if (!increments.empty()) {
      increments.v = increments.v.clone();
      increments.z = increments.z.clone();
    }
    copy.ttt.push_back({t.layer, t.delta.clone(), t.pending_z.clone(), t.pending_x0.clone(),
                        std::move(increments)});
  }
  if (from.last_logits.defined()) copy.last_logits = from.last_logits.clone();
  copy.compact_deltas = from.compact_deltas;
  copy.compact_caches = from.compact_caches;
  return MakeSequenceState(std::move(copy));
}

// A copy of the handles: sound because no write reaches a buffer that another handle can see
// (internal/state_buffer.h's OwnsBuffer guards every in-place write).
SequenceState SequenceState::Fork() const { return MakeSequenceState(TensorsOf(*this)); }

// The elements of its tensors: what a valid state of this shape needs (and what it serializes
// to); HeldBytes adds the spare rows of buffers grown in place (internal/state_buffer.h).
int64_t SequenceState::MemoryBytes() const {
  const SequenceTensors& s = TensorsOf(*this);
  auto elements = [](const at::Tensor& t) -> int64_t { return t.defined() ? t.nbytes() : 0; };
  int64_t bytes = elements(s.last_logits);
  for (const LayerCache& c : s.cache) bytes += elements(c.keys) + elements(c.values);
  for (const TttLayerState& t : s.ttt) {
    bytes += elements(t.delta) + elements(t.pending_z) + elements(t.pending_x0) +
             elements(t.increments.v) + elements(t.increments.z);
  }
  return bytes;
}

int64_t SequenceState::HeldBytes() const {
  int64_t bytes = 0;
  for (const HeldBuffer& buffer : HeldBuffers()) bytes += buffer.bytes;
  return bytes;
}

std::vector<HeldBuffer> SequenceState::HeldBuffers() const {
  const SequenceTensors& s = TensorsOf(*this);
  std::set<uintptr_t> seen;
  std::vector<HeldBuffer> buffers;
  auto add = [&](const at::Tensor& t) {
    if (!t.defined() || !t.has_storage()) return;
    const c10::Storage& storage = t.storage();
    const auto identity = reinterpret_cast<uintptr_t>(storage.unsafeGetStorageImpl());
    if (seen.insert(identity).second) {
      buffers.push_back({identity, static_cast<int64_t>(storage.nbytes())});
    }
  };
  add(s.last_logits);
  for (const LayerCache& c : s.cache) {
    add(c.keys);
    add(c.values);
  }
  for (const TttLayerState& t : s.ttt) {
    add(t.delta);
    add(t.pending_z);
    add(t.pending_x0);
    add(t.increments.v);
    add(t.increments.z);
  }
  return buffers;
}

std::vector<int64_t> SequenceState::TttLayers() const {
  std::vector<int64_t> layers;
  for (const TttLayerState& t : TensorsOf(*this).ttt) layers.push_back(t.layer);
  return layers;
}

std::vector<double> SequenceState::DeltaNorms() const {
  std::vector<double> norms;
  for (const TttLayerState& t : TensorsOf(*this).ttt) {
    norms.push_back(internal::EffectiveDeltaNorm(t));
  }
  return norms;
}

NamedTensors StateTensors(const SequenceState& state) {
  const SequenceTensors& s = TensorsOf(state);
  NamedTensors out;
  // A compact cache (engine/compact.h) as the fp32 it stands for: files hold the model's dtype.
  auto cache = [&](const at::Tensor& t) { return s.compact_caches ? t.to(at::kFloat) : t; };
  for (size_t l = 0; l < s.cache.size(); ++l) {
    out.emplace_back(absl::StrCat("cache.", l, ".keys"), cache(s.cache[l].keys));
    out.emplace_back(absl::StrCat("cache.", l, ".values"), cache(s.cache[l].values));
  }
  for (const TttLayerState& t : s.ttt) {
    // Dense even when factored: a checkpoint or export needs nothing but itself.
    out.emplace_back(absl::StrCat("ttt.", t.layer, ".delta"), internal::EffectiveDelta(t));
    out.emplace_back(absl::StrCat("ttt.", t.layer, ".pending_z"), t.pending_z);
    out.emplace_back(absl::StrCat("ttt.", t.layer, ".pending_x0"), t.pending_x0);
  }
  if (s.last_logits.defined()) out.emplace_back("last_logits", s.last_logits);
  return out;
}

std::map<std::string, std::string> SequenceState::Metadata() const {
  const SequenceTensors& s = TensorsOf(*this);
  return {{"state.position", absl::StrCat(s.position)},
          {"state.chunks_applied", absl::StrCat(s.chunks_applied)}};
}

void MaterialiseIncrements(SequenceState& state) {
  for (TttLayerState& slot : TensorsOf(state).ttt) internal::MaterialiseDelta(slot);
}

absl::StatusOr<std::string> EncodeSequence(const SequenceState& state,
                                           const std::map<std::string, std::string>& metadata) {
  return EncodeSafetensors(StateTensors(state), metadata);
}

absl::StatusOr<SequenceState> RestoreSequence(const Model& model, const SafetensorsFile& file) {
  const ModelConfig& config = model.config();
  SequenceState restored = model.NewSequence();
  SequenceTensors& state = TensorsOf(restored);
  const auto& meta = file.metadata();
  auto number = [&](const std::string& key, int64_t& out) -> absl::Status {
    auto it = meta.find(key);
    if (it == meta.end() || !absl::SimpleAtoi(it->second, &out) || out < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(file.source(), ": metadata '", key, "' is missing or not a count"));
    }
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(number("state.position", state.position));
  RETURN_IF_ERROR(number("state.chunks_applied", state.chunks_applied));

  // Loads `name` and checks dtype, rank and the dimensions that must match the model.
  auto load = [&](const std::string& name, at::ScalarType dtype, std::vector<int64_t> shape,
                  int64_t free_dim, int64_t max_free) -> absl::StatusOr<at::Tensor> {
    ASSIGN_OR_RETURN(at::Tensor t, file.Load(name));
    bool fits = t.scalar_type() == dtype && t.dim() == static_cast<int64_t>(shape.size());
    for (int64_t i = 0; fits && i < t.dim(); ++i) {
      fits = i == free_dim ? t.size(i) <= max_free : t.size(i) == shape[i];
    }
    if (!fits) {
      return absl::InvalidArgumentError(absl::StrCat(
          file.source(), ": tensor '", name, "' has dtype ", c10::toString(t.scalar_type()),
          " shape [", absl::StrJoin(t.sizes(), ","), "], which does not fit this model"));
    }
    return t.to(ModelDevice(model));
  };
  const int64_t kv = config.num_key_value_heads, hd = config.head_dim;
  const at::ScalarType dtype = ModelDtype(model);
  const std::optional<int64_t> window = model.attention_window();
  const int64_t max_cache = window ? std::max<int64_t>(*window - 1, 0) : state.position;
  for (size_t l = 0; l < state.cache.size(); ++l) {
    ASSIGN_OR_RETURN(state.cache[l].keys,
                     load(absl::StrCat("cache.", l, ".keys"), dtype, {kv, 0, hd}, 1, max_cache));
    ASSIGN_OR_RETURN(state.cache[l].values,
                     load(absl::StrCat("cache.", l, ".values"), dtype, {kv, 0, hd}, 1, max_cache));
  }
  const int64_t d = config.hidden_size, d_ff = config.intermediate_size;
  for (TttLayerState& t : state.ttt) {
    const std::string p = absl::StrCat("ttt.", t.layer, ".");
    ASSIGN_OR_RETURN(t.delta, load(p + "delta", at::kFloat, {d, d_ff}, -1, 0));
    ASSIGN_OR_RETURN(t.pending_z,
                     load(p + "pending_z", at::kFloat, {0, d_ff}, 0, config.ttt_chunk - 1));
    ASSIGN_OR_RETURN(t.pending_x0,
                     load(p + "pending_x0", at::kFloat, {0, d}, 0, config.ttt_chunk - 1));
    if (t.pending_z.size(0) != state.position % config.ttt_chunk ||
        t.pending_x0.size(0) != t.pending_z.size(0)) {
      return absl::InvalidArgumentError(
          absl::StrCat(file.source(), ": the unfinished chunk of TTT layer ", t.layer,
                       " does not match the stream position ", state.position));
    }
  }
  if (file.Contains("last_logits")) {
    ASSIGN_OR_RETURN(state.last_logits,
                     load("last_logits", at::kFloat, {config.vocab_size}, -1, 0));
  } else if (state.position > 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        file.source(), ": 'last_logits' is missing for a stream at position ", state.position));
  }
  // Every tensor in the file must be one this model knows: anything else means another model.
  const size_t expected =
      2 * state.cache.size() + 3 * state.ttt.size() + (state.last_logits.defined() ? 1 : 0);
  size_t state_tensors = 0;
  for (const TensorEntry& e : file.entries()) {
    if (e.name.rfind("cache.", 0) == 0 || e.name.rfind("ttt.", 0) == 0 || e.name == "last_logits") {
      ++state_tensors;
    }
  }
  if (state_tensors != expected) {
    return absl::InvalidArgumentError(absl::StrCat(
        file.source(), ": holds ", state_tensors, " state tensors, this model expects ", expected,
        " (a state from a model with other layers or TTT settings?)"));
  }
  RETURN_IF_ERROR(model.CheckSequence(restored, file.source()));
  return restored;
}

absl::StatusOr<SequenceState> Model::RestoreSequence(std::string bytes,
                                                     const std::string& source) const {
  auto file = SafetensorsFile::FromBytes(std::move(bytes), source);
  if (!file.ok()) return absl::DataLossError(file.status().message());
  return engine::RestoreSequence(*this, **file);
}

}  // namespace ttt::engine
