// See tiny_model.h.
#include "tests/fuzz/tiny_model.h"

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"

namespace ttt::fuzz {
namespace {

engine::ModelConfig TinyConfig() {
  engine::ModelConfig c;
  c.model_type = "llama";
  c.vocab_size = 16;
  c.hidden_size = 8;
  c.intermediate_size = 12;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.head_dim = 4;
  c.sliding_window = 6;
  c.ttt_mode = true;
  c.ttt_layers = {1};
  c.ttt_lr = 0.5;
  c.ttt_chunk = 4;
  c.ttt_proj = true;
  return c;
}

engine::NamedTensors TinyWeights(const engine::ModelConfig& c) {
  at::manual_seed(11);
  const int64_t d = c.hidden_size, f = c.intermediate_size, q = c.num_attention_heads * c.head_dim,
                kv = c.num_key_value_heads * c.head_dim;
  auto rnd = [](std::vector<int64_t> shape, double scale) { return at::randn(shape) * scale; };
  engine::NamedTensors w{{"model.embed_tokens.weight", rnd({c.vocab_size, d}, 1.0)},
                         {"model.norm.weight", 1 + rnd({d}, 0.1)},
                         {"lm_head.weight", rnd({c.vocab_size, d}, 0.2)}};
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    w.emplace_back(p + "input_layernorm.weight", 1 + rnd({d}, 0.1));
    w.emplace_back(p + "post_attention_layernorm.weight", 1 + rnd({d}, 0.1));
    w.emplace_back(p + "self_attn.q_proj.weight", rnd({q, d}, 0.2));
    w.emplace_back(p + "self_attn.k_proj.weight", rnd({kv, d}, 0.2));
    w.emplace_back(p + "self_attn.v_proj.weight", rnd({kv, d}, 0.2));
    w.emplace_back(p + "self_attn.o_proj.weight", rnd({d, q}, 0.2));
    w.emplace_back(p + "mlp.gate_proj.weight", rnd({f, d}, 0.2));
    w.emplace_back(p + "mlp.up_proj.weight", rnd({f, d}, 0.2));
    w.emplace_back(p + "mlp.down_proj.weight", rnd({d, f}, 0.2));
    if (c.IsTttLayer(l)) {
      w.emplace_back(p + "mlp.ttt_conv.weight", rnd({d, 1, 5}, 0.3));
      w.emplace_back(p + "mlp.ttt_proj.weight", rnd({d, d}, 0.2));
    }
  }
  return w;
}

}  // namespace

std::unique_ptr<engine::Model> TinyModel() {
  const engine::ModelConfig config = TinyConfig();
  auto model = engine::Model::FromWeights(config, TinyWeights(config));
  if (!model.ok()) {
    std::fprintf(stderr, "tiny model: %s\n", model.status().ToString().c_str());
    std::abort();
  }
  return *std::move(model);
}

}  // namespace ttt::fuzz
