// SequenceState's copies, accounting and (de)serialization; restoring lives in Model, which knows
// the shapes a state must have.
#include "engine/sequence.h"

#include <algorithm>
#include <cmath>
#include <functional>
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
  for (const LayerCache& c : from.cache) {
    LayerCache& to = copy.cache.emplace_back();
    to.keys = internal::WholeCache(c.shared_keys, c.keys).clone();
    to.values = internal::WholeCache(c.shared_values, c.values).clone();
    if (c.keys_scale.defined()) to.keys_scale = c.keys_scale.clone();  // an int8 compact cache
    if (c.values_scale.defined()) to.values_scale = c.values_scale.clone();
  }
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
// (internal/state_buffer.h's OwnsBuffer guards every in-place write; a cache appended to while
// shared keeps the shared rows as its read-only prefix: ShareCachePrefix).
SequenceState SequenceState::Fork() const { return MakeSequenceState(TensorsOf(*this)); }

// The elements of its tensors: what a valid state of this shape needs (and what it serializes
// to); HeldBytes adds the spare rows of buffers grown in place (internal/state_buffer.h).
int64_t SequenceState::MemoryBytes() const {
  const SequenceTensors& s = TensorsOf(*this);
  auto elements = [](const at::Tensor& t) -> int64_t { return t.defined() ? t.nbytes() : 0; };
  int64_t bytes = elements(s.last_logits);
  for (const LayerCache& c : s.cache) {
    bytes += elements(c.keys) + elements(c.values) + elements(c.shared_keys) +
             elements(c.shared_values) + elements(c.keys_scale) + elements(c.values_scale);
  }
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
    add(c.shared_keys);
    add(c.shared_values);
    add(c.keys);
    add(c.values);
    add(c.keys_scale);
    add(c.values_scale);
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

namespace {

// A factored slot's coefficients as one F64 tensor [2 + k]: base_scale, norm_sq, then each
// increment's scale. Doubles, as the fold reads them: a restore computes bit for bit the same.
at::Tensor CoefficientsTensor(const DeltaIncrements& increments) {
  std::vector<double> coefficients{increments.base_scale, increments.norm_sq};
  coefficients.insert(coefficients.end(), increments.scales.begin(), increments.scales.end());
  return at::tensor(coefficients, at::kDouble);
}

}  // namespace

NamedTensors StateTensors(const SequenceState& state) {
  const SequenceTensors& s = TensorsOf(state);
  NamedTensors out;
  // A compact cache (engine/compact.h) as the fp32 it stands for: files hold the model's dtype.
  auto rows = [&](const at::Tensor& t, const at::Tensor& scale) {
    return s.compact_caches ? CacheRowsAsFloat(t, scale) : t;
  };
  for (size_t l = 0; l < s.cache.size(); ++l) {
    // Whole: a shared prefix is written with the rows after it (a copy only then). A compact
    // cache has none.
    const LayerCache& c = s.cache[l];
    out.emplace_back(absl::StrCat("cache.", l, ".keys"),
                     internal::WholeCache(c.shared_keys, rows(c.keys, c.keys_scale)));
    out.emplace_back(absl::StrCat("cache.", l, ".values"),
                     internal::WholeCache(c.shared_values, rows(c.values, c.values_scale)));
  }
  for (const TttLayerState& t : s.ttt) {
    const std::string prefix = absl::StrCat("ttt.", t.layer, ".");
    // A factored delta as it stands, its base (shared or not) and its increments: the file needs
    // nothing else, and what restores from it folds and reads exactly as this state does.
    out.emplace_back(prefix + "delta", t.delta.to(at::kFloat));  // a compact one as its fp32
    out.emplace_back(prefix + "pending_z", t.pending_z);
    out.emplace_back(prefix + "pending_x0", t.pending_x0);
    if (!t.increments.empty()) {
      out.emplace_back(prefix + "increments.v", t.increments.v);
      out.emplace_back(prefix + "increments.z", t.increments.z);
      out.emplace_back(prefix + "increments.coefficients", CoefficientsTensor(t.increments));
    }
  }
  if (s.last_logits.defined()) out.emplace_back("last_logits", s.last_logits);
  return out;
}

bool SequenceState::HoldsIncrements() const {
  for (const TttLayerState& t : TensorsOf(*this).ttt) {
    if (!t.increments.empty()) return true;
  }
  return false;
}

std::map<std::string, std::string> SequenceState::Metadata() const {
  const SequenceTensors& s = TensorsOf(*this);
  return {{"state.position", absl::StrCat(s.position)},
          {"state.chunks_applied", absl::StrCat(s.chunks_applied)}};
}

absl::StatusOr<std::string> EncodeSequence(const SequenceState& state,
                                           const std::map<std::string, std::string>& metadata) {
  return EncodeSafetensors(StateTensors(state), metadata);
}

namespace {

// Loads a named state tensor and checks its dtype, rank and the dimensions that must match the
// model: (name, dtype, shape, the dimension that may vary or -1, its most rows).
using TensorLoader = std::function<absl::StatusOr<at::Tensor>(
    const std::string&, at::ScalarType, std::vector<int64_t>, int64_t, int64_t)>;

// A factored TTT layer's increments, `prefix` "ttt.<layer>.", or none when the file holds none
// of their tensors (a dense layer). Untrusted bytes: all three tensors or none; rows whole
// chunks, at most MaxIncrementRows (what a fold keeps before it goes dense); one finite scale per
// increment; the base's scale in [0, 1] (the delta cap and a fade only shrink it); the norm finite,
// >= 0.
absl::StatusOr<DeltaIncrements> LoadIncrements(const SafetensorsFile& file,
                                               const std::string& prefix, const ModelConfig& config,
                                               const TensorLoader& load) {
  const std::string v_name = prefix + "increments.v", z_name = prefix + "increments.z",
                    coefficients_name = prefix + "increments.coefficients";
  const int present =
      file.Contains(v_name) + file.Contains(z_name) + file.Contains(coefficients_name);
  if (present == 0) return DeltaIncrements{};
  auto invalid = [&](const std::string& why) {
    return absl::InvalidArgumentError(
        absl::StrCat(file.source(), ": ", prefix, "increments ", why));
  };
  if (present != 3) return invalid("need all three tensors (v, z, coefficients) or none");
  const int64_t d = config.hidden_size, d_ff = config.intermediate_size, chunk = config.ttt_chunk;
  const int64_t max_rows = internal::MaxIncrementRows(d, d_ff, chunk);
  DeltaIncrements increments;
  ASSIGN_OR_RETURN(increments.v, load(v_name, at::kFloat, {0, d}, 0, max_rows));
  ASSIGN_OR_RETURN(increments.z, load(z_name, at::kFloat, {0, d_ff}, 0, max_rows));
  const int64_t rows = increments.v.size(0);
  if (rows == 0 || rows % chunk != 0 || increments.z.size(0) != rows) {
    return invalid(absl::StrCat("hold ", rows, " and ", increments.z.size(0),
                                " rows; they must be the same positive multiple of the chunk (",
                                chunk, ")"));
  }
  const int64_t k = rows / chunk;
  ASSIGN_OR_RETURN(at::Tensor coefficients, load(coefficients_name, at::kDouble, {k + 2}, -1, 0));
  coefficients = coefficients.cpu().contiguous();
  const double* c = coefficients.data_ptr<double>();
  if (!std::all_of(c, c + k + 2, [](double x) { return std::isfinite(x); }) || c[0] < 0 ||
      c[0] > 1 || c[1] < 0) {
    return invalid(
        "coefficients must be finite, the base's scale in [0, 1] and the squared norm >= 0");
  }
  increments.base_scale = c[0];
  increments.norm_sq = c[1];
  increments.scales.assign(c + 2, c + k + 2);
  return increments;
}

}  // namespace

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
  const TensorLoader load = [&](const std::string& name, at::ScalarType dtype,
                                std::vector<int64_t> shape, int64_t free_dim,
                                int64_t max_free) -> absl::StatusOr<at::Tensor> {
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
  size_t factored = 0;
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
    ASSIGN_OR_RETURN(t.increments, LoadIncrements(file, p, config, load));
    factored += t.increments.empty() ? 0 : 1;
  }
  if (file.Contains("last_logits")) {
    ASSIGN_OR_RETURN(state.last_logits,
                     load("last_logits", at::kFloat, {config.vocab_size}, -1, 0));
  } else if (state.position > 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        file.source(), ": 'last_logits' is missing for a stream at position ", state.position));
  }
  // Every tensor in the file must be one this model knows: anything else means another model.
  const size_t expected = 2 * state.cache.size() + 3 * state.ttt.size() + 3 * factored +
                          (state.last_logits.defined() ? 1 : 0);
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
