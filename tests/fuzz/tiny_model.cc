// See tiny_model.h.
#include "tests/fuzz/tiny_model.h"

#include <cstdio>
#include <cstdlib>

#include "engine/testing/random_weights.h"
#include "engine/testing/tiny_config.h"

namespace ttt::fuzz {
namespace {

// The seeds in corpus/checkpoint_fuzzer/ were saved on exactly this config: keep it.
engine::ModelConfig TinyConfig() {
  engine::testing::TinyShape shape;
  shape.vocab_size = 16;
  shape.hidden_size = 8;
  shape.intermediate_size = 12;
  shape.layers = 2;
  shape.heads = 2;
  shape.kv_heads = 1;
  shape.head_dim = 4;
  shape.sliding_window = 6;
  shape.ttt_layers = {1};
  shape.ttt_chunk = 4;
  shape.rms_norm_eps = engine::ModelConfig{}.rms_norm_eps;
  return engine::testing::TinyConfig(shape);
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
