#include "engine/internal/train_forward.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"

namespace ttt::engine {
namespace {

constexpr int64_t kConvWidth = 5;  // as engine/model.cc: the official code's depthwise kernel

}  // namespace

// S_j = c_j (S_{j-1} + U_j), c_j = min(1, cap / |S_{j-1} + U_j|), is S_j = sum_i w_ji U_i with
// coefficients that depend on the updates only through their Gram matrix: the sequential part
// runs on [B, n] coefficient rows, and the d x d_ff matrices meet once, in one product. (Looping
// over the matrices themselves keeps one [B, d, d_ff] tensor per chunk alive for autograd: a
// training step at chunk 32 took 3.4 times as long as at chunk 64.)
at::Tensor CappedRunningSums(const at::Tensor& scaled, double cap) {
  const int64_t batch = scaled.size(0), n = scaled.size(1);
  const at::Tensor flat = scaled.reshape({batch, n, -1});
  // Inner products in f32, the recursion in f64: the norms are quadratic forms of the Gram.
  const at::Tensor gram = at::bmm(flat, flat.transpose(1, 2)).to(at::kDouble);  // [B, n, n]
  const at::Tensor unit = at::eye(n, gram.options());
  std::vector<at::Tensor> rows;
  at::Tensor row = at::zeros({batch, n}, gram.options());  // S_{j-1} in terms of U_0..U_{n-1}
  for (int64_t j = 0; j < n; ++j) {
    const at::Tensor sum = row + unit.select(0, j);  // S_{j-1} + U_j
    const at::Tensor squared = (at::bmm(sum.unsqueeze(1), gram).squeeze(1) * sum).sum(1, true);
    // The clamp keeps rounding from going negative; the offset keeps sqrt's gradient finite at a
    // zero delta (a fresh TTT layer's updates are all zero).
    const at::Tensor norm = (squared.clamp_min(0) + 1e-30).sqrt();
    row = sum * at::clamp_max(cap / (norm + 1e-12), 1.0);
    rows.push_back(row);
  }
  const at::Tensor weights = at::stack(rows, 1).to(flat.scalar_type());  // [B, n, n]
  return at::bmm(weights, flat).view(scaled.sizes());
}

namespace {

class Forward {
 public:
  Forward(const ModelConfig& cfg, const NamedTensors& weights, const TrainForwardSettings& s)
      : cfg_(cfg), s_(s), w_(weights.begin(), weights.end()) {}

  at::Tensor Run(const at::Tensor& tokens) {
    B_ = tokens.size(0);
    T_ = tokens.size(1);
    const at::Tensor& embed = W("model.embed_tokens.weight");
    at::Tensor ids = tokens.to(embed.device(), at::kLong).reshape({-1});
    at::Tensor x = embed.index_select(0, ids).view({B_, T_, cfg_.hidden_size});
    const at::Tensor embeddings = x;
    MakeRope(embed.device());
    for (int64_t l = 0; l < cfg_.num_hidden_layers; ++l) x = Layer(l, x, embeddings);
    x = Norm(x, W("model.norm.weight"));
    const at::Tensor& head = w_.count("lm_head.weight") ? W("lm_head.weight") : embed;
    return at::linear(x, head).to(at::kFloat);
  }

 private:
  const at::Tensor& W(const std::string& name) const { return w_.at(name); }
  const at::Tensor* Maybe(const std::string& name) const {
    auto it = w_.find(name);
    return it == w_.end() ? nullptr : &it->second;
  }

  at::Tensor Norm(const at::Tensor& x, const at::Tensor& weight) const {
    at::Tensor xf = x.to(at::kFloat);
    xf = xf * at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + cfg_.rms_norm_eps);
    return weight * xf.to(x.scalar_type());
  }

  at::Tensor Linear(const at::Tensor& x, const std::string& p, const std::string& name) const {
    const at::Tensor* bias = Maybe(p + name + ".bias");
    return at::linear(x, W(p + name + ".weight"), bias ? *bias : at::Tensor());
  }

  void MakeRope(const at::Device& device) {
    const int64_t hd = cfg_.head_dim;
    at::Tensor inv_freq = at::pow(cfg_.rope_theta, at::arange(0, hd, 2, at::kLong).to(at::kFloat) /
                                                       static_cast<double>(hd))
                              .reciprocal()
                              .to(device);
    at::Tensor positions = at::arange(T_, at::TensorOptions().dtype(at::kFloat).device(device));
    at::Tensor freqs = at::outer(positions, inv_freq);
    at::Tensor angles = at::cat({freqs, freqs}, -1).view({1, T_, 1, hd});
    cos_ = angles.cos();
    sin_ = angles.sin();
  }

  // x: [B, T, heads, hd].
  at::Tensor Rope(const at::Tensor& x) const {
    at::Tensor xf = x.to(at::kFloat);
    const int64_t half = xf.size(-1) / 2;
    at::Tensor rotated = at::cat({-xf.slice(-1, half), xf.slice(-1, 0, half)}, -1);
    return (xf * cos_ + rotated * sin_).to(x.scalar_type());
  }

  at::Tensor Layer(int64_t l, const at::Tensor& x, const at::Tensor& embeddings) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    at::Tensor h = Norm(x, W(p + "input_layernorm.weight"));
    at::Tensor attended = Attention(p, h);
    at::Tensor residual = x + at::linear(attended, W(p + "self_attn.o_proj.weight"));
    at::Tensor hm = Norm(residual, W(p + "post_attention_layernorm.weight"));
    at::Tensor z = at::silu(Linear(hm, p, "mlp.gate_proj")) * Linear(hm, p, "mlp.up_proj");
    at::Tensor out = at::linear(z, W(p + "mlp.down_proj.weight"));
    const auto& active = s_.active_ttt_layers;
    if (s_.eta > 0 && std::find(active.begin(), active.end(), l) != active.end()) {
      const at::Tensor& x0 = cfg_.ttt_target == TttTarget::kInputEmbed ? embeddings : hm;
      out = out + FastWeightTerm(p, z, x0).to(out.scalar_type());
    }
    return residual + out;
  }

  // Causal self-attention of h [B, T, d] -> [B, T, heads * hd], scores in fp32 as Ingest does.
  at::Tensor Attention(const std::string& p, const at::Tensor& h) const {
    const int64_t hd = cfg_.head_dim, heads = cfg_.num_attention_heads;
    const int64_t kv_heads = cfg_.num_key_value_heads, group = heads / kv_heads;
    at::Tensor q = Linear(h, p, "self_attn.q_proj").view({B_, T_, heads, hd});
    at::Tensor k = Linear(h, p, "self_attn.k_proj").view({B_, T_, kv_heads, hd});
    at::Tensor v = Linear(h, p, "self_attn.v_proj").view({B_, T_, kv_heads, hd});
    if (const at::Tensor* qn = Maybe(p + "self_attn.q_norm.weight")) {
      q = Norm(q, *qn);
      k = Norm(k, W(p + "self_attn.k_norm.weight"));
    }
    // [B, heads, T, hd] in fp32; key/value heads repeated to their query heads (head i reads
    // key/value head i / group, as Ingest's grouped reshape does).
    q = Rope(q).transpose(1, 2).to(at::kFloat);
    k = Rope(k).transpose(1, 2).to(at::kFloat).repeat_interleave(group, 1);
    v = v.transpose(1, 2).to(at::kFloat).repeat_interleave(group, 1);
    at::Tensor out = s_.window && *s_.window < T_ ? WindowedAttention(q, k, v, *s_.window)
                                                  : FullAttention(q, k, v);
    return out.transpose(1, 2).reshape({B_, T_, heads * hd}).to(h.scalar_type());
  }

  at::Tensor FullAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) const {
    at::Tensor scores = at::matmul(q, k.transpose(-1, -2)) / std::sqrt(double(cfg_.head_dim));
    at::Tensor pos = at::arange(T_, at::TensorOptions().dtype(at::kLong).device(q.device()));
    at::Tensor visible = pos.unsqueeze(0) <= pos.unsqueeze(1);
    if (s_.window) visible = visible & (pos.unsqueeze(0) > pos.unsqueeze(1) - *s_.window);
    scores = scores.masked_fill(visible.logical_not(), -std::numeric_limits<float>::infinity());
    return at::matmul(at::softmax(scores, -1), v);
  }

  // Sliding window of W tokens in blocks of W queries: block i attends to key blocks i-1 and i,
  // so the cost is O(T * 2W) instead of O(T^2). q, k, v: [B, heads, T, hd].
  at::Tensor WindowedAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               int64_t window) const {
    const int64_t heads = q.size(1), hd = q.size(3);
    const int64_t blocks = (T_ + window - 1) / window, padded = blocks * window;
    auto pad = [&](const at::Tensor& t) {
      return at::constant_pad_nd(t, {0, 0, 0, padded - T_}).view({B_, heads, blocks, window, hd});
    };
    at::Tensor qb = pad(q), kb = pad(k), vb = pad(v);
    // Keys of block i-1 (zeros before block 0) next to block i's own: [B, heads, blocks, 2W, hd].
    auto with_previous = [&](const at::Tensor& t) {
      at::Tensor prev = at::constant_pad_nd(t, {0, 0, 0, 0, 1, 0}).slice(2, 0, blocks);
      return at::cat({prev, t}, 3);
    };
    at::Tensor kk = with_previous(kb), vv = with_previous(vb);
    at::Tensor scores = at::matmul(qb, kk.transpose(-1, -2)) / std::sqrt(double(hd));
    // Query qi of block i sits at i*W + qi, key kj at (i-1)*W + kj: visible when the key is not
    // in the future and less than W back (qi < kj <= W + qi), and not before the stream.
    at::TensorOptions long_opts = at::TensorOptions().dtype(at::kLong).device(q.device());
    at::Tensor qi = at::arange(window, long_opts).view({1, window, 1});
    at::Tensor kj = at::arange(2 * window, long_opts).view({1, 1, 2 * window});
    at::Tensor block = at::arange(blocks, long_opts).view({blocks, 1, 1});
    at::Tensor visible = (kj > qi) & (kj <= qi + window) & ((block > 0) | (kj >= window));
    scores = scores.masked_fill(visible.logical_not(), -std::numeric_limits<float>::infinity());
    at::Tensor out = at::matmul(at::softmax(scores, -1), vv);  // [B, heads, blocks, W, hd]
    return out.view({B_, heads, padded, hd}).slice(2, 0, T_);
  }

  // The In-Place TTT term of a fresh stream, parallel form, as Ingest computes it: the rows of
  // chunk j use eta * (sum of the clipped updates of chunks 0..j-1); z [B, T, d_ff], x0 [B, T, d].
  at::Tensor FastWeightTerm(const std::string& p, const at::Tensor& z_in, const at::Tensor& x0_in) {
    const int64_t C = cfg_.ttt_chunk, d = cfg_.hidden_size, f = cfg_.intermediate_size;
    const int64_t chunks = (T_ + C - 1) / C, padded = chunks * C;
    // Zero rows pad the last chunk; its update feeds no row, so the padding changes nothing.
    at::Tensor z =
        at::constant_pad_nd(z_in.to(at::kFloat), {0, 0, 0, padded - T_}).view({B_ * chunks, C, f});
    at::Tensor x0 =
        at::constant_pad_nd(x0_in.to(at::kFloat), {0, 0, 0, padded - T_}).view({B_ * chunks, C, d});
    at::Tensor target = at::conv1d(x0.transpose(1, 2), W(p + "mlp.ttt_conv.weight"), /*bias=*/{},
                                   /*stride=*/1, /*padding=*/kConvWidth / 2, /*dilation=*/1,
                                   /*groups=*/d)
                            .transpose(1, 2);
    if (const at::Tensor* proj = Maybe(p + "mlp.ttt_proj.weight"))
      target = at::matmul(target, *proj);
    at::Tensor updates = at::bmm(target.transpose(1, 2), z);  // [B * chunks, d, f]
    if (cfg_.ttt_clip > 0) {
      at::Tensor norms = updates.flatten(1).norm(2, {1}).view({B_ * chunks, 1, 1});
      updates = updates * at::clamp_max(cfg_.ttt_clip / (norms + 1e-12), 1.0);
    }
    at::Tensor scaled = (updates * s_.eta).view({B_, chunks, d, f});
    at::Tensor sums = cfg_.ttt_delta_cap > 0 ? CappedRunningSums(scaled, cfg_.ttt_delta_cap)
                                             : at::cumsum(scaled, 1);
    at::Tensor deltas =
        at::cat({at::zeros({B_, 1, d, f}, sums.options()), sums.slice(1, 0, chunks - 1)}, 1)
            .view({B_ * chunks, d, f});
    at::Tensor term = at::bmm(z, deltas.transpose(1, 2));  // [B * chunks, C, d]
    return term.view({B_, padded, d}).slice(1, 0, T_);
  }

  const ModelConfig& cfg_;
  const TrainForwardSettings& s_;
  std::map<std::string, at::Tensor> w_;
  int64_t B_ = 0, T_ = 0;
  at::Tensor cos_, sin_;
};

}  // namespace

at::Tensor BatchedTrainForward(const ModelConfig& config, const NamedTensors& weights,
                               const TrainForwardSettings& settings, const at::Tensor& tokens) {
  return Forward(config, weights, settings).Run(tokens);
}

}  // namespace ttt::engine
