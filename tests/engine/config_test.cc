// Tests of engine/config: parsing Hugging Face config.json (defaults, Qwen3 specifics, TTT keys),
// every validation error with its code and message, the JSON round trip, and LoadModelConfig.
#include "engine/config.h"

#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace ttt::engine {
namespace {

using ::testing::HasSubstr;
using Json = nlohmann::json;

// A minimal valid Llama config, as a JSON object tests can edit.
Json Llama() {
  return Json{{"model_type", "llama"},    {"vocab_size", 256},       {"hidden_size", 64},
              {"intermediate_size", 128}, {"num_hidden_layers", 12}, {"num_attention_heads", 4}};
}

absl::StatusOr<ModelConfig> Parse(const Json& j, const std::string& source = "m/config.json") {
  return ParseModelConfig(j.dump(), source);
}

// Expects INVALID_ARGUMENT whose message names the source and contains `fragment`.
void ExpectInvalid(const Json& j, const std::string& fragment) {
  auto c = Parse(j);
  ASSERT_FALSE(c.ok()) << j.dump();
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << c.status();
  EXPECT_THAT(c.status().message(), HasSubstr("m/config.json")) << c.status();
  EXPECT_THAT(c.status().message(), HasSubstr(fragment)) << c.status();
}

TEST(ConfigTest, ParsesLlamaWithDefaults) {
  auto c = Parse(Llama());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->model_type, "llama");
  EXPECT_EQ(c->vocab_size, 256);
  EXPECT_EQ(c->hidden_size, 64);
  EXPECT_EQ(c->intermediate_size, 128);
  EXPECT_EQ(c->num_hidden_layers, 12);
  EXPECT_EQ(c->num_attention_heads, 4);
  EXPECT_EQ(c->num_key_value_heads, 4);
  EXPECT_EQ(c->head_dim, 16);
  EXPECT_DOUBLE_EQ(c->rope_theta, 10000.0);
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-6);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_FALSE(c->attention_bias);
  EXPECT_FALSE(c->qk_norm);
  EXPECT_FALSE(c->sliding_window.has_value());
  EXPECT_EQ(c->bos_token_id, -1);
  EXPECT_EQ(c->eos_token_id, -1);
  EXPECT_FALSE(c->ttt_mode);
  EXPECT_TRUE(c->ttt_layers.empty());
  EXPECT_DOUBLE_EQ(c->ttt_lr, 0.0);
  EXPECT_FALSE(c->IsTttLayer(0));
}

TEST(ConfigTest, ParsesQwen3Specifics) {
  // Shaped like Qwen3-0.6B's config.json: explicit head_dim != hidden/heads, a sliding_window
  // value that is switched off, and extra keys we ignore.
  Json j = {{"architectures", {"Qwen3ForCausalLM"}},
            {"model_type", "qwen3"},
            {"vocab_size", 151936},
            {"hidden_size", 1024},
            {"intermediate_size", 3072},
            {"num_hidden_layers", 28},
            {"num_attention_heads", 16},
            {"num_key_value_heads", 8},
            {"head_dim", 128},
            {"hidden_act", "silu"},
            {"max_position_embeddings", 40960},
            {"rope_theta", 1000000},
            {"rope_scaling", nullptr},
            {"rms_norm_eps", 1e-6},
            {"tie_word_embeddings", true},
            {"attention_bias", false},
            {"use_sliding_window", false},
            {"sliding_window", nullptr},
            {"max_window_layers", 28},
            {"bos_token_id", 151643},
            {"eos_token_id", 151645},
            {"torch_dtype", "bfloat16"}};
  auto c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->qk_norm);
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_EQ(c->num_key_value_heads, 8);
  EXPECT_DOUBLE_EQ(c->rope_theta, 1e6);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_FALSE(c->sliding_window.has_value());
  EXPECT_EQ(c->bos_token_id, 151643);
  EXPECT_EQ(c->eos_token_id, 151645);

  // Qwen keeps a window value around while use_sliding_window is false (or absent).
  j["sliding_window"] = 4096;
  c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->sliding_window.has_value());
  j.erase("use_sliding_window");
  c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->sliding_window.has_value());
  j["use_sliding_window"] = true;
  c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->sliding_window, 4096);
}

TEST(ConfigTest, LlamaPositiveSlidingWindowMeansWindowed) {
  Json j = Llama();
  j["sliding_window"] = 32;
  auto c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->sliding_window, 32);
  j["sliding_window"] = nullptr;
  c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->sliding_window.has_value());
  j["sliding_window"] = -1;
  ExpectInvalid(j, "sliding_window");
}

TEST(ConfigTest, AcceptsOtherLlamaLikeFamilies) {
  for (const char* type : {"qwen2", "mistral"}) {
    Json j = Llama();
    j["model_type"] = type;
    auto c = Parse(j);
    ASSERT_TRUE(c.ok()) << type << ": " << c.status();
    EXPECT_FALSE(c->qk_norm) << type;
  }
}

TEST(ConfigTest, TokenIdsMayBeListsOrNull) {
  Json j = Llama();
  j["bos_token_id"] = nullptr;
  j["eos_token_id"] = {7, 9};
  auto c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->bos_token_id, -1);
  EXPECT_EQ(c->eos_token_id, 7);
  j["eos_token_id"] = Json::array();
  c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->eos_token_id, -1);
  j["eos_token_id"] = "</s>";
  ExpectInvalid(j, "eos_token_id");
}

TEST(ConfigTest, TttDefaultsFollowTheOfficialCode) {
  Json j = Llama();
  j["ttt_mode"] = true;
  auto c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->ttt_mode);
  EXPECT_DOUBLE_EQ(c->ttt_lr, 0.3);
  EXPECT_EQ(c->ttt_chunk, 8192);
  EXPECT_EQ(c->ttt_target, TttTarget::kInputEmbed);
  EXPECT_TRUE(c->ttt_proj);
  EXPECT_DOUBLE_EQ(c->ttt_clip, 0.0);
  EXPECT_DOUBLE_EQ(c->ttt_delta_cap, 0.0);
  EXPECT_EQ(c->ttt_layers, (std::vector<int64_t>{0, 6}));  // every sixth of 12 layers
}

TEST(ConfigTest, TttLayersAreSortedAndQueried) {
  Json j = Llama();
  j["ttt_mode"] = true;
  j["ttt_layers"] = {11, 3, 0};
  j["ttt_lr"] = 1.0;
  j["ttt_chunk"] = 32;
  j["ttt_target"] = "hidden_states";
  j["ttt_proj"] = false;
  j["ttt_clip"] = 5.0;
  j["ttt_delta_cap"] = 30.0;
  auto c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->ttt_layers, (std::vector<int64_t>{0, 3, 11}));
  EXPECT_TRUE(c->IsTttLayer(0));
  EXPECT_TRUE(c->IsTttLayer(3));
  EXPECT_TRUE(c->IsTttLayer(11));
  EXPECT_FALSE(c->IsTttLayer(1));
  EXPECT_FALSE(c->IsTttLayer(12));
  EXPECT_DOUBLE_EQ(c->ttt_lr, 1.0);
  EXPECT_EQ(c->ttt_chunk, 32);
  EXPECT_EQ(c->ttt_target, TttTarget::kHiddenStates);
  EXPECT_FALSE(c->ttt_proj);
  EXPECT_DOUBLE_EQ(c->ttt_clip, 5.0);
  EXPECT_DOUBLE_EQ(c->ttt_delta_cap, 30.0);
}

TEST(ConfigTest, TttKeysAreInertWithoutTttMode) {
  Json j = Llama();
  j["ttt_mode"] = false;
  j["ttt_layers"] = {0, 6};
  auto c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->ttt_layers.empty());
  EXPECT_FALSE(c->IsTttLayer(0));
}

TEST(ConfigTest, RoundTripsThroughJson) {
  ModelConfig c;
  c.model_type = "qwen3";
  c.vocab_size = 1000;
  c.hidden_size = 96;
  c.intermediate_size = 256;
  c.num_hidden_layers = 7;
  c.num_attention_heads = 6;
  c.num_key_value_heads = 2;
  c.head_dim = 32;
  c.rope_theta = 123456.5;
  c.rms_norm_eps = 1e-5;
  c.tie_word_embeddings = true;
  c.qk_norm = true;
  c.attention_bias = true;
  c.sliding_window = 64;
  c.bos_token_id = 1;
  c.eos_token_id = 2;
  c.ttt_mode = true;
  c.ttt_layers = {0, 3, 6};
  c.ttt_lr = 0.125;
  c.ttt_chunk = 48;
  c.ttt_target = TttTarget::kHiddenStates;
  c.ttt_proj = false;
  c.ttt_clip = 2.5;

  auto back = ParseModelConfig(ModelConfigToJson(c));
  ASSERT_TRUE(back.ok()) << back.status() << "\n" << ModelConfigToJson(c);
  EXPECT_EQ(back->model_type, c.model_type);
  EXPECT_EQ(back->vocab_size, c.vocab_size);
  EXPECT_EQ(back->hidden_size, c.hidden_size);
  EXPECT_EQ(back->intermediate_size, c.intermediate_size);
  EXPECT_EQ(back->num_hidden_layers, c.num_hidden_layers);
  EXPECT_EQ(back->num_attention_heads, c.num_attention_heads);
  EXPECT_EQ(back->num_key_value_heads, c.num_key_value_heads);
  EXPECT_EQ(back->head_dim, c.head_dim);
  EXPECT_EQ(back->rope_theta, c.rope_theta);
  EXPECT_EQ(back->rms_norm_eps, c.rms_norm_eps);
  EXPECT_EQ(back->tie_word_embeddings, c.tie_word_embeddings);
  EXPECT_EQ(back->qk_norm, c.qk_norm);
  EXPECT_EQ(back->attention_bias, c.attention_bias);
  EXPECT_EQ(back->sliding_window, c.sliding_window);
  EXPECT_EQ(back->bos_token_id, c.bos_token_id);
  EXPECT_EQ(back->eos_token_id, c.eos_token_id);
  EXPECT_EQ(back->ttt_mode, c.ttt_mode);
  EXPECT_EQ(back->ttt_layers, c.ttt_layers);
  EXPECT_EQ(back->ttt_lr, c.ttt_lr);
  EXPECT_EQ(back->ttt_chunk, c.ttt_chunk);
  EXPECT_EQ(back->ttt_target, c.ttt_target);
  EXPECT_EQ(back->ttt_proj, c.ttt_proj);
  EXPECT_EQ(back->ttt_clip, c.ttt_clip);
  EXPECT_EQ(back->ttt_delta_cap, 0.0);
  EXPECT_EQ(ModelConfigToJson(c).find("ttt_delta_cap"), std::string::npos)
      << "unset, the key is not written (older configs keep their text and fingerprints)";
  c.ttt_delta_cap = 12.5;
  back = ParseModelConfig(ModelConfigToJson(c));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->ttt_delta_cap, 12.5);

  // And the plain defaults (no window, no token ids, no TTT) come back as they were.
  auto plain = Parse(Llama());
  ASSERT_TRUE(plain.ok());
  auto again = ParseModelConfig(ModelConfigToJson(*plain));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(ModelConfigToJson(*again), ModelConfigToJson(*plain));
  EXPECT_FALSE(again->sliding_window.has_value());
  EXPECT_EQ(again->eos_token_id, -1);
}

TEST(ConfigTest, RejectsMalformedJson) {
  auto c = ParseModelConfig("{\"model_type\": \"llama\",", "bad/config.json");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("bad/config.json"));
  EXPECT_THAT(c.status().message(), HasSubstr("not valid JSON"));

  c = ParseModelConfig("[1, 2]", "bad/config.json");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr("JSON object"));
}

TEST(ConfigTest, RejectsMissingRequiredKeys) {
  for (const char* key : {"model_type", "vocab_size", "hidden_size", "intermediate_size",
                          "num_hidden_layers", "num_attention_heads"}) {
    Json j = Llama();
    j.erase(key);
    ExpectInvalid(j, absl::StrCat("missing required key \"", key, "\""));
  }
}

TEST(ConfigTest, RejectsWrongTypes) {
  Json j = Llama();
  j["hidden_size"] = "64";
  ExpectInvalid(j, "\"hidden_size\" must be an integer");
  j = Llama();
  j["hidden_size"] = 64.5;
  ExpectInvalid(j, "\"hidden_size\" must be an integer");
  j = Llama();
  j["tie_word_embeddings"] = 1;
  ExpectInvalid(j, "\"tie_word_embeddings\" must be true or false");
  j = Llama();
  j["rope_theta"] = "big";
  ExpectInvalid(j, "\"rope_theta\" must be a number");
  j = Llama();
  j["ttt_mode"] = true;
  j["ttt_layers"] = {0, "6"};
  ExpectInvalid(j, "\"ttt_layers\" must be a list of integers");
}

TEST(ConfigTest, RejectsNonPositiveSizes) {
  for (const char* key : {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                          "num_attention_heads", "num_key_value_heads", "head_dim"}) {
    Json j = Llama();
    j[key] = 0;
    ExpectInvalid(j, absl::StrCat("\"", key, "\" must be positive"));
  }
  Json j = Llama();
  j["rms_norm_eps"] = 0;
  ExpectInvalid(j, "rms_norm_eps");
}

TEST(ConfigTest, RejectsHeadsNotDividingHiddenSize) {
  Json j = Llama();
  j["num_attention_heads"] = 5;
  ExpectInvalid(j, "\"hidden_size\" (64) is not divisible by \"num_attention_heads\" (5)");
  // An explicit head_dim makes the division unnecessary.
  j["head_dim"] = 16;
  EXPECT_TRUE(Parse(j).ok());
}

TEST(ConfigTest, RejectsKvHeadsNotDividingHeads) {
  Json j = Llama();
  j["num_key_value_heads"] = 3;
  ExpectInvalid(j, "must be a multiple of \"num_key_value_heads\" (3)");
}

TEST(ConfigTest, RejectsOddHeadDim) {
  Json j = Llama();
  j["head_dim"] = 15;
  ExpectInvalid(j, "must be even");
}

TEST(ConfigTest, RejectsUnsupportedModelType) {
  Json j = Llama();
  j["model_type"] = "gpt2";
  ExpectInvalid(j, "unsupported \"model_type\" \"gpt2\"");
}

TEST(ConfigTest, RejectsUnsupportedRopeScalingAndActivation) {
  Json j = Llama();
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}};
  auto c = Parse(j);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(c.status().message(), HasSubstr("llama3"));
  j["rope_scaling"] = {{"rope_type", "default"}};
  EXPECT_TRUE(Parse(j).ok());

  j = Llama();
  j["hidden_act"] = "gelu";
  c = Parse(j);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(c.status().message(), HasSubstr("gelu"));
}

TEST(ConfigTest, RejectsBadTttSettings) {
  Json base = Llama();
  base["ttt_mode"] = true;

  Json j = base;
  j["ttt_layers"] = {0, 12};
  ExpectInvalid(j, "\"ttt_layers\" entry 12 is out of range [0, 12)");
  j["ttt_layers"] = {-1};
  ExpectInvalid(j, "\"ttt_layers\" entry -1 is out of range");
  j["ttt_layers"] = {6, 0, 6};
  ExpectInvalid(j, "lists layer 6 twice");

  j = base;
  j["ttt_chunk"] = 0;
  ExpectInvalid(j, "\"ttt_chunk\" must be positive");
  j = base;
  j["ttt_target"] = "logits";
  ExpectInvalid(j, "unknown \"ttt_target\" \"logits\"");
  j = base;
  j["ttt_lr"] = -0.1;
  ExpectInvalid(j, "\"ttt_lr\" must be >= 0");
  j = base;
  j["ttt_clip"] = -1;
  ExpectInvalid(j, "\"ttt_clip\" must be >= 0");
  j = base;
  j["ttt_delta_cap"] = -1;
  ExpectInvalid(j, "\"ttt_delta_cap\" must be >= 0");
}

// A fresh directory under the system temp dir, removed at the end of the test.
class LoadModelConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static std::atomic<int> counter{0};
    dir_ = std::filesystem::temp_directory_path() /
           absl::StrCat("ttt_config_test_", ::getpid(), "_", counter++, "_",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  void Write(const std::string& text) { std::ofstream(dir_ / "config.json") << text; }

  std::filesystem::path dir_;
};

TEST_F(LoadModelConfigTest, ReadsConfigJson) {
  Write(Llama().dump(2));
  auto c = LoadModelConfig(dir_);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->hidden_size, 64);
}

TEST_F(LoadModelConfigTest, NotFoundWhenMissing) {
  auto c = LoadModelConfig(dir_);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(c.status().message(), HasSubstr(dir_.string()));
  c = LoadModelConfig(dir_ / "nope");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
}

TEST_F(LoadModelConfigTest, ErrorsNameTheFile) {
  Json j = Llama();
  j.erase("vocab_size");
  Write(j.dump());
  auto c = LoadModelConfig(dir_);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(c.status().message(), HasSubstr((dir_ / "config.json").string()));
  EXPECT_THAT(c.status().message(), HasSubstr("vocab_size"));
}

}  // namespace
}  // namespace ttt::engine
