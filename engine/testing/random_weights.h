// Random weights for a Llama-shaped ModelConfig (with In-Place TTT where the config asks): the
// one builder that tests, fuzz targets and benchmarks share. Same options, same tensors, in every
// process (at::manual_seed), so saved states and seed corpora stay valid across runs.
#pragma once

#include <cstdint>

#include "engine/config.h"
#include "engine/internal/safetensors.h"

namespace ttt::engine::testing {

struct RandomWeightOptions {
  uint64_t seed = 7;
  double embed_std = 1.0;    // model.embed_tokens
  double weight_std = 0.2;   // attention and MLP projections, lm_head
  double norm_jitter = 0.1;  // RMSNorm weights are 1 + N(0, norm_jitter)
  double ttt_conv_std = 0.3;
  double ttt_proj_std = 0.2;
  // false: no TTT tensors (the random numbers are still drawn, so a model without them shares
  // every other weight with the one that has them).
  bool with_ttt = true;
};

NamedTensors RandomWeights(const ModelConfig& config, const RandomWeightOptions& options = {});

}  // namespace ttt::engine::testing
