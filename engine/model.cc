// The decoder forward over a batch of independent sequences, with In-Place TTT (DESIGN.md
// section 1) in the configured layers. Dense products (projections, MLP, LM head) run once over
// the concatenated tokens of every sequence; attention and the fast-weight terms, which are
// per-sequence, run per sequence.
#include "engine/model.h"

#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/status_macros.h"
#include "engine/train_forward.h"

namespace ttt::engine {
namespace {

constexpr int64_t kConvWidth = 5;  // the official code's depthwise kernel; padding 2 each side

struct LayerWeights {
  at::Tensor input_norm, post_norm;
  at::Tensor q_proj, k_proj, v_proj, o_proj;
  at::Tensor q_bias, k_bias, v_bias;  // undefined without attention_bias
  at::Tensor q_norm, k_norm;          // undefined unless qk_norm (Qwen3)
  at::Tensor gate_proj, up_proj, down_proj;
  at::Tensor ttt_conv;  // [d, 1, 5] fp32; undefined where TTT is off
  at::Tensor ttt_proj;  // [d, d] fp32 (used as stored); undefined without ttt_proj
  int64_t ttt_slot = -1;  // index into SequenceState::ttt, -1 for a plain layer
};

// Rows of `x` times `weight`^T (+ bias), as at::linear. For a few rows (decode steps) OpenBLAS's
// GEMM repacks the whole weight on every call; matrix-vector products skip that and measured
// 3-9x faster here for 1-4 rows of a 768x2048 weight.
constexpr int64_t kMatVecRows = 4;
at::Tensor Linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias = {}) {
  if (x.size(0) > kMatVecRows || x.scalar_type() != at::kFloat || x.requires_grad() ||
      weight.requires_grad() || !x.device().is_cpu()) {
    return at::linear(x, weight, bias);
  }
  std::vector<at::Tensor> rows;
  for (int64_t i = 0; i < x.size(0); ++i) rows.push_back(at::mv(weight, x[i]));
  at::Tensor out = at::stack(rows, 0);
  return bias.defined() ? out + bias : out;
}

at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  at::Tensor xf = x.to(at::kFloat);
  xf = xf * at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * xf.to(x.scalar_type());
}

at::Tensor RotateHalf(const at::Tensor& x) {
  int64_t half = x.size(-1) / 2;
  return at::cat({-x.slice(-1, half), x.slice(-1, 0, half)}, -1);
}

// x: [n, heads, head_dim]; cos/sin: [n, 1, head_dim].
at::Tensor ApplyRope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  at::Tensor xf = x.to(at::kFloat);
  return (xf * cos + RotateHalf(xf) * sin).to(x.scalar_type());
}

// Depthwise Conv1D over time inside each chunk: x [chunks, C, d] -> [chunks, C, d].
at::Tensor ChunkConv(const at::Tensor& x, const at::Tensor& weight) {
  at::Tensor out = at::conv1d(x.transpose(1, 2), weight, /*bias=*/{}, /*stride=*/1,
                              /*padding=*/kConvWidth / 2, /*dilation=*/1,
                              /*groups=*/x.size(2));
  return out.transpose(1, 2);
}

uint64_t Fnv1a(uint64_t hash, const void* data, size_t size) {
  const auto* bytes = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < size; ++i) hash = (hash ^ bytes[i]) * 1099511628211ULL;
  return hash;
}

absl::StatusOr<at::Device> ParseDevice(const std::string& name) {
  try {
    at::Device device(name);
    if (device.is_cuda() && !at::hasCUDA()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "device '", name, "' asked for, but this LibTorch has no CUDA (or no GPU is visible);"
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
  if (threads <= 0) threads = std::max(1u, std::thread::hardware_concurrency());
  at::set_num_threads(threads);
  // Looked up at run time: the engine links LibTorch, not OpenBLAS, and may run without it.
  using SetFn = void (*)(int);
  if (auto set = reinterpret_cast<SetFn>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) {
    set(threads);
  }
}

struct Model::Weights {
  at::Tensor embed;  // [vocab, d]
  std::vector<LayerWeights> layers;
  at::Tensor final_norm;
  at::Tensor lm_head;   // [vocab, d]; aliases embed when tied
  at::Tensor inv_freq;  // [head_dim / 2] fp32
  std::optional<int64_t> window;
  double eta = 0.0;
};

// The forward over one batch of sequence segments. Mutates the states it is given.
class ModelAccess {
 public:
  ModelAccess(const Model& model, absl::Span<IngestItem> items)
      : model_(model), w_(*model.weights_), cfg_(model.config_), items_(items) {}

  // Runs every layer; returns per item the logits [n_i, vocab] (fp32) of its new tokens.
  std::vector<at::Tensor> Run() {
    std::vector<int64_t> flat;
    for (const IngestItem& item : items_) {
      offsets_.push_back(static_cast<int64_t>(flat.size()));
      flat.insert(flat.end(), item.tokens.begin(), item.tokens.end());
    }
    offsets_.push_back(static_cast<int64_t>(flat.size()));
    at::Tensor ids = at::tensor(flat, at::kLong).to(model_.device_);
    at::Tensor x = w_.embed.index_select(0, ids);
    at::Tensor embeddings = x;
    for (size_t l = 0; l < w_.layers.size(); ++l) x = Layer(l, x, embeddings);
    x = RmsNorm(x, w_.final_norm, cfg_.rms_norm_eps);
    at::Tensor logits = Linear(x, w_.lm_head).to(at::kFloat);
    std::vector<at::Tensor> per_item;
    for (size_t b = 0; b < items_.size(); ++b) {
      per_item.push_back(logits.slice(0, offsets_[b], offsets_[b + 1]));
      items_[b].state->position += Count(b);
    }
    return per_item;
  }

 private:
  int64_t Count(size_t b) const { return offsets_[b + 1] - offsets_[b]; }
  at::Tensor Rows(const at::Tensor& t, size_t b) const {
    return t.slice(0, offsets_[b], offsets_[b + 1]);
  }

  at::Tensor Layer(size_t l, const at::Tensor& x, const at::Tensor& embeddings) {
    const LayerWeights& lw = w_.layers[l];
    at::Tensor h = RmsNorm(x, lw.input_norm, cfg_.rms_norm_eps);
    at::Tensor q = Linear(h, lw.q_proj, lw.q_bias);
    at::Tensor k = Linear(h, lw.k_proj, lw.k_bias);
    at::Tensor v = Linear(h, lw.v_proj, lw.v_bias);
    std::vector<at::Tensor> attended;
    for (size_t b = 0; b < items_.size(); ++b) {
      attended.push_back(Attention(l, Rows(q, b), Rows(k, b), Rows(v, b), *items_[b].state));
    }
    at::Tensor residual = x + Linear(at::cat(attended, 0), lw.o_proj);

    at::Tensor hm = RmsNorm(residual, lw.post_norm, cfg_.rms_norm_eps);
    at::Tensor z = at::silu(Linear(hm, lw.gate_proj)) * Linear(hm, lw.up_proj);
    at::Tensor out = Linear(z, lw.down_proj);
    if (lw.ttt_slot >= 0) {
      const at::Tensor& x0 = cfg_.ttt_target == TttTarget::kInputEmbed ? embeddings : hm;
      std::vector<at::Tensor> corrections;
      for (size_t b = 0; b < items_.size(); ++b) {
        corrections.push_back(FastWeightTerm(lw, Rows(z, b), Rows(x0, b), *items_[b].state));
      }
      out = out + at::cat(corrections, 0).to(out.scalar_type());
    }
    return residual + out;
  }

  // Self-attention of one sequence's new tokens over its cache and themselves; extends the cache.
  at::Tensor Attention(size_t l, at::Tensor q, at::Tensor k, at::Tensor v, SequenceState& state) {
    const LayerWeights& lw = w_.layers[l];
    const int64_t n = q.size(0), hd = cfg_.head_dim;
    const int64_t heads = cfg_.num_attention_heads, kv_heads = cfg_.num_key_value_heads;
    q = q.view({n, heads, hd});
    k = k.view({n, kv_heads, hd});
    v = v.view({n, kv_heads, hd});
    if (lw.q_norm.defined()) {
      q = RmsNorm(q, lw.q_norm, cfg_.rms_norm_eps);
      k = RmsNorm(k, lw.k_norm, cfg_.rms_norm_eps);
    }
    const int64_t start = state.position;
    at::Tensor positions =
        at::arange(start, start + n, at::TensorOptions().dtype(at::kFloat).device(q.device()));
    at::Tensor freqs = at::outer(positions, w_.inv_freq);
    at::Tensor angles = at::cat({freqs, freqs}, -1).unsqueeze(1);  // [n, 1, hd]
    at::Tensor cos = angles.cos(), sin = angles.sin();
    q = ApplyRope(q, cos, sin).transpose(0, 1);  // [heads, n, hd]
    k = ApplyRope(k, cos, sin).transpose(0, 1);  // [kv_heads, n, hd]
    v = v.transpose(0, 1);

    LayerCache& cache = state.cache[l];
    at::Tensor keys = cache.keys.size(1) > 0 ? at::cat({cache.keys, k}, 1) : k;
    at::Tensor values = cache.values.size(1) > 0 ? at::cat({cache.values, v}, 1) : v;
    const int64_t total = keys.size(1), cached = total - n;

    // Mask: key j (absolute position start - cached + j) is visible to query i (start + i) when
    // it is not in the future and, with a window, less than `window` tokens back.
    at::TensorOptions long_opts = at::TensorOptions().dtype(at::kLong).device(q.device());
    at::Tensor qpos = at::arange(n, long_opts).unsqueeze(1) + cached;
    at::Tensor kpos = at::arange(total, long_opts).unsqueeze(0);
    at::Tensor visible = kpos <= qpos;
    if (w_.window) visible = visible & (kpos > qpos - *w_.window);

    const int64_t group = heads / kv_heads;
    at::Tensor qg = q.reshape({kv_heads, group * n, hd}).to(at::kFloat);
    at::Tensor scores = at::bmm(qg, keys.to(at::kFloat).transpose(1, 2)) / std::sqrt(double(hd));
    scores = scores.view({kv_heads, group, n, total})
                 .masked_fill(visible.logical_not(), -std::numeric_limits<float>::infinity());
    at::Tensor probs = at::softmax(scores, -1).view({kv_heads, group * n, total});
    at::Tensor out = at::bmm(probs, values.to(at::kFloat)).view({heads, n, hd});

    const int64_t keep = w_.window ? std::min<int64_t>(total, std::max<int64_t>(*w_.window - 1, 0))
                                   : total;
    cache.keys = keep < total ? keys.slice(1, total - keep).clone() : keys;
    cache.values = keep < total ? values.slice(1, total - keep).clone() : values;
    return out.transpose(0, 1).reshape({n, heads * hd}).to(q.scalar_type());
  }

  // In-Place TTT for one sequence in one layer, parallel form: the new rows' outputs use
  // W_down^(0) + delta + (eta * sum of updates of chunks completed earlier in this segment);
  // every chunk completed here is folded into the state's delta. Returns z @ (fast part)^T.
  at::Tensor FastWeightTerm(const LayerWeights& lw, const at::Tensor& z_new,
                            const at::Tensor& x0_new, SequenceState& state) {
    TttLayerState& slot = state.ttt[lw.ttt_slot];
    const int64_t chunk = cfg_.ttt_chunk, pending = slot.pending_z.size(0), n = z_new.size(0);
    at::Tensor z = at::cat({slot.pending_z, z_new.to(at::kFloat)}, 0);
    at::Tensor x0 = at::cat({slot.pending_x0, x0_new.to(at::kFloat)}, 0);
    const int64_t rows = pending + n, complete = rows / chunk;
    const int64_t d_model = cfg_.hidden_size, d_ff = cfg_.intermediate_size;

    // Deltas in force for chunk 0 (the one the pending rows belong to) .. chunk `complete`.
    at::Tensor deltas = slot.delta.unsqueeze(0);
    if (complete > 0) {
      at::Tensor zc = z.slice(0, 0, complete * chunk).view({complete, chunk, d_ff});
      at::Tensor target = ChunkConv(x0.slice(0, 0, complete * chunk).view({complete, chunk, d_model}),
                                    lw.ttt_conv);
      if (lw.ttt_proj.defined()) target = at::matmul(target, lw.ttt_proj);
      at::Tensor updates = at::bmm(target.transpose(1, 2), zc);  // [complete, d, d_ff]
      if (cfg_.ttt_clip > 0) {
        at::Tensor norms = updates.flatten(1).norm(2, {1}).view({complete, 1, 1});
        updates = updates * at::clamp_max(cfg_.ttt_clip / (norms + 1e-12), 1.0);
      }
      at::Tensor sums = at::cumsum(updates * w_.eta, 0) + slot.delta;
      deltas = at::cat({deltas, sums}, 0);  // [complete + 1, d, d_ff]
      slot.delta = sums[complete - 1];
      if (lw.ttt_slot == 0) state.chunks_applied += complete;  // count each chunk once
    }
    // Each new row times the delta of its own chunk: the rest of the first chunk with deltas[0],
    // later rows padded to whole chunks, one batched product (pending rows need no output).
    const int64_t first_end = std::min(rows, chunk);
    at::Tensor term = Linear(z.slice(0, pending, first_end), deltas[0]);
    if (rows > chunk) {
      const int64_t later = rows - chunk, groups = (later + chunk - 1) / chunk;
      at::Tensor zp = at::constant_pad_nd(z.slice(0, chunk), {0, 0, 0, groups * chunk - later});
      at::Tensor tail = at::bmm(zp.view({groups, chunk, d_ff}),
                                deltas.slice(0, 1, 1 + groups).transpose(1, 2));
      term = at::cat({term, tail.view({groups * chunk, d_model}).slice(0, 0, later)}, 0);
    }
    // Copies, so the state does not pin this segment's whole buffers.
    slot.pending_z = z.slice(0, complete * chunk).clone();
    slot.pending_x0 = x0.slice(0, complete * chunk).clone();
    return term;
  }

  const Model& model_;
  const Model::Weights& w_;
  const ModelConfig& cfg_;
  absl::Span<IngestItem> items_;
  std::vector<int64_t> offsets_;
};

Model::Model(ModelConfig config, std::unique_ptr<Weights> weights, at::Device device,
             at::ScalarType dtype)
    : config_(std::move(config)), weights_(std::move(weights)), device_(device), dtype_(dtype) {}

Model::~Model() = default;

absl::StatusOr<std::unique_ptr<Model>> Model::Load(const std::filesystem::path& dir,
                                                   const ModelOptions& options) {
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(dir));
  ASSIGN_OR_RETURN(std::unique_ptr<WeightStore> store, WeightStore::Open(dir));
  NamedTensors weights;
  for (const std::string& name : store->Names()) {
    ASSIGN_OR_RETURN(at::Tensor tensor, store->Load(name));
    weights.emplace_back(name, std::move(tensor));
  }
  return FromWeights(std::move(config), weights, options);
}

absl::StatusOr<std::unique_ptr<Model>> Model::FromWeights(ModelConfig config,
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
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' has shape [",
                                                     absl::StrJoin(it->second.sizes(), ","),
                                                     "], expected [", absl::StrJoin(shape, ","), "]"));
    }
    return it->second.to(device, type);
  };

  auto w = std::make_unique<Weights>();
  ASSIGN_OR_RETURN(w->embed, take("model.embed_tokens.weight", {config.vocab_size, d}, dtype));
  ASSIGN_OR_RETURN(w->final_norm, take("model.norm.weight", {d}, dtype));
  if (config.tie_word_embeddings && !by_name.count("lm_head.weight")) {
    w->lm_head = w->embed;
  } else {
    ASSIGN_OR_RETURN(w->lm_head, take("lm_head.weight", {config.vocab_size, d}, dtype));
  }
  w->window = options.sliding_window ? (*options.sliding_window > 0
                                            ? std::optional<int64_t>(*options.sliding_window)
                                            : std::nullopt)
                                     : config.sliding_window;
  w->eta = options.ttt_lr.value_or(config.ttt_lr);
  if (w->eta < 0 || !std::isfinite(w->eta)) {
    return absl::InvalidArgumentError(absl::StrCat("ttt_lr ", w->eta, " must be >= 0"));
  }
  w->inv_freq = at::pow(config.rope_theta,
                        at::arange(0, hd, 2, at::kLong).to(at::kFloat) / static_cast<double>(hd))
                    .reciprocal()
                    .to(device);

  auto model = std::unique_ptr<Model>(new Model(std::move(config), std::move(w), device, dtype));
  const ModelConfig& cfg = model->config_;
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
      ASSIGN_OR_RETURN(lw.ttt_conv, take(p + "mlp.ttt_conv.weight", {d, 1, kConvWidth}, at::kFloat));
      if (cfg.ttt_proj) {
        ASSIGN_OR_RETURN(lw.ttt_proj, take(p + "mlp.ttt_proj.weight", {d, d}, at::kFloat));
      }
      if (model->weights_->eta > 0) {
        lw.ttt_slot = static_cast<int64_t>(model->active_ttt_layers_.size());
        model->active_ttt_layers_.push_back(l);
      }
    }
    model->weights_->layers.push_back(std::move(lw));
  }

  uint64_t hash = 1469598103934665603ULL;
  const std::string config_json = ModelConfigToJson(cfg);
  hash = Fnv1a(hash, config_json.data(), config_json.size());
  for (const auto& [name, tensor] : by_name) {
    at::Tensor cpu = tensor.detach().contiguous().cpu();
    hash = Fnv1a(hash, name.data(), name.size());
    hash = Fnv1a(hash, cpu.data_ptr(), cpu.nbytes());
  }
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(hash));
  model->fingerprint_ = hex;
  return model;
}

std::optional<int64_t> Model::attention_window() const { return weights_->window; }

SequenceState Model::NewSequence() const {
  SequenceState state;
  at::TensorOptions opts = at::TensorOptions().dtype(dtype_).device(device_);
  for (int64_t l = 0; l < config_.num_hidden_layers; ++l) {
    state.cache.push_back({at::zeros({config_.num_key_value_heads, 0, config_.head_dim}, opts),
                           at::zeros({config_.num_key_value_heads, 0, config_.head_dim}, opts)});
  }
  at::TensorOptions f32 = at::TensorOptions().dtype(at::kFloat).device(device_);
  for (int64_t layer : active_ttt_layers_) {
    state.ttt.push_back({layer, at::zeros({config_.hidden_size, config_.intermediate_size}, f32),
                         at::zeros({0, config_.intermediate_size}, f32),
                         at::zeros({0, config_.hidden_size}, f32)});
  }
  return state;
}

absl::StatusOr<std::vector<IngestLogProbs>> Model::Ingest(absl::Span<IngestItem> items,
                                                          IngestMode mode) const {
  for (const IngestItem& item : items) {
    if (item.state == nullptr) return absl::InvalidArgumentError("ingest item without a state");
    for (size_t i = 0; i < item.tokens.size(); ++i) {
      if (item.tokens[i] < 0 || item.tokens[i] >= config_.vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrCat("token id ", item.tokens[i], " at index ", i,
                         " is outside the vocabulary [0, ", config_.vocab_size, ")"));
      }
    }
  }
  std::vector<IngestLogProbs> results(items.size());
  if (mode == IngestMode::kSequential && !active_ttt_layers_.empty()) {
    // Incremental form: each round feeds every sequence up to its next chunk boundary.
    std::vector<size_t> done(items.size(), 0);
    while (true) {
      std::vector<IngestItem> round;
      std::vector<size_t> owner;
      for (size_t b = 0; b < items.size(); ++b) {
        const std::vector<int32_t>& tokens = items[b].tokens;
        if (done[b] == tokens.size()) continue;
        const int64_t room = config_.ttt_chunk - items[b].state->position % config_.ttt_chunk;
        const size_t take = std::min<size_t>(room, tokens.size() - done[b]);
        round.push_back({items[b].state, {tokens.begin() + done[b], tokens.begin() + done[b] + take}});
        owner.push_back(b);
        done[b] += take;
      }
      if (round.empty()) break;
      ASSIGN_OR_RETURN(std::vector<IngestLogProbs> partial, Ingest(absl::MakeSpan(round)));
      for (size_t r = 0; r < round.size(); ++r) {
        IngestLogProbs& out = results[owner[r]];
        out.insert(out.end(), partial[r].begin(), partial[r].end());
      }
    }
    return results;
  }

  try {
    c10::InferenceMode guard;
    std::vector<IngestItem> nonempty;
    std::vector<size_t> owner;
    for (size_t b = 0; b < items.size(); ++b) {
      if (!items[b].tokens.empty()) {
        nonempty.push_back(items[b]);
        owner.push_back(b);
      }
    }
    if (nonempty.empty()) return results;
    // The items are copies sharing the states: the forward advances the callers' states.
    std::vector<at::Tensor> logits = ModelAccess(*this, absl::MakeSpan(nonempty)).Run();
    for (size_t r = 0; r < nonempty.size(); ++r) {
      SequenceState& state = *nonempty[r].state;
      const std::vector<int32_t>& tokens = nonempty[r].tokens;
      const int64_t n = static_cast<int64_t>(tokens.size());
      // Row i predicts token i+1; the state's last logits predict token 0.
      at::Tensor predictors = state.last_logits.defined()
                                  ? at::cat({state.last_logits.unsqueeze(0), logits[r].slice(0, 0, n - 1)})
                                  : logits[r].slice(0, 0, n - 1);
      at::Tensor targets = at::tensor(std::vector<int64_t>(tokens.begin(), tokens.end()), at::kLong)
                               .to(device_)
                               .slice(0, state.last_logits.defined() ? 0 : 1);
      at::Tensor picked =
          at::log_softmax(predictors, -1).gather(1, targets.unsqueeze(1)).squeeze(1).cpu();
      IngestLogProbs& out = results[owner[r]];
      if (!state.last_logits.defined()) out.push_back(std::numeric_limits<float>::quiet_NaN());
      const float* data = picked.data_ptr<float>();
      out.insert(out.end(), data, data + picked.numel());
      state.last_logits = logits[r][n - 1].clone();
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("engine forward failed: ", e.what_without_backtrace()));
  }
  return results;
}

at::Tensor Model::ForwardTrain(const at::Tensor& tokens) const {
  TrainForwardSettings settings;
  settings.eta = active_ttt_layers_.empty() ? 0.0 : weights_->eta;
  settings.window = weights_->window;
  settings.active_ttt_layers = active_ttt_layers_;
  return BatchedTrainForward(config_, NamedWeights(), settings, tokens.to(device_));
}

NamedTensors Model::NamedWeights() const {
  NamedTensors out;
  out.emplace_back("model.embed_tokens.weight", weights_->embed);
  for (size_t l = 0; l < weights_->layers.size(); ++l) {
    const LayerWeights& lw = weights_->layers[l];
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
  out.emplace_back("model.norm.weight", weights_->final_norm);
  if (!weights_->lm_head.is_same(weights_->embed)) {
    out.emplace_back("lm_head.weight", weights_->lm_head);
  }
  return out;
}

}  // namespace ttt::engine
