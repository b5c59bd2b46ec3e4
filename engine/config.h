// The model's shape and In-Place TTT settings, parsed from a Hugging Face `config.json`
// (Llama and Qwen3 families, plus the TTT keys of the paper's official code).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace ttt::engine {

// Where a TTT layer takes X0, the input of its LM-aligned target V = Conv1D(X0) W_target.
enum class TttTarget { kInputEmbed, kHiddenStates };

// How an active session keeps its fast-weight deltas: fp32, or bf16 (half the bytes a batched
// decode step reads; every update still accumulates in fp32 and rounds once when it is stored).
enum class TttDeltaDtype { kFloat32, kBFloat16 };

// "float32" or "bfloat16" (the config key's and the server flag's values). INVALID_ARGUMENT,
// naming `key`, for anything else.
absl::StatusOr<TttDeltaDtype> ParseTttDeltaDtype(const std::string& value,
                                                 const std::string& key = "ttt_delta_dtype");

struct ModelConfig {
  std::string model_type = "llama";  // "llama" or "qwen3"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;        // d_model
  int64_t intermediate_size = 0;  // d_ff
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;  // hidden_size / heads unless the config says otherwise (Qwen3)
  double rope_theta = 10000.0;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  bool qk_norm = false;  // Qwen3: RMSNorm over each head's q and k before RoPE
  bool attention_bias = false;
  // Attention window in tokens (a query sees itself and window-1 earlier tokens); nullopt = full.
  std::optional<int64_t> sliding_window;
  int64_t bos_token_id = -1;
  int64_t eos_token_id = -1;

  // In-Place TTT (DESIGN.md section 1).
  bool ttt_mode = false;
  std::vector<int64_t> ttt_layers;  // sorted, unique, each in [0, num_hidden_layers)
  double ttt_lr = 0.0;              // eta
  int64_t ttt_chunk = 0;            // C
  TttTarget ttt_target = TttTarget::kInputEmbed;
  bool ttt_proj = true;  // W_target present (else identity)
  // Frobenius-norm clip tau of each chunk's update dW_i = V_i^T Z_i (before eta); 0 = off.
  double ttt_clip = 0.0;
  // Frobenius-norm cap of each layer's accumulated delta: after a chunk's update is added, a delta
  // longer than this is scaled back to it, so a long session's fast weights stay bounded (old
  // content fades as new chunks arrive). 0 = off. A serving bound; see docs/model.md.
  double ttt_delta_cap = 0.0;
  // Storage of each active session's dense delta (ModelOptions::ttt_delta_dtype overrides it).
  // bf16 rounds the delta once per store (each chunk a short step folds; each long piece's
  // chunks together); see docs/model.md for its measured cost.
  TttDeltaDtype ttt_delta_dtype = TttDeltaDtype::kFloat32;

  bool IsTttLayer(int64_t layer) const;
};

// Parses config.json text; `source` names the file in error messages.
// Errors (INVALID_ARGUMENT): malformed JSON, missing or ill-typed keys, inconsistent shapes
// (heads not dividing hidden size, KV heads not dividing heads, TTT layer out of range, ...).
absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text,
                                             const std::string& source = "config.json");

// Reads `<dir>/config.json`. NOT_FOUND when the file is missing.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::filesystem::path& dir);

// The config as Hugging Face `config.json` text (the trainer and test fixtures write it).
std::string ModelConfigToJson(const ModelConfig& config);

}  // namespace ttt::engine
