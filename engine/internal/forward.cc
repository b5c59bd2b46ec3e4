// The decoder forward with In-Place TTT (DESIGN.md section 1) over a batch of sequences, shaped
// so that a step's operation count does not grow with the number of short (decode) sequences in it
// (DESIGN.md, "Batching: the shape that scales").
#include "engine/internal/forward.h"

#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "engine/internal/batched_kernels.h"
#include "engine/internal/chunk_scan.h"
#include "engine/internal/fast_weight.h"
#include "engine/internal/row_kernels.h"
#include "engine/internal/state_buffer.h"

namespace ttt::engine {

at::Tensor internal::Linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  if (x.size(0) > kMatVecRows || x.scalar_type() != at::kFloat || x.requires_grad() ||
      weight.requires_grad() || !x.device().is_cpu()) {
    return at::linear(x, weight, bias);
  }
  if (x.size(0) == 1) {  // one call, no stack: a one-session decode step is dispatch-bound
    const at::Tensor row = x.view({x.size(1)});  // any [1, k] views as [k]
    return (bias.defined() ? at::addmv(bias, weight, row) : at::mv(weight, row)).view({1, -1});
  }
  std::vector<at::Tensor> rows;
  for (int64_t i = 0; i < x.size(0); ++i) rows.push_back(at::mv(weight, x[i]));
  at::Tensor out = at::stack(rows, 0);
  return bias.defined() ? out + bias : out;
}

namespace {

using internal::Linear;

at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  if (internal::RowKernelsApply(x) && weight.scalar_type() == at::kFloat) {
    return internal::RmsNormRows(x, weight, eps);
  }
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
  if (internal::RowKernelsApply(x)) return internal::RopeRows(x, cos, sin);
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

// The factor (<= 1) that brings `delta` back to Frobenius norm `cap` when it is longer: the bound
// on a layer's accumulated fast weights (config ttt_delta_cap, applied only when it is > 0).
at::Tensor DeltaCapFactor(const at::Tensor& delta, double cap) {
  return at::clamp_max(cap / (delta.norm() + 1e-12), 1.0);
}

}  // namespace

ModelAccess::ModelAccess(const Model& model, absl::Span<TensorItem> items)
    : model_(model), w_(*model.weights_), cfg_(model.config_), items_(items) {}

std::vector<at::Tensor> ModelAccess::Run() {
  std::vector<int64_t> flat;
  std::vector<float> positions;
  for (const TensorItem& item : items_) {
    offsets_.push_back(static_cast<int64_t>(flat.size()));
    flat.insert(flat.end(), item.tokens.begin(), item.tokens.end());
    for (size_t i = 0; i < item.tokens.size(); ++i) {
      positions.push_back(static_cast<float>(item.state->position + static_cast<int64_t>(i)));
    }
  }
  offsets_.push_back(static_cast<int64_t>(flat.size()));

  in_place_ = !at::GradMode::is_enabled();
  const bool kernels = in_place_ && w_.device.is_cpu() && w_.dtype == at::kFloat;
  const bool ttt = !w_.active_ttt_layers.empty();
  for (size_t b = 0; b < items_.size(); ++b) {
    const bool fits = !ttt || items_[b].state->PendingTokens() + Count(b) <= cfg_.ttt_chunk;
    varlen_.push_back(kernels && Count(b) <= kVarlenRows && fits);
    any_varlen_ = any_varlen_ || varlen_.back();
  }
  // The fast path's one switch: CPU, float32, outside autograd, every item short (a decode step
  // or a piece inside its chunk, at most kVarlenRows rows). CUDA, bf16, training and long items
  // take the tensor path below.
  if (kernels && std::all_of(varlen_.begin(), varlen_.end(), [](bool v) { return v; })) {
    return RunShort(flat, positions);
  }

  // RoPE factors once for every row of the step (each row at its own sequence's position).
  at::Tensor pos = at::tensor(positions, at::kFloat).to(w_.device);
  at::Tensor freqs = at::outer(pos, w_.inv_freq);
  at::Tensor angles = at::cat({freqs, freqs}, -1).unsqueeze(1);  // [rows, 1, hd]
  cos_ = angles.cos();
  sin_ = angles.sin();

  at::Tensor ids = at::tensor(flat, at::kLong).to(w_.device);
  at::Tensor x = w_.embed.index_select(0, ids);
  at::Tensor embeddings = x;
  for (size_t l = 0; l < w_.layers.size(); ++l) x = Layer(l, x, embeddings);
  x = RmsNorm(x, w_.final_norm, cfg_.rms_norm_eps);
  at::Tensor logits = Linear(x, w_.lm_head).to(at::kFloat);
  std::vector<at::Tensor> per_item;
  for (size_t b = 0; b < items_.size(); ++b) {
    per_item.push_back(Rows(logits, b));
    items_[b].state->position += Count(b);
  }
  return per_item;
}

at::Tensor ModelAccess::Layer(size_t l, const at::Tensor& x, const at::Tensor& embeddings) {
  const LayerWeights& lw = w_.layers[l];
  at::Tensor h = RmsNorm(x, lw.input_norm, cfg_.rms_norm_eps);
  at::Tensor attended = Attend(l, Linear(h, lw.q_proj, lw.q_bias), Linear(h, lw.k_proj, lw.k_bias),
                               Linear(h, lw.v_proj, lw.v_bias));
  at::Tensor residual = x + Linear(attended, lw.o_proj);

  at::Tensor hm = RmsNorm(residual, lw.post_norm, cfg_.rms_norm_eps);
  at::Tensor z = at::silu(Linear(hm, lw.gate_proj)) * Linear(hm, lw.up_proj);
  at::Tensor out = Linear(z, lw.down_proj);
  if (lw.ttt_slot >= 0) {
    const at::Tensor& x0 = cfg_.ttt_target == TttTarget::kInputEmbed ? embeddings : hm;
    out = out + FastWeightTerms(lw, z, x0).to(out.scalar_type());
  }
  return residual + out;
}

// Keys a windowed cache keeps between calls: the window - 1 the next token needs.
int64_t ModelAccess::CacheKeep() const {
  return w_.window ? std::max<int64_t>(*w_.window - 1, 0) : std::numeric_limits<int64_t>::max();
}

// Rows to allocate when a cache that needs `needed` rows must move: a 1.5x geometric growth for
// full attention (amortised O(1) per token), room for a second window when windowed (the window
// slides through the buffer and moves once per window of tokens).
int64_t ModelAccess::CacheReserve(int64_t needed) const {
  if (w_.window) return std::max(needed + 64, 2 * CacheKeep());
  return needed + std::max<int64_t>(needed / 2, 64);
}

// Self-attention of every item's new rows over its cache and themselves; extends the caches.
at::Tensor ModelAccess::Attend(size_t l, at::Tensor q, at::Tensor k, at::Tensor v) {
  const LayerWeights& lw = w_.layers[l];
  const int64_t rows = q.size(0), hd = cfg_.head_dim;
  const int64_t heads = cfg_.num_attention_heads, kv_heads = cfg_.num_key_value_heads;
  q = q.view({rows, heads, hd});
  k = k.view({rows, kv_heads, hd});
  v = v.view({rows, kv_heads, hd});
  if (lw.q_norm.defined()) {
    q = RmsNorm(q, lw.q_norm, cfg_.rms_norm_eps);
    k = RmsNorm(k, lw.k_norm, cfg_.rms_norm_eps);
  }
  q = ApplyRope(q, cos_, sin_);
  k = ApplyRope(k, cos_, sin_);
  if (!any_varlen_) {
    std::vector<at::Tensor> attended;
    for (size_t b = 0; b < items_.size(); ++b) {
      attended.push_back(AttendOne(l, Rows(q, b), Rows(k, b), Rows(v, b), *items_[b].state));
    }
    return at::cat(attended, 0);
  }

  at::Tensor out = at::empty({rows, heads * hd}, q.options());
  AttendVarlen(l, q.contiguous(), k.contiguous(), v.contiguous(), out);
  for (size_t b = 0; b < items_.size(); ++b) {
    if (!varlen_[b]) {
      Rows(out, b).copy_(AttendOne(l, Rows(q, b), Rows(k, b), Rows(v, b), *items_[b].state));
    }
  }
  return out;
}

// One varlen call for the short items: it writes their new keys and values into their grown
// caches and reads the caches in place.
void ModelAccess::AttendVarlen(size_t l, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v, at::Tensor& out) {
  std::vector<internal::AttentionSeq> seqs;
  for (size_t b = 0; b < items_.size(); ++b) {
    if (!varlen_[b]) continue;
    LayerCache& cache = items_[b].state->cache[l];
    internal::ShareCachePrefix(cache);  // a fork's shared rows stay where they are
    const int64_t reserve = CacheReserve(cache.keys.size(1) + Count(b));
    internal::GrowRows(cache.keys, 1, Count(b), reserve);
    internal::GrowRows(cache.values, 1, Count(b), reserve);
    const bool prefix = cache.SharedRows() > 0;
    seqs.push_back({offsets_[b], Count(b), &cache.keys, &cache.values,
                    prefix ? &cache.shared_keys : nullptr,
                    prefix ? &cache.shared_values : nullptr});
  }
  internal::VarlenAttention(q, k, v, seqs, cfg_.num_key_value_heads, w_.window.value_or(0), out);
  for (size_t b = 0; b < items_.size(); ++b) {
    if (!varlen_[b]) continue;
    internal::KeepLastCacheRows(items_[b].state->cache[l], CacheKeep(), CacheReserve(0));
  }
}

// Self-attention of one sequence's new rows (q [n, heads, hd], k/v [n, kv_heads, hd], RoPE
// applied) over its cache and themselves, with BLAS products; extends the cache.
at::Tensor ModelAccess::AttendOne(size_t l, at::Tensor q, at::Tensor k, at::Tensor v,
                                  SequenceTensors& state) {
  const int64_t n = q.size(0), hd = cfg_.head_dim, heads = cfg_.num_attention_heads;
  q = q.transpose(0, 1);  // [heads, n, hd]
  k = k.transpose(0, 1);  // [kv_heads, n, hd]
  v = v.transpose(0, 1);

  LayerCache& cache = state.cache[l];
  at::Tensor keys, values;
  if (in_place_) {
    internal::ShareCachePrefix(cache);  // a fork's shared rows stay where they are
    const int64_t needed = cache.keys.size(1) + n;
    internal::AppendRows(cache.keys, k, 1, CacheReserve(needed));
    internal::AppendRows(cache.values, v, 1, CacheReserve(needed));
    // One tensor for the products (a transient copy only under a shared prefix): the same
    // numbers in the same shapes as a cache in one buffer, so the same results to the bit.
    keys = internal::WholeCache(cache.shared_keys, cache.keys);
    values = internal::WholeCache(cache.shared_values, cache.values);
  } else {
    const at::Tensor cached_keys = internal::WholeCache(cache.shared_keys, cache.keys);
    const at::Tensor cached_values = internal::WholeCache(cache.shared_values, cache.values);
    keys = cached_keys.size(1) > 0 ? at::cat({cached_keys, k}, 1) : k;
    values = cached_values.size(1) > 0 ? at::cat({cached_values, v}, 1) : v;
  }
  const int64_t total = keys.size(1), cached = total - n;

  // Query i sits at row cached + i of the keys. With a window, a query sees fewer than `window`
  // keys back: blocks of queries, each over the keys its rows can see, keep a long ingest
  // O(n * window) instead of O(n * (cached + n)).
  const int64_t block = w_.window ? std::max<int64_t>(2 * *w_.window, 128) : n;
  at::Tensor out;
  if (n <= block) {
    out = MaskedAttention(q, keys, values, cached, 0);
  } else {
    std::vector<at::Tensor> parts;
    for (int64_t q0 = 0; q0 < n; q0 += block) {
      const int64_t q1 = std::min(n, q0 + block);
      const int64_t k0 = std::max<int64_t>(0, cached + q0 - *w_.window + 1), k1 = cached + q1;
      parts.push_back(MaskedAttention(q.slice(1, q0, q1), keys.slice(1, k0, k1),
                                      values.slice(1, k0, k1), cached + q0, k0));
    }
    out = at::cat(parts, 1);
  }

  const int64_t keep = std::min(total, CacheKeep());
  if (in_place_) {
    internal::KeepLastCacheRows(cache, keep, CacheReserve(0));
  } else {
    cache.keys = keep < total ? keys.slice(1, total - keep).clone() : keys;
    cache.values = keep < total ? values.slice(1, total - keep).clone() : values;
    cache.shared_keys = cache.shared_values = at::Tensor();  // now in `keys`
  }
  return out.transpose(0, 1).reshape({n, heads * hd}).to(q.scalar_type());
}

// Softmax attention of q [heads, n, hd] (query i at key-row position q_first + i) over keys and
// values [kv_heads, total, hd] (key j at position k_first + j): a key is visible when it is not
// in the future and, with a window, less than `window` tokens back. Returns [heads, n, hd] fp32.
at::Tensor ModelAccess::MaskedAttention(const at::Tensor& q, const at::Tensor& keys,
                                        const at::Tensor& values, int64_t q_first,
                                        int64_t k_first) const {
  const int64_t heads = q.size(0), n = q.size(1), hd = q.size(2);
  const int64_t kv_heads = keys.size(0), total = keys.size(1), group = heads / kv_heads;
  at::TensorOptions long_opts = at::TensorOptions().dtype(at::kLong).device(q.device());
  at::Tensor qpos = at::arange(n, long_opts).unsqueeze(1) + q_first;
  at::Tensor kpos = at::arange(total, long_opts).unsqueeze(0) + k_first;
  at::Tensor visible = kpos <= qpos;
  if (w_.window) visible = visible & (kpos > qpos - *w_.window);

  at::Tensor qg = q.reshape({kv_heads, group * n, hd}).to(at::kFloat);
  at::Tensor scores = at::bmm(qg, keys.to(at::kFloat).transpose(1, 2)) / std::sqrt(double(hd));
  scores = scores.view({kv_heads, group, n, total})
               .masked_fill(visible.logical_not(), -std::numeric_limits<float>::infinity());
  at::Tensor probs = at::softmax(scores, -1).view({kv_heads, group * n, total});
  return at::bmm(probs, values.to(at::kFloat)).view({heads, n, hd});
}

// In-Place TTT in one layer for every item: z @ (fast part of W_down)^T per row, [rows, d] fp32.
at::Tensor ModelAccess::FastWeightTerms(const LayerWeights& lw, const at::Tensor& z,
                                        const at::Tensor& x0) {
  if (!any_varlen_) {
    std::vector<at::Tensor> corrections;
    for (size_t b = 0; b < items_.size(); ++b) {
      corrections.push_back(FastWeightTermOne(lw, Rows(z, b), Rows(x0, b), *items_[b].state));
    }
    return at::cat(corrections, 0);
  }
  at::Tensor zf = z.to(at::kFloat).contiguous(), x0f = x0.to(at::kFloat).contiguous();
  at::Tensor out = at::empty({z.size(0), cfg_.hidden_size}, zf.options());
  FastWeightTermsVarlen(lw, zf, x0f, out);
  for (size_t b = 0; b < items_.size(); ++b) {
    if (!varlen_[b]) {
      Rows(out, b).copy_(FastWeightTermOne(lw, Rows(z, b), Rows(x0, b), *items_[b].state));
    }
  }
  return out;
}

// Short items' rows all lie in their current chunk, so each row uses its state's delta as it
// stands: one batched product over every short item's delta, then the rows join the unfinished
// chunks, and the chunks that complete are folded in together.
void ModelAccess::FastWeightTermsVarlen(const LayerWeights& lw, const at::Tensor& zf,
                                        const at::Tensor& x0f, at::Tensor& out) {
  std::vector<internal::DeltaSeq> seqs;
  for (size_t b = 0; b < items_.size(); ++b) {
    if (!varlen_[b]) continue;
    TttLayerState& slot = items_[b].state->ttt[lw.ttt_slot];
    if (!slot.delta.is_contiguous()) slot.delta = slot.delta.contiguous();
    seqs.push_back({offsets_[b], Count(b), &slot.delta});
  }
  internal::BatchedDeltaProduct(zf, seqs, out);
  for (size_t b = 0; b < items_.size(); ++b) {  // a fork's own chunk updates, when factored
    if (varlen_[b])
      internal::AddIncrementTerms(items_[b].state->ttt[lw.ttt_slot], Rows(zf, b), Rows(out, b));
  }
  std::vector<SequenceTensors*> completing;
  for (size_t b = 0; b < items_.size(); ++b) {
    if (!varlen_[b]) continue;
    TttLayerState& slot = items_[b].state->ttt[lw.ttt_slot];
    AppendFloatRows(slot.pending_z, zf, offsets_[b], Count(b));
    AppendFloatRows(slot.pending_x0, x0f, offsets_[b], Count(b));
    if (slot.pending_z.size(0) == cfg_.ttt_chunk) completing.push_back(items_[b].state);
  }
  if (!completing.empty()) FoldChunks(lw, completing);
}

// Appends rows [row0, row0 + n) of `source` (f32, contiguous, on the CPU) to the unfinished
// chunk buffer `pending` (f32 rows) with one memcpy: no tensor op per sequence.
void ModelAccess::AppendFloatRows(at::Tensor& pending, const at::Tensor& source, int64_t row0,
                                  int64_t n) const {
  const int64_t width = source.size(1), before = pending.size(0);
  internal::GrowRows(pending, 0, n, cfg_.ttt_chunk);
  std::memcpy(pending.data_ptr<float>() + before * width, source.data_ptr<float>() + row0 * width,
              n * width * sizeof(float));
}

// The targets V_hat [chunks, C, d] of whole chunks x0 [chunks, C, d] (fp32).
at::Tensor ModelAccess::ChunkTargets(const LayerWeights& lw, const at::Tensor& x0) const {
  at::Tensor target = internal::RowKernelsApply(x0) && lw.ttt_conv.scalar_type() == at::kFloat
                          ? internal::ChunkConvTensor(x0, lw.ttt_conv)
                          : ChunkConv(x0, lw.ttt_conv);
  if (lw.ttt_proj.defined()) target = at::matmul(target, lw.ttt_proj);
  return target;
}

internal::FoldParams ModelAccess::FoldParamsOf() const {
  return {.eta = w_.eta, .clip = cfg_.ttt_clip, .cap = cfg_.ttt_delta_cap};
}

// Per-chunk updates V_hat^T Z (clipped), [chunks, d, d_ff], for whole chunks z [chunks, C, d_ff]
// and x0 [chunks, C, d] (fp32).
at::Tensor ModelAccess::ChunkUpdates(const LayerWeights& lw, const at::Tensor& z,
                                     const at::Tensor& x0) const {
  at::Tensor updates = at::bmm(ChunkTargets(lw, x0).transpose(1, 2), z);
  if (cfg_.ttt_clip > 0) {
    at::Tensor norms = updates.flatten(1).norm(2, {1}).view({updates.size(0), 1, 1});
    updates = updates * at::clamp_max(cfg_.ttt_clip / (norms + 1e-12), 1.0);
  }
  return updates;
}

// Folds the full unfinished chunk of each of `states` into its delta, in one batched update.
void ModelAccess::FoldChunks(const LayerWeights& lw, const std::vector<SequenceTensors*>& states) {
  at::Tensor scaled = ScaledChunkUpdates(lw, states);  // raw floats (short_step.cc) if it can
  if (!scaled.defined()) {
    std::vector<at::Tensor> zs, xs;
    for (SequenceTensors* state : states) {
      zs.push_back(state->ttt[lw.ttt_slot].pending_z);
      xs.push_back(state->ttt[lw.ttt_slot].pending_x0);
    }
    scaled = ChunkUpdates(lw, at::stack(zs), at::stack(xs)) * w_.eta;
  }
  for (size_t i = 0; i < states.size(); ++i) {
    TttLayerState& slot = states[i]->ttt[lw.ttt_slot];
    if (internal::FoldsFactored(slot, cfg_.ttt_chunk)) {  // a shared base: an increment of its own
      internal::FoldIncrement(slot, ChunkTargets(lw, slot.pending_x0.unsqueeze(0))[0],
                              slot.pending_z, FoldParamsOf());
    } else {
      internal::MaterialiseDelta(slot);
      if (w_.delta_dtype == at::kFloat && slot.delta.scalar_type() == at::kFloat) {
        // In place only when no one else holds the delta (a fork, a checkpoint being written).
        if (internal::OwnsBuffer(slot.delta)) {
          slot.delta.add_(scaled[i]);
        } else {
          slot.delta = scaled[i] + slot.delta;
        }
        if (cfg_.ttt_delta_cap > 0) {
          slot.delta.mul_(DeltaCapFactor(slot.delta, cfg_.ttt_delta_cap));
        }
      } else {  // the same sum and cap in fp32 in the update's buffer, rounded once as stored
        at::Tensor sum = scaled[i].add_(slot.delta);
        if (cfg_.ttt_delta_cap > 0) sum.mul_(DeltaCapFactor(sum, cfg_.ttt_delta_cap));
        internal::StoreDelta(slot, sum, w_.delta_dtype);
      }
    }
    internal::ClearRows(slot.pending_z, 0);
    internal::ClearRows(slot.pending_x0, 0);
    if (lw.ttt_slot == 0) states[i]->chunks_applied += 1;  // count each chunk once
  }
}

// In-Place TTT for one sequence in one layer, parallel form: the new rows' outputs use
// W_down^(0) + the delta in force for their chunk (the state's, then after each chunk completed
// earlier in this segment: internal/chunk_scan.h); every chunk completed here is folded into the
// state's delta. Returns z @ (fast part)^T.
at::Tensor ModelAccess::FastWeightTermOne(const LayerWeights& lw, const at::Tensor& z_new,
                                          const at::Tensor& x0_new, SequenceTensors& state) {
  TttLayerState& slot = state.ttt[lw.ttt_slot];
  const int64_t chunk = cfg_.ttt_chunk, pending = slot.pending_z.size(0), n = z_new.size(0);
  at::Tensor z = at::cat({slot.pending_z, z_new.to(at::kFloat)}, 0);
  at::Tensor x0 = at::cat({slot.pending_x0, x0_new.to(at::kFloat)}, 0);
  const int64_t rows = pending + n, complete = rows / chunk;
  const int64_t d_model = cfg_.hidden_size;
  if (in_place_ && internal::FoldsFactored(slot, complete * chunk)) {
    // A shared base delta (a copy-on-write fork): the segment's chunks become increments.
    at::Tensor targets =
        ChunkTargets(lw, x0.slice(0, 0, complete * chunk).view({complete, chunk, d_model}));
    at::Tensor term =
        internal::FactoredSegmentTerms(slot, z, targets, pending, chunk, FoldParamsOf());
    if (lw.ttt_slot == 0) state.chunks_applied += complete;  // count each chunk once
    slot.pending_z = z.slice(0, complete * chunk).clone();
    slot.pending_x0 = x0.slice(0, complete * chunk).clone();
    return term;
  }
  internal::MaterialiseDelta(slot);  // increments that would cost more than a dense delta

  // Each new row times the delta in force for its chunk; the chunks completed here fold in.
  at::Tensor term;
  if (complete == 0) {
    term = Linear(z.slice(0, pending), internal::FloatDelta(slot.delta));
  } else {
    at::Tensor targets =
        ChunkTargets(lw, x0.slice(0, 0, complete * chunk).view({complete, chunk, d_model}));
    const bool own = in_place_ && internal::OwnsBuffer(slot.delta);
    term = internal::DenseSegmentTerms(slot.delta, z, targets, pending, chunk, FoldParamsOf(), own);
    // A delta of the other type (materialised from increments, restored by an fp32 build) is
    // stored in the model's from its first update on.
    if (slot.delta.scalar_type() != w_.delta_dtype) slot.delta = slot.delta.to(w_.delta_dtype);
    if (lw.ttt_slot == 0) state.chunks_applied += complete;  // count each chunk once
  }
  // Copies, so the state does not pin this segment's whole buffers.
  slot.pending_z = z.slice(0, complete * chunk).clone();
  slot.pending_x0 = x0.slice(0, complete * chunk).clone();
  return term;
}

}  // namespace ttt::engine
