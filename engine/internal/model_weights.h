// The model's tensors as the forward uses them (shared by model.cc, which loads them, and
// forward.cc, which runs them).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "engine/model.h"

namespace ttt::engine {

constexpr int64_t kConvWidth = 5;  // the official code's depthwise kernel; padding 2 each side

struct LayerWeights {
  at::Tensor input_norm, post_norm;
  at::Tensor q_proj, k_proj, v_proj, o_proj;
  at::Tensor q_bias, k_bias, v_bias;  // undefined without attention_bias
  at::Tensor q_norm, k_norm;          // undefined unless qk_norm (Qwen3)
  at::Tensor gate_proj, up_proj, down_proj;
  at::Tensor ttt_conv;    // [d, 1, 5] fp32; undefined where TTT is off
  at::Tensor ttt_proj;    // [d, d] fp32 (used as stored); undefined without ttt_proj
  int64_t ttt_slot = -1;  // index into SequenceTensors::ttt, -1 for a plain layer
};

struct Model::Weights {
  at::Device device = at::kCPU;
  at::ScalarType dtype = at::kFloat;       // of the weights and KV cache (not of the deltas)
  std::string fingerprint;                 // Model::fingerprint()
  std::vector<int64_t> active_ttt_layers;  // Model::active_ttt_layers()
  at::Tensor embed;                        // [vocab, d]
  std::vector<LayerWeights> layers;
  at::Tensor final_norm;
  at::Tensor lm_head;   // [vocab, d]; aliases embed when tied
  at::Tensor inv_freq;  // [head_dim / 2] fp32
  std::optional<int64_t> window;
  double eta = 0.0;
  // Each session's dense delta between steps (ModelConfig::ttt_delta_dtype after the override):
  // kFloat or kBFloat16. A delta of the other type (a restored or expanded one) is read as it is
  // and stored in this type at its next update.
  at::ScalarType delta_dtype = at::kFloat;
};

}  // namespace ttt::engine
