// The tiny Llama with In-Place TTT that engine tests and fuzz targets build their models from
// (with RandomWeights), defined once: each states only the sizes it changes.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "engine/config.h"

namespace ttt::engine::testing {

// The sizes that differ between the tiny models. Defaults: model_test's (3 layers, TTT on layers 0
// and 2, GQA with 4 query and 2 key/value heads).
struct TinyShape {
  int64_t vocab_size = 53;
  int64_t hidden_size = 32;
  int64_t intermediate_size = 48;
  int64_t layers = 3;
  int64_t heads = 4;
  int64_t kv_heads = 2;
  int64_t head_dim = 8;
  std::vector<int64_t> ttt_layers = {0, 2};
  int64_t ttt_chunk = 6;
  std::optional<int64_t> sliding_window;  // none: full attention
  double rms_norm_eps = 1e-5;
};

// A Llama config of that shape with In-Place TTT on (ttt_lr 0.5, W_target present).
inline ModelConfig TinyConfig(const TinyShape& shape = {}) {
  ModelConfig c;
  c.model_type = "llama";
  c.vocab_size = shape.vocab_size;
  c.hidden_size = shape.hidden_size;
  c.intermediate_size = shape.intermediate_size;
  c.num_hidden_layers = shape.layers;
  c.num_attention_heads = shape.heads;
  c.num_key_value_heads = shape.kv_heads;
  c.head_dim = shape.head_dim;
  c.sliding_window = shape.sliding_window;
  c.rms_norm_eps = shape.rms_norm_eps;
  c.ttt_mode = true;
  c.ttt_layers = shape.ttt_layers;
  c.ttt_lr = 0.5;
  c.ttt_chunk = shape.ttt_chunk;
  c.ttt_proj = true;
  return c;
}

// The tiny model with the clip and the delta cap biting (as models/ttt-brown's do) and d_ff wide
// enough that three chunks of fork increments cost less than a dense delta (the fourth goes
// dense): for the tests of fast-weight states (forks, compaction).
inline ModelConfig TinyCappedConfig() {
  TinyShape shape;
  shape.intermediate_size = 96;
  ModelConfig c = TinyConfig(shape);
  c.ttt_clip = 0.5;
  c.ttt_delta_cap = 0.6;
  return c;
}

}  // namespace ttt::engine::testing
