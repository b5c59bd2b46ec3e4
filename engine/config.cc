// Parses and validates a Hugging Face `config.json` into ModelConfig, and writes it back.
// Validation is strict (exact JSON types, consistent shapes) so that a bad checkpoint fails at
// load time with a message saying which key to fix, not later with a shape error deep in torch.
#include "engine/config.h"

#include <algorithm>
#include <cerrno>
#include <fstream>
#include <sstream>
#include <system_error>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "util/status_macros.h"

namespace ttt::engine {
namespace {

using Json = nlohmann::json;

// Model families that share the Llama decoder (RMSNorm, RoPE, GQA, SwiGLU); qwen3 adds qk-norm.
constexpr const char* kSupportedModelTypes[] = {"llama", "qwen3", "qwen2", "mistral"};
// The paper's official code puts TTT in every sixth layer when `ttt_layers` is not given.
constexpr int64_t kDefaultTttLayerStride = 6;
constexpr double kDefaultTttLr = 0.3;
constexpr int64_t kDefaultTttChunk = 8192;

// Reads keys of one config object; every error is INVALID_ARGUMENT prefixed with the source.
class Reader {
 public:
  Reader(const Json& json, const std::string& source) : json_(json), source_(source) {}

  absl::Status Error(const std::string& what) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": ", what));
  }

  bool Has(const char* key) const {
    auto it = json_.find(key);
    return it != json_.end() && !it->is_null();
  }

  absl::Status RequiredInt(const char* key, int64_t* out) const {
    if (!Has(key)) return Error(absl::StrCat("missing required key \"", key, "\" (an integer)"));
    return Int(key, out);
  }

  // Leaves `*out` untouched when the key is absent or null.
  absl::Status Int(const char* key, int64_t* out) const {
    if (!Has(key)) return absl::OkStatus();
    const Json& v = json_.at(key);
    if (!v.is_number_integer()) {
      return Error(absl::StrCat("\"", key, "\" must be an integer, got ", v.dump()));
    }
    if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
      return Error(absl::StrCat("\"", key, "\" is out of range: ", v.dump()));
    }
    *out = v.get<int64_t>();
    return absl::OkStatus();
  }

  absl::Status Double(const char* key, double* out) const {
    if (!Has(key)) return absl::OkStatus();
    const Json& v = json_.at(key);
    if (!v.is_number())
      return Error(absl::StrCat("\"", key, "\" must be a number, got ", v.dump()));
    *out = v.get<double>();
    return absl::OkStatus();
  }

  absl::Status Bool(const char* key, bool* out) const {
    if (!Has(key)) return absl::OkStatus();
    const Json& v = json_.at(key);
    if (!v.is_boolean()) {
      return Error(absl::StrCat("\"", key, "\" must be true or false, got ", v.dump()));
    }
    *out = v.get<bool>();
    return absl::OkStatus();
  }

  absl::Status String(const char* key, std::string* out) const {
    if (!Has(key)) return absl::OkStatus();
    const Json& v = json_.at(key);
    if (!v.is_string())
      return Error(absl::StrCat("\"", key, "\" must be a string, got ", v.dump()));
    *out = v.get<std::string>();
    return absl::OkStatus();
  }

  // A token id: an integer, a list of integers (the first is taken; HF lists several EOS ids),
  // or null / absent / [] (-1, no such token).
  absl::Status TokenId(const char* key, int64_t* out) const {
    *out = -1;
    if (!Has(key)) return absl::OkStatus();
    const Json& v = json_.at(key);
    const Json* id = &v;
    if (v.is_array()) {
      if (v.empty()) return absl::OkStatus();
      id = &v.front();
    }
    if (!id->is_number_integer()) {
      return Error(absl::StrCat(
          "\"", key, "\" must be a token id (an integer or a list of them), got ", v.dump()));
    }
    *out = id->get<int64_t>();
    return absl::OkStatus();
  }

  absl::Status IntList(const char* key, std::vector<int64_t>* out) const {
    if (!Has(key)) return absl::OkStatus();
    const Json& v = json_.at(key);
    if (!v.is_array()) {
      return Error(absl::StrCat("\"", key, "\" must be a list of integers, got ", v.dump()));
    }
    out->clear();
    for (const Json& e : v) {
      if (!e.is_number_integer()) {
        return Error(absl::StrCat("\"", key, "\" must be a list of integers, found ", e.dump()));
      }
      out->push_back(e.get<int64_t>());
    }
    return absl::OkStatus();
  }

 private:
  const Json& json_;
  const std::string& source_;
};

absl::Status Positive(const Reader& r, const char* key, int64_t value) {
  if (value <= 0) return r.Error(absl::StrCat("\"", key, "\" must be positive, got ", value));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<TttDeltaDtype> ParseTttDeltaDtype(const std::string& value, const std::string& key) {
  if (value == "float32") return TttDeltaDtype::kFloat32;
  if (value == "bfloat16") return TttDeltaDtype::kBFloat16;
  return absl::InvalidArgumentError(absl::StrCat(key, " \"", value,
                                                 "\" is not a delta dtype; use \"float32\" (the "
                                                 "default) or \"bfloat16\""));
}

bool ModelConfig::IsTttLayer(int64_t layer) const {
  return ttt_mode && std::binary_search(ttt_layers.begin(), ttt_layers.end(), layer);
}

absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text,
                                             const std::string& source) {
  // No exceptions from the parser; accessors below only run after their type is checked.
  const Json json = Json::parse(json_text, /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not valid JSON"));
  }
  if (!json.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": expected a JSON object at the top level, got ", json.type_name()));
  }
  const Reader r(json, source);
  ModelConfig c;

  if (!r.Has("model_type")) {
    return r.Error("missing required key \"model_type\" (one of llama, qwen3, qwen2, mistral)");
  }
  RETURN_IF_ERROR(r.String("model_type", &c.model_type));
  if (std::find(std::begin(kSupportedModelTypes), std::end(kSupportedModelTypes), c.model_type) ==
      std::end(kSupportedModelTypes)) {
    return r.Error(absl::StrCat("unsupported \"model_type\" \"", c.model_type,
                                "\"; supported: ", absl::StrJoin(kSupportedModelTypes, ", ")));
  }
  c.qk_norm = c.model_type == "qwen3";

  // Shapes.
  RETURN_IF_ERROR(r.RequiredInt("vocab_size", &c.vocab_size));
  RETURN_IF_ERROR(r.RequiredInt("hidden_size", &c.hidden_size));
  RETURN_IF_ERROR(r.RequiredInt("intermediate_size", &c.intermediate_size));
  RETURN_IF_ERROR(r.RequiredInt("num_hidden_layers", &c.num_hidden_layers));
  RETURN_IF_ERROR(r.RequiredInt("num_attention_heads", &c.num_attention_heads));
  RETURN_IF_ERROR(Positive(r, "vocab_size", c.vocab_size));
  RETURN_IF_ERROR(Positive(r, "hidden_size", c.hidden_size));
  RETURN_IF_ERROR(Positive(r, "intermediate_size", c.intermediate_size));
  RETURN_IF_ERROR(Positive(r, "num_hidden_layers", c.num_hidden_layers));
  RETURN_IF_ERROR(Positive(r, "num_attention_heads", c.num_attention_heads));

  c.num_key_value_heads = c.num_attention_heads;
  RETURN_IF_ERROR(r.Int("num_key_value_heads", &c.num_key_value_heads));
  RETURN_IF_ERROR(Positive(r, "num_key_value_heads", c.num_key_value_heads));
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return r.Error(absl::StrCat("\"num_attention_heads\" (", c.num_attention_heads,
                                ") must be a multiple of \"num_key_value_heads\" (",
                                c.num_key_value_heads, ")"));
  }

  if (r.Has("head_dim")) {
    RETURN_IF_ERROR(r.Int("head_dim", &c.head_dim));
    RETURN_IF_ERROR(Positive(r, "head_dim", c.head_dim));
  } else {
    if (c.hidden_size % c.num_attention_heads != 0) {
      return r.Error(absl::StrCat("\"hidden_size\" (", c.hidden_size,
                                  ") is not divisible by \"num_attention_heads\" (",
                                  c.num_attention_heads, "); fix one or give \"head_dim\""));
    }
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  // RoPE rotates pairs of channels.
  if (c.head_dim % 2 != 0) {
    return r.Error(absl::StrCat("head dimension ", c.head_dim, " must be even for RoPE"));
  }

  // Numerics.
  RETURN_IF_ERROR(r.Double("rope_theta", &c.rope_theta));
  if (!(c.rope_theta > 0)) {
    return r.Error(absl::StrCat("\"rope_theta\" must be positive, got ", c.rope_theta));
  }
  RETURN_IF_ERROR(r.Double("rms_norm_eps", &c.rms_norm_eps));
  if (!(c.rms_norm_eps > 0)) {
    return r.Error(absl::StrCat("\"rms_norm_eps\" must be positive, got ", c.rms_norm_eps));
  }
  // Serving a scaled-RoPE or non-SiLU model as if it were plain would be silently wrong.
  if (r.Has("rope_scaling")) {
    const Json& s = json.at("rope_scaling");
    std::string type = "?";
    if (s.is_object()) {
      for (const char* k : {"rope_type", "type"}) {
        auto it = s.find(k);
        if (it != s.end() && it->is_string()) type = it->get<std::string>();
      }
    }
    if (type != "default") {
      return absl::UnimplementedError(absl::StrCat(source, ": \"rope_scaling\" of type \"", type,
                                                   "\" is not supported; remove it or set null"));
    }
  }
  if (r.Has("hidden_act")) {
    std::string act;
    RETURN_IF_ERROR(r.String("hidden_act", &act));
    if (act != "silu") {
      return absl::UnimplementedError(absl::StrCat(source, ": \"hidden_act\" \"", act,
                                                   "\" is not supported; only \"silu\" (SwiGLU)"));
    }
  }
  RETURN_IF_ERROR(r.Bool("tie_word_embeddings", &c.tie_word_embeddings));
  RETURN_IF_ERROR(r.Bool("attention_bias", &c.attention_bias));
  RETURN_IF_ERROR(r.TokenId("bos_token_id", &c.bos_token_id));
  RETURN_IF_ERROR(r.TokenId("eos_token_id", &c.eos_token_id));

  // Sliding window. Qwen configs carry a `sliding_window` value even when it is off: the switch
  // is `use_sliding_window` (default false, as in transformers). Llama/Mistral: a positive
  // `sliding_window` turns it on; 0 or null means full attention.
  bool use_window = !(c.model_type == "qwen3" || c.model_type == "qwen2");
  RETURN_IF_ERROR(r.Bool("use_sliding_window", &use_window));
  if (r.Has("sliding_window")) {
    int64_t window = 0;
    RETURN_IF_ERROR(r.Int("sliding_window", &window));
    if (window < 0) {
      return r.Error(
          absl::StrCat("\"sliding_window\" must be positive (or null for full attention), "
                       "got ",
                       window));
    }
    if (use_window && window > 0) c.sliding_window = window;
  }

  // In-Place TTT. Without ttt_mode the TTT keys are inert: no layer runs TTT and eta is 0.
  RETURN_IF_ERROR(r.Bool("ttt_mode", &c.ttt_mode));
  if (c.ttt_mode) {
    c.ttt_lr = kDefaultTttLr;
    c.ttt_chunk = kDefaultTttChunk;
    for (int64_t i = 0; i < c.num_hidden_layers; i += kDefaultTttLayerStride) {
      c.ttt_layers.push_back(i);
    }
  }
  std::vector<int64_t> layers = c.ttt_layers;
  RETURN_IF_ERROR(r.IntList("ttt_layers", &layers));
  RETURN_IF_ERROR(r.Double("ttt_lr", &c.ttt_lr));
  RETURN_IF_ERROR(r.Int("ttt_chunk", &c.ttt_chunk));
  RETURN_IF_ERROR(r.Bool("ttt_proj", &c.ttt_proj));
  RETURN_IF_ERROR(r.Double("ttt_clip", &c.ttt_clip));
  RETURN_IF_ERROR(r.Double("ttt_delta_cap", &c.ttt_delta_cap));
  if (r.Has("ttt_delta_dtype")) {
    std::string delta_dtype;
    RETURN_IF_ERROR(r.String("ttt_delta_dtype", &delta_dtype));
    auto parsed = ParseTttDeltaDtype(delta_dtype, "\"ttt_delta_dtype\"");
    if (!parsed.ok()) return r.Error(std::string(parsed.status().message()));
    c.ttt_delta_dtype = *parsed;
  }
  std::string target = "input_embed";
  RETURN_IF_ERROR(r.String("ttt_target", &target));
  if (target == "input_embed") {
    c.ttt_target = TttTarget::kInputEmbed;
  } else if (target == "hidden_states") {
    c.ttt_target = TttTarget::kHiddenStates;
  } else {
    return r.Error(absl::StrCat("unknown \"ttt_target\" \"", target,
                                "\"; use \"input_embed\" or \"hidden_states\""));
  }
  if (!(c.ttt_lr >= 0)) {
    return r.Error(absl::StrCat("\"ttt_lr\" must be >= 0, got ", c.ttt_lr));
  }
  if (!(c.ttt_clip >= 0)) {
    return r.Error(absl::StrCat("\"ttt_clip\" must be >= 0 (0 = no clipping), got ", c.ttt_clip));
  }
  if (!(c.ttt_delta_cap >= 0)) {
    return r.Error(
        absl::StrCat("\"ttt_delta_cap\" must be >= 0 (0 = no cap), got ", c.ttt_delta_cap));
  }
  if (c.ttt_mode) {
    if (c.ttt_chunk <= 0) {
      return r.Error(absl::StrCat("\"ttt_chunk\" must be positive when \"ttt_mode\" is true, got ",
                                  c.ttt_chunk));
    }
    std::sort(layers.begin(), layers.end());
    for (size_t i = 0; i < layers.size(); ++i) {
      if (layers[i] < 0 || layers[i] >= c.num_hidden_layers) {
        return r.Error(absl::StrCat("\"ttt_layers\" entry ", layers[i], " is out of range [0, ",
                                    c.num_hidden_layers, ")"));
      }
      if (i > 0 && layers[i] == layers[i - 1]) {
        return r.Error(absl::StrCat("\"ttt_layers\" lists layer ", layers[i], " twice"));
      }
    }
    c.ttt_layers = std::move(layers);
  } else {
    c.ttt_layers.clear();
  }
  return c;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::filesystem::path& dir) {
  const std::filesystem::path path = dir / "config.json";
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    return absl::NotFoundError(absl::StrCat("no config.json in ", dir.string()));
  }
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  if (!in || !text) {
    return absl::ErrnoToStatus(errno, absl::StrCat("reading ", path.string()));
  }
  return ParseModelConfig(text.str(), path.string());
}

std::string ModelConfigToJson(const ModelConfig& c) {
  nlohmann::ordered_json j;
  j["model_type"] = c.model_type;
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["head_dim"] = c.head_dim;
  j["hidden_act"] = "silu";
  j["rope_theta"] = c.rope_theta;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["attention_bias"] = c.attention_bias;
  // Written for every family so the file reads back the same under either window convention.
  j["use_sliding_window"] = c.sliding_window.has_value();
  if (c.sliding_window) {
    j["sliding_window"] = *c.sliding_window;
  } else {
    j["sliding_window"] = nullptr;
  }
  if (c.bos_token_id >= 0) {
    j["bos_token_id"] = c.bos_token_id;
  } else {
    j["bos_token_id"] = nullptr;
  }
  if (c.eos_token_id >= 0) {
    j["eos_token_id"] = c.eos_token_id;
  } else {
    j["eos_token_id"] = nullptr;
  }
  j["ttt_mode"] = c.ttt_mode;
  j["ttt_layers"] = c.ttt_layers;
  j["ttt_lr"] = c.ttt_lr;
  j["ttt_chunk"] = c.ttt_chunk;
  j["ttt_target"] = c.ttt_target == TttTarget::kHiddenStates ? "hidden_states" : "input_embed";
  j["ttt_proj"] = c.ttt_proj;
  j["ttt_clip"] = c.ttt_clip;
  // Written only when set, so that configs without it keep their text (and fingerprints).
  if (c.ttt_delta_cap > 0) j["ttt_delta_cap"] = c.ttt_delta_cap;
  if (c.ttt_delta_dtype == TttDeltaDtype::kBFloat16) j["ttt_delta_dtype"] = "bfloat16";
  return j.dump(2) + "\n";
}

}  // namespace ttt::engine
