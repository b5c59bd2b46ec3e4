// See tiny_model.h.
#include "tests/fuzz/tiny_model.h"

#include <cstdio>
#include <cstdlib>

#include "engine/testing/random_weights.h"

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

}  // namespace

std::unique_ptr<engine::Model> TinyModel() {
  const engine::ModelConfig config = TinyConfig();
  auto model = engine::ModelFromWeights(config, engine::testing::RandomWeights(config, {}));
  if (!model.ok()) {
    std::fprintf(stderr, "tiny model: %s\n", model.status().ToString().c_str());
    std::abort();
  }
  return *std::move(model);
}

}  // namespace ttt::fuzz
