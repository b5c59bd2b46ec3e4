// See random_weights.h.
#include "engine/testing/random_weights.h"

#include <string>
#include <vector>

#include <ATen/ATen.h>

namespace ttt::engine::testing {

NamedTensors RandomWeights(const ModelConfig& c, const RandomWeightOptions& o) {
  at::manual_seed(o.seed);
  const int64_t d = c.hidden_size, f = c.intermediate_size, q = c.num_attention_heads * c.head_dim,
                kv = c.num_key_value_heads * c.head_dim;
  auto rnd = [](std::vector<int64_t> shape, double std) { return at::randn(shape) * std; };
  auto norm = [&] { return 1 + rnd({d}, o.norm_jitter); };
  NamedTensors w{{"model.embed_tokens.weight", rnd({c.vocab_size, d}, o.embed_std)},
                 {"model.norm.weight", norm()},
                 {"lm_head.weight", rnd({c.vocab_size, d}, o.weight_std)}};
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    w.emplace_back(p + "input_layernorm.weight", norm());
    w.emplace_back(p + "post_attention_layernorm.weight", norm());
    w.emplace_back(p + "self_attn.q_proj.weight", rnd({q, d}, o.weight_std));
    w.emplace_back(p + "self_attn.k_proj.weight", rnd({kv, d}, o.weight_std));
    w.emplace_back(p + "self_attn.v_proj.weight", rnd({kv, d}, o.weight_std));
    w.emplace_back(p + "self_attn.o_proj.weight", rnd({d, q}, o.weight_std));
    w.emplace_back(p + "mlp.gate_proj.weight", rnd({f, d}, o.weight_std));
    w.emplace_back(p + "mlp.up_proj.weight", rnd({f, d}, o.weight_std));
    w.emplace_back(p + "mlp.down_proj.weight", rnd({d, f}, o.weight_std));
    at::Tensor conv = rnd({d, 1, 5}, o.ttt_conv_std), proj = rnd({d, d}, o.ttt_proj_std);
    if (o.with_ttt && c.IsTttLayer(l)) {
      w.emplace_back(p + "mlp.ttt_conv.weight", conv);
      w.emplace_back(p + "mlp.ttt_proj.weight", proj);
    }
  }
  return w;
}

}  // namespace ttt::engine::testing
