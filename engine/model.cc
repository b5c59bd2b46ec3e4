// The model: loading and checking weights, fresh and restored sequences, and Model::Ingest,
// which validates a batch, runs the forward (internal/forward.cc) and turns its logits into
// per-token log-probabilities.
#include "engine/model.h"

#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/decode.h"
#include "engine/internal/fast_weight.h"
#include "engine/internal/forward.h"
#include "engine/internal/model_tensors.h"
#include "engine/internal/model_weights.h"
#include "engine/internal/state_buffer.h"
#include "engine/internal/train_forward.h"
#include "engine/internal/workspace.h"
#include "util/cpu_quota.h"
#include "util/sha256.h"
#include "util/status_macros.h"

namespace ttt::engine {
namespace {

// See Model::fingerprint(). Tensors are taken in name order (by_name is sorted); `skip` names one
// left out (the untied head a tied model ignores). Each field is length-prefixed, so no two
// different inputs hash the same byte stream.
std::string Fingerprint(const std::string& config_json,
                        const std::map<std::string, at::Tensor>& by_name, const std::string& skip) {
  util::Sha256 h;
  auto field = [&h](const void* data, size_t size) {
    const uint64_t n = size;
    h.Update(&n, sizeof(n));
    h.Update(data, size);
  };
  field(config_json.data(), config_json.size());
  for (const auto& [name, tensor] : by_name) {
    if (name == skip) continue;
    at::Tensor cpu = tensor.detach().contiguous().cpu();
    const std::string dtype = std::string(c10::toString(cpu.scalar_type()));
    const std::string shape = absl::StrJoin(cpu.sizes(), ",");
    field(name.data(), name.size());
    field(dtype.data(), dtype.size());
    field(shape.data(), shape.size());
    field(cpu.data_ptr(), cpu.nbytes());
  }
  return h.HexFinal();
}

absl::StatusOr<at::Device> ParseDevice(const std::string& name) {
  try {
    at::Device device(name);
    if (device.is_cuda() && !at::hasCUDA()) {
      return absl::FailedPreconditionError(
          absl::StrCat("device '", name,
                       "' asked for, but this LibTorch has no CUDA (or no GPU is visible);"
                       " use --device=cpu or build against a CUDA LibTorch"));
    }
    if (!device.is_cpu() && !device.is_cuda()) {
      return absl::InvalidArgumentError(absl::StrCat("device '", name, "': use cpu or cuda[:N]"));
    }
    return device;
  } catch (const c10::Error&) {
    return absl::InvalidArgumentError(absl::StrCat("device '", name, "' is not cpu or cuda[:N]"));
  }
}

absl::StatusOr<at::ScalarType> ParseDtype(const std::string& name) {
  if (name == "f32" || name == "float32" || name == "fp32") return at::kFloat;
  if (name == "bf16" || name == "bfloat16") return at::kBFloat16;
  return absl::InvalidArgumentError(absl::StrCat("dtype '", name, "': use f32 or bf16"));
}

}  // namespace

void SetCpuThreads(int threads) {
  // The CPUs this process may use (affinity, container quota), not the node's core count.
  if (threads <= 0) threads = util::UsableCpus();
  at::set_num_threads(threads);
  // Looked up at run time: the engine links LibTorch, not OpenBLAS, and may run without it.
  using SetFn = void (*)(int);
  if (auto set = reinterpret_cast<SetFn>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) {
    set(threads);
  }
}

Model::Model(ModelConfig config, std::unique_ptr<Weights> weights)
    : config_(std::move(config)), weights_(std::move(weights)) {}

Model::~Model() = default;

std::unique_ptr<Model> ModelAccess::NewModel(ModelConfig config,
                                             std::unique_ptr<Model::Weights> weights) {
  return std::unique_ptr<Model>(new Model(std::move(config), std::move(weights)));
}

const std::string& Model::fingerprint() const { return weights_->fingerprint; }

const std::vector<int64_t>& Model::active_ttt_layers() const { return weights_->active_ttt_layers; }

at::Device ModelDevice(const Model& model) { return ModelAccess::WeightsOf(model).device; }

at::ScalarType ModelDtype(const Model& model) { return ModelAccess::WeightsOf(model).dtype; }

at::ScalarType ModelDeltaDtype(const Model& model) {
  return ModelAccess::WeightsOf(model).delta_dtype;
}

absl::StatusOr<std::unique_ptr<Model>> Model::Load(const std::filesystem::path& dir,
                                                   const ModelOptions& options) {
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(dir));
  ASSIGN_OR_RETURN(std::unique_ptr<WeightStore> store, WeightStore::Open(dir));
  NamedTensors weights;
  for (const std::string& name : store->Names()) {
    ASSIGN_OR_RETURN(at::Tensor tensor, store->Load(name));
    weights.emplace_back(name, std::move(tensor));
  }
  return ModelFromWeights(std::move(config), weights, options);
}

absl::StatusOr<std::unique_ptr<Model>> ModelFromWeights(ModelConfig config,
                                                        const NamedTensors& weights,
                                                        const ModelOptions& options) {
  ASSIGN_OR_RETURN(at::Device device, ParseDevice(options.device));
  ASSIGN_OR_RETURN(at::ScalarType dtype, ParseDtype(options.dtype));
  std::map<std::string, at::Tensor> by_name(weights.begin(), weights.end());
  const int64_t d = config.hidden_size, d_ff = config.intermediate_size, hd = config.head_dim;
  const int64_t q_dim = config.num_attention_heads * hd, kv_dim = config.num_key_value_heads * hd;

  // Fetches a tensor, checks its shape and moves it to the model's device and `type`.
  auto take = [&](const std::string& name, std::vector<int64_t> shape,
                  at::ScalarType type) -> absl::StatusOr<at::Tensor> {
    auto it = by_name.find(name);
    if (it == by_name.end()) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' is missing"));
    }
    if (it->second.sizes().vec() != shape) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", name, "' has shape [", absl::StrJoin(it->second.sizes(), ","),
                       "], expected [", absl::StrJoin(shape, ","), "]"));
    }
    return it->second.to(device, type);
  };

  auto w = std::make_unique<Model::Weights>();
  w->device = device;
  w->dtype = dtype;
  ASSIGN_OR_RETURN(w->embed, take("model.embed_tokens.weight", {config.vocab_size, d}, dtype));
  ASSIGN_OR_RETURN(w->final_norm, take("model.norm.weight", {d}, dtype));
  // As Hugging Face's tie_weights(): a tied model uses embed_tokens as its head and ignores any
  // lm_head.weight the file still holds (a stale copy would score with the wrong head).
  if (config.tie_word_embeddings) {
    w->lm_head = w->embed;
  } else {
    ASSIGN_OR_RETURN(w->lm_head, take("lm_head.weight", {config.vocab_size, d}, dtype));
  }
  w->window = options.sliding_window
                  ? (*options.sliding_window > 0 ? std::optional<int64_t>(*options.sliding_window)
                                                 : std::nullopt)
                  : config.sliding_window;
  w->eta = options.ttt_lr.value_or(config.ttt_lr);
  if (w->eta < 0 || !std::isfinite(w->eta)) {
    return absl::InvalidArgumentError(absl::StrCat("ttt_lr ", w->eta, " must be >= 0"));
  }
  TttDeltaDtype delta_dtype = config.ttt_delta_dtype;
  if (options.ttt_delta_dtype) {
    ASSIGN_OR_RETURN(delta_dtype, ParseTttDeltaDtype(*options.ttt_delta_dtype));
  }
  w->delta_dtype = delta_dtype == TttDeltaDtype::kBFloat16 ? at::kBFloat16 : at::kFloat;
  w->inv_freq = at::pow(config.rope_theta,
                        at::arange(0, hd, 2, at::kLong).to(at::kFloat) / static_cast<double>(hd))
                    .reciprocal()
                    .to(device);

  std::unique_ptr<Model> model = ModelAccess::NewModel(std::move(config), std::move(w));
  const ModelConfig& cfg = model->config();
  Model::Weights& mw = ModelAccess::WeightsOf(*model);
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    LayerWeights lw;
    ASSIGN_OR_RETURN(lw.input_norm, take(p + "input_layernorm.weight", {d}, dtype));
    ASSIGN_OR_RETURN(lw.post_norm, take(p + "post_attention_layernorm.weight", {d}, dtype));
    ASSIGN_OR_RETURN(lw.q_proj, take(p + "self_attn.q_proj.weight", {q_dim, d}, dtype));
    ASSIGN_OR_RETURN(lw.k_proj, take(p + "self_attn.k_proj.weight", {kv_dim, d}, dtype));
    ASSIGN_OR_RETURN(lw.v_proj, take(p + "self_attn.v_proj.weight", {kv_dim, d}, dtype));
    ASSIGN_OR_RETURN(lw.o_proj, take(p + "self_attn.o_proj.weight", {d, q_dim}, dtype));
    if (cfg.attention_bias) {
      ASSIGN_OR_RETURN(lw.q_bias, take(p + "self_attn.q_proj.bias", {q_dim}, dtype));
      ASSIGN_OR_RETURN(lw.k_bias, take(p + "self_attn.k_proj.bias", {kv_dim}, dtype));
      ASSIGN_OR_RETURN(lw.v_bias, take(p + "self_attn.v_proj.bias", {kv_dim}, dtype));
    }
    if (cfg.qk_norm) {
      ASSIGN_OR_RETURN(lw.q_norm, take(p + "self_attn.q_norm.weight", {hd}, dtype));
      ASSIGN_OR_RETURN(lw.k_norm, take(p + "self_attn.k_norm.weight", {hd}, dtype));
    }
    ASSIGN_OR_RETURN(lw.gate_proj, take(p + "mlp.gate_proj.weight", {d_ff, d}, dtype));
    ASSIGN_OR_RETURN(lw.up_proj, take(p + "mlp.up_proj.weight", {d_ff, d}, dtype));
    ASSIGN_OR_RETURN(lw.down_proj, take(p + "mlp.down_proj.weight", {d, d_ff}, dtype));
    // A TTT layer whose checkpoint lacks the TTT parameters serves as a plain layer.
    const bool has_ttt = by_name.count(p + "mlp.ttt_conv.weight") > 0;
    if (cfg.ttt_mode && cfg.IsTttLayer(l) && has_ttt) {
      ASSIGN_OR_RETURN(lw.ttt_conv,
                       take(p + "mlp.ttt_conv.weight", {d, 1, kConvWidth}, at::kFloat));
      if (cfg.ttt_proj) {
        ASSIGN_OR_RETURN(lw.ttt_proj, take(p + "mlp.ttt_proj.weight", {d, d}, at::kFloat));
      }
      if (mw.eta > 0) {
        lw.ttt_slot = static_cast<int64_t>(mw.active_ttt_layers.size());
        mw.active_ttt_layers.push_back(l);
      }
    }
    mw.layers.push_back(std::move(lw));
  }

  mw.fingerprint =
      Fingerprint(ModelConfigToJson(cfg), by_name, cfg.tie_word_embeddings ? "lm_head.weight" : "");
  return model;
}

std::optional<int64_t> Model::attention_window() const { return weights_->window; }

void Model::FadeFastWeights(SequenceState& state, double keep) const {
  if (keep == 1) return;
  c10::InferenceMode guard;  // the state's tensors are inference tensors
  for (TttLayerState& slot : TensorsOf(state).ttt) internal::ScaleDelta(slot, keep);
}

SequenceState Model::NewSequence() const {
  SequenceTensors state;
  at::TensorOptions opts = at::TensorOptions().dtype(weights_->dtype).device(weights_->device);
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
    state.cache.push_back({at::zeros({config_.num_key_value_heads, 0, config_.head_dim}, opts),
                           at::zeros({config_.num_key_value_heads, 0, config_.head_dim}, opts)});
  }
  at::TensorOptions f32 = at::TensorOptions().dtype(at::kFloat).device(weights_->device);
  for (int64_t layer : weights_->active_ttt_layers) {
    state.ttt.push_back({layer,
                         at::zeros({config_.hidden_size, config_.intermediate_size},
                                   f32.dtype(weights_->delta_dtype)),
                         at::zeros({0, config_.intermediate_size}, f32),
                         at::zeros({0, config_.hidden_size}, f32)});
  }
  return MakeSequenceState(std::move(state));
}

// Per item: log p(token) for each new token from the logits before it (the state's last logits
// for the first), in one log_softmax over every item's predicting rows; then each state keeps
// its new last logits.
namespace {

// RecordLogProbs on the CPU in float32: the same log_softmax over the same rows (row by row,
// so the bits do not depend on which rows share a call), with the rows gathered into and read
// from this thread's workspace in blocks of one slot each, and each state's last logits
// rewritten in place when it owns them: a decode step dispatches one operation here instead of
// a dozen, and a long call needs no [rows, vocab] temporaries besides its logits (above glibc's
// mmap threshold each came as fresh pages: bench/RESULTS.md, "Allocator for batch jobs").
void RecordLogProbsCpu(absl::Span<TensorItem> items, const std::vector<size_t>& owner,
                       const std::vector<at::Tensor>& logits,
                       std::vector<IngestLogProbs>& results) {
  const int64_t vocab = logits.front().size(1);
  // Every predicting row: where it is, the token it scores, where its log-probability goes.
  std::vector<const float*> rows;
  std::vector<int64_t> targets;
  std::vector<float*> outs;
  std::vector<at::Tensor> held;  // keeps the rows' tensors alive and contiguous
  for (size_t r = 0; r < items.size(); ++r) {
    const SequenceTensors& state = *items[r].state;
    const absl::Span<const int32_t> tokens = items[r].tokens;
    const int64_t n = static_cast<int64_t>(tokens.size());
    IngestLogProbs& out = results[owner[r]];
    const size_t first = out.size();
    out.resize(first + n, std::numeric_limits<float>::quiet_NaN());
    if (state.last_logits.defined()) {
      held.push_back(state.last_logits.contiguous());
      rows.push_back(held.back().data_ptr<float>());
      targets.push_back(tokens[0]);
      outs.push_back(&out[first]);
    }
    held.push_back(logits[r].contiguous());
    const float* item_rows = held.back().data_ptr<float>();
    for (int64_t i = 0; i + 1 < n; ++i) {
      rows.push_back(item_rows + i * vocab);
      targets.push_back(tokens[i + 1]);
      outs.push_back(&out[first + i + 1]);
    }
  }
  internal::Workspace& ws = internal::Workspace::ForThisThread();
  const int64_t count = static_cast<int64_t>(rows.size());
  const int64_t block = std::max<int64_t>(1, internal::Workspace::kMaxSlotFloats / vocab);
  for (int64_t begin = 0; begin < count; begin += block) {
    const int64_t size = std::min(block, count - begin);
    const at::Tensor predictors = ws.Tensor(internal::Slot::kPredictors, {size, vocab});
    float* gathered = predictors.data_ptr<float>();
    for (int64_t i = 0; i < size; ++i) {
      std::memcpy(gathered + i * vocab, rows[begin + i], vocab * sizeof(float));
    }
    at::Tensor log_prob_rows = ws.Tensor(internal::Slot::kLogProbs, {size, vocab});
    at::_log_softmax_out(log_prob_rows, predictors, 1, false);
    const float* log_probs = log_prob_rows.data_ptr<float>();
    for (int64_t i = 0; i < size; ++i) *outs[begin + i] = log_probs[i * vocab + targets[begin + i]];
  }
  for (size_t r = 0; r < items.size(); ++r) {
    const int64_t n = static_cast<int64_t>(items[r].tokens.size());
    const at::Tensor item_rows = logits[r].contiguous();
    at::Tensor& last = items[r].state->last_logits;
    if (!internal::OwnsBuffer(last) || !last.is_contiguous() || last.numel() != vocab) {
      last = at::empty({vocab}, at::TensorOptions().dtype(at::kFloat));
    }
    std::memcpy(last.data_ptr<float>(), item_rows.data_ptr<float>() + (n - 1) * vocab,
                vocab * sizeof(float));
  }
}

void RecordLogProbs(at::Device device, absl::Span<TensorItem> items,
                    const std::vector<size_t>& owner, const std::vector<at::Tensor>& logits,
                    std::vector<IngestLogProbs>& results) {
  const bool cpu_floats =
      device.is_cpu() && std::all_of(items.begin(), items.end(), [](const TensorItem& item) {
        const at::Tensor& last = item.state->last_logits;
        return !last.defined() || (last.scalar_type() == at::kFloat && last.device().is_cpu());
      });
  if (cpu_floats && logits.front().scalar_type() == at::kFloat) {
    return RecordLogProbsCpu(items, owner, logits, results);
  }
  std::vector<at::Tensor> predictors;
  std::vector<int64_t> targets;
  for (size_t r = 0; r < items.size(); ++r) {
    const SequenceTensors& state = *items[r].state;
    const absl::Span<const int32_t> tokens = items[r].tokens;
    const int64_t n = static_cast<int64_t>(tokens.size());
    // Row i predicts token i+1; the state's last logits predict token 0.
    if (state.last_logits.defined()) {
      predictors.push_back(state.last_logits.unsqueeze(0));
      targets.push_back(tokens[0]);
    }
    if (n > 1) predictors.push_back(logits[r].slice(0, 0, n - 1));
    targets.insert(targets.end(), tokens.begin() + 1, tokens.end());
  }
  at::Tensor picked;
  if (!targets.empty()) {
    at::Tensor index = at::tensor(targets, at::kLong).to(device).unsqueeze(1);
    picked = at::log_softmax(at::cat(predictors, 0), -1).gather(1, index).squeeze(1).cpu();
  }
  const float* data = picked.defined() ? picked.data_ptr<float>() : nullptr;
  for (size_t r = 0; r < items.size(); ++r) {
    SequenceTensors& state = *items[r].state;
    const int64_t n = static_cast<int64_t>(items[r].tokens.size());
    IngestLogProbs& out = results[owner[r]];
    const int64_t count = state.last_logits.defined() ? n : n - 1;
    if (!state.last_logits.defined()) out.push_back(std::numeric_limits<float>::quiet_NaN());
    out.insert(out.end(), data, data + count);
    data += count;
    state.last_logits = logits[r][n - 1].clone();
  }
}
// Model::Ingest on the tensors of its items, already validated.
absl::StatusOr<std::vector<IngestLogProbs>> IngestTensors(const Model& model,
                                                          absl::Span<TensorItem> items,
                                                          IngestMode mode) {
  const ModelConfig& config = model.config();
  std::vector<IngestLogProbs> results(items.size());
  if (mode == IngestMode::kSequential && !model.active_ttt_layers().empty()) {
    // Incremental form: each round feeds every sequence up to its next chunk boundary.
    std::vector<size_t> done(items.size(), 0);
    while (true) {
      std::vector<TensorItem> round;
      std::vector<size_t> owner;
      for (size_t b = 0; b < items.size(); ++b) {
        const absl::Span<const int32_t> tokens = items[b].tokens;
        if (done[b] == tokens.size()) continue;
        const int64_t room = config.ttt_chunk - items[b].state->position % config.ttt_chunk;
        const size_t take = std::min<size_t>(room, tokens.size() - done[b]);
        round.push_back({items[b].state, tokens.subspan(done[b], take)});
        owner.push_back(b);
        done[b] += take;
      }
      if (round.empty()) break;
      ASSIGN_OR_RETURN(std::vector<IngestLogProbs> partial,
                       IngestTensors(model, absl::MakeSpan(round), IngestMode::kParallel));
      for (size_t r = 0; r < round.size(); ++r) {
        IngestLogProbs& out = results[owner[r]];
        out.insert(out.end(), partial[r].begin(), partial[r].end());
      }
    }
    return results;
  }

  try {
    c10::InferenceMode guard;
    std::vector<TensorItem> nonempty;
    std::vector<size_t> owner;
    for (size_t b = 0; b < items.size(); ++b) {
      if (!items[b].tokens.empty()) {
        nonempty.push_back(items[b]);
        owner.push_back(b);
      }
    }
    if (nonempty.empty()) return results;
    // The items are copies sharing the states: the forward advances the callers' states.
    std::vector<at::Tensor> logits = ModelAccess(model, absl::MakeSpan(nonempty)).Run();
    RecordLogProbs(ModelDevice(model), absl::MakeSpan(nonempty), owner, logits, results);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("engine forward failed: ", e.what_without_backtrace()));
  }
  return results;
}

}  // namespace

absl::StatusOr<std::vector<IngestLogProbs>> Model::Ingest(absl::Span<IngestItem> items,
                                                          IngestMode mode) const {
  std::vector<TensorItem> tensor_items;
  tensor_items.reserve(items.size());
  for (const IngestItem& item : items) {
    if (item.state == nullptr) return absl::InvalidArgumentError("ingest item without a state");
    RETURN_IF_ERROR(ValidateTokens(config_, item.tokens));
    tensor_items.push_back({&TensorsOf(*item.state), item.tokens});
  }
  return IngestTensors(*this, absl::MakeSpan(tensor_items), mode);
}

at::Tensor ForwardTrain(const Model& model, const at::Tensor& tokens) {
  const Model::Weights& w = ModelAccess::WeightsOf(model);
  TrainForwardSettings settings;
  settings.eta = w.active_ttt_layers.empty() ? 0.0 : w.eta;
  settings.window = w.window;
  settings.active_ttt_layers = w.active_ttt_layers;
  return BatchedTrainForward(model.config(), NamedWeights(model), settings, tokens.to(w.device));
}

NamedTensors NamedWeights(const Model& model) {
  const Model::Weights& w = ModelAccess::WeightsOf(model);
  NamedTensors out;
  out.emplace_back("model.embed_tokens.weight", w.embed);
  for (size_t l = 0; l < w.layers.size(); ++l) {
    const LayerWeights& lw = w.layers[l];
    const std::string p = absl::StrCat("model.layers.", l, ".");
    out.emplace_back(p + "input_layernorm.weight", lw.input_norm);
    out.emplace_back(p + "post_attention_layernorm.weight", lw.post_norm);
    out.emplace_back(p + "self_attn.q_proj.weight", lw.q_proj);
    out.emplace_back(p + "self_attn.k_proj.weight", lw.k_proj);
    out.emplace_back(p + "self_attn.v_proj.weight", lw.v_proj);
    out.emplace_back(p + "self_attn.o_proj.weight", lw.o_proj);
    if (lw.q_bias.defined()) {
      out.emplace_back(p + "self_attn.q_proj.bias", lw.q_bias);
      out.emplace_back(p + "self_attn.k_proj.bias", lw.k_bias);
      out.emplace_back(p + "self_attn.v_proj.bias", lw.v_bias);
    }
    if (lw.q_norm.defined()) {
      out.emplace_back(p + "self_attn.q_norm.weight", lw.q_norm);
      out.emplace_back(p + "self_attn.k_norm.weight", lw.k_norm);
    }
    out.emplace_back(p + "mlp.gate_proj.weight", lw.gate_proj);
    out.emplace_back(p + "mlp.up_proj.weight", lw.up_proj);
    out.emplace_back(p + "mlp.down_proj.weight", lw.down_proj);
    if (lw.ttt_conv.defined()) out.emplace_back(p + "mlp.ttt_conv.weight", lw.ttt_conv);
    if (lw.ttt_proj.defined()) out.emplace_back(p + "mlp.ttt_proj.weight", lw.ttt_proj);
  }
  out.emplace_back("model.norm.weight", w.final_norm);
  if (!w.lm_head.is_same(w.embed)) {
    out.emplace_back("lm_head.weight", w.lm_head);
  }
  return out;
}

}  // namespace ttt::engine
