// OpenAI completions <-> tttserve.v1 Generate (see openai.h).
#include "http/internal/openai.h"

#include <limits>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "util/error_reason.h"

namespace ttt::http::internal {
namespace {

namespace pb = tttserve::v1;
using Json = nlohmann::json;

absl::Status Bad(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("`", field, "` ", what));
}

// The field, or nullptr when it is absent or null (OpenAI clients send null for "default").
const Json* Field(const Json& body, const char* name) {
  auto it = body.find(name);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

absl::Status ReadBool(const Json& body, const char* name, bool* out) {
  const Json* v = Field(body, name);
  if (v == nullptr) return absl::OkStatus();
  if (!v->is_boolean()) return Bad(name, "must be true or false");
  *out = v->get<bool>();
  return absl::OkStatus();
}

absl::StatusOr<std::optional<int64_t>> ReadInt(const Json& body, const char* name) {
  const Json* v = Field(body, name);
  if (v == nullptr) return std::optional<int64_t>();
  if (v->is_number_unsigned() &&
      v->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return Bad(name, "is too large");
  }
  if (!v->is_number_integer()) return Bad(name, "must be an integer");
  return std::optional<int64_t>(v->get<int64_t>());
}

absl::Status ReadPrompt(const Json& body, pb::GenerateRequest* out) {
  const Json* prompt = Field(body, "prompt");
  if (prompt == nullptr) return absl::OkStatus();  // generate from the session as it is
  // OpenAI's batch forms with one element are one prompt; several are several requests.
  if (prompt->is_array() && prompt->size() == 1 && !(*prompt)[0].is_number()) {
    prompt = &(*prompt)[0];
  }
  if (prompt->is_string()) {
    out->set_prompt_text(prompt->get<std::string>());
    return absl::OkStatus();
  }
  if (!prompt->is_array()) {
    return Bad("prompt", "must be a string or an array of token ids");
  }
  for (const Json& id : *prompt) {
    if (id.is_string() || id.is_array()) {
      return Bad("prompt", "holds several prompts: send one prompt per request");
    }
    if (!id.is_number_integer() || id.get<int64_t>() < std::numeric_limits<int32_t>::min() ||
        id.get<int64_t>() > std::numeric_limits<int32_t>::max()) {
      return Bad("prompt", "must be a string or an array of integer token ids");
    }
    out->add_prompt_token_ids(static_cast<int32_t>(id.get<int64_t>()));
  }
  return absl::OkStatus();
}

absl::Status ReadSampling(const Json& body, CompletionCall* call) {
  pb::GenerateRequest& g = call->generate;
  auto max_tokens = ReadInt(body, "max_tokens");
  if (!max_tokens.ok()) return max_tokens.status();
  const int64_t max = max_tokens->value_or(kDefaultMaxTokens);
  // The gRPC API reads 0 as "64"; in OpenAI's protocol it has no such meaning.
  if (max < 1 || max > std::numeric_limits<int32_t>::max()) {
    return Bad("max_tokens",
               "must be >= 1 (and at most the max_generate_tokens that GET "
               "/v1/models lists)");
  }
  g.set_max_tokens(static_cast<int32_t>(max));
  for (const char* name : {"temperature", "top_p"}) {
    const Json* v = Field(body, name);
    if (v == nullptr) continue;
    if (!v->is_number()) return Bad(name, "must be a number");
    if (name[0] == 't' && name[1] == 'e') {
      g.set_temperature(v->get<double>());
    } else {
      g.set_top_p(v->get<double>());
    }
  }
  auto top_k = ReadInt(body, "top_k");  // extension (as vLLM has it)
  if (!top_k.ok()) return top_k.status();
  if (top_k->has_value()) {
    if (**top_k < 0 || **top_k > std::numeric_limits<int32_t>::max()) {
      return Bad("top_k", "must be a non-negative integer (0: all tokens)");
    }
    g.set_top_k(static_cast<int32_t>(**top_k));
  }
  auto seed = ReadInt(body, "seed");
  if (!seed.ok()) return seed.status();
  if (seed->has_value()) {
    if (**seed < 0) return Bad("seed", "must be a non-negative integer");
    g.set_seed(static_cast<uint64_t>(**seed));
  }
  if (const Json* stop = Field(body, "stop")) {
    if (stop->is_string()) {
      g.add_stop(stop->get<std::string>());
    } else if (stop->is_array()) {
      for (const Json& s : *stop) {
        if (!s.is_string()) return Bad("stop", "must be a string or an array of strings");
        g.add_stop(s.get<std::string>());
      }
    } else {
      return Bad("stop", "must be a string or an array of strings");
    }
  }
  bool ignore_eos = false;  // extension (as vLLM has it)
  absl::Status st = ReadBool(body, "ignore_eos", &ignore_eos);
  if (!st.ok()) return st;
  g.set_ignore_eos(ignore_eos);
  auto logprobs = ReadInt(body, "logprobs");
  if (!logprobs.ok()) return logprobs.status();
  if (logprobs->has_value()) {
    if (**logprobs < 0 || **logprobs > 1) {
      return Bad("logprobs",
                 "may be 0 or 1: this server returns the sampled token's "
                 "log-probability only, not the top alternatives");
    }
    call->logprobs = true;
  }
  return absl::OkStatus();
}

// OpenAI options that the API has no field for are refused unless they ask for the default.
absl::Status RefuseUnsupported(const Json& body) {
  for (const char* name : {"n", "best_of"}) {
    auto v = ReadInt(body, name);
    if (!v.ok()) return v.status();
    if (v->has_value() && **v != 1) return Bad(name, "must be 1: one completion per request");
  }
  bool echo = false;
  absl::Status st = ReadBool(body, "echo", &echo);
  if (!st.ok()) return st;
  if (echo) return Bad("echo", "is not supported (the prompt is not returned)");
  if (const Json* suffix = Field(body, "suffix")) {
    if (!suffix->is_string() || !suffix->get<std::string>().empty()) {
      return Bad("suffix", "is not supported");
    }
  }
  for (const char* name : {"presence_penalty", "frequency_penalty"}) {
    const Json* v = Field(body, name);
    if (v != nullptr && (!v->is_number() || v->get<double>() != 0.0)) {
      return Bad(name, "is not supported (only 0)");
    }
  }
  if (const Json* bias = Field(body, "logit_bias")) {
    if (!bias->is_object() || !bias->empty()) return Bad("logit_bias", "is not supported");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<CompletionCall> ParseCompletion(std::string_view body,
                                               const std::string& served_model) {
  const Json j = Json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    return absl::InvalidArgumentError(
        "the request body is not valid JSON: send one JSON object (Content-Type: "
        "application/json)");
  }
  if (!j.is_object()) return absl::InvalidArgumentError("the request body must be a JSON object");
  if (const Json* model = Field(j, "model")) {
    if (!model->is_string()) return Bad("model", "must be a string");
    if (model->get<std::string>() != served_model) {
      return absl::NotFoundError(absl::StrCat("model '", model->get<std::string>(),
                                              "' is not served here; GET /v1/models lists '",
                                              served_model, "'"));
    }
  }
  CompletionCall call;
  absl::Status st = RefuseUnsupported(j);
  if (st.ok()) st = ReadPrompt(j, &call.generate);
  if (st.ok()) st = ReadSampling(j, &call);
  if (st.ok()) st = ReadBool(j, "stream", &call.stream);
  if (st.ok()) st = ReadBool(j, "commit_prompt", &call.commit_prompt);
  if (!st.ok()) return st;
  if (const Json* options = Field(j, "stream_options")) {
    if (!options->is_object()) return Bad("stream_options", "must be an object");
    st = ReadBool(*options, "include_usage", &call.include_usage);
    if (!st.ok()) return st;
  }
  if (const Json* session = Field(j, "session_id")) {
    if (!session->is_string()) return Bad("session_id", "must be a string");
    call.session_id = session->get<std::string>();
  }
  return call;
}

CompletionBuilder::CompletionBuilder(std::string id, int64_t created, std::string model,
                                     bool logprobs)
    : id_(std::move(id)), created_(created), model_(std::move(model)), logprobs_(logprobs) {}

std::optional<Json> CompletionBuilder::Add(const pb::GenerateResponse& response) {
  const size_t from = token_texts_.size();
  const bool token = response.has_token_id();
  if (token) {
    text_offsets_.push_back(text_.size());
    token_texts_.push_back(response.text());
    token_logprobs_.push_back(response.logprob());
  }
  text_ += response.text();
  const bool last = response.finish_reason() != pb::FINISH_REASON_UNSPECIFIED;
  if (last) {
    finish_reason_ = response.finish_reason() == pb::FINISH_REASON_LENGTH ? "length" : "stop";
    completion_tokens_ = response.tokens_generated();
  }
  if (response.text().empty() && !last && !(logprobs_ && token)) return std::nullopt;
  Json choice = {{"index", 0},
                 {"text", response.text()},
                 {"logprobs", logprobs_ && token ? Logprobs(from) : Json(nullptr)},
                 {"finish_reason", last ? Json(*finish_reason_) : Json(nullptr)}};
  Json chunk = Head("text_completion");
  chunk["choices"] = Json::array({std::move(choice)});
  return chunk;
}

Json CompletionBuilder::Completion(int64_t prompt_tokens) const {
  Json choice = {{"index", 0},
                 {"text", text_},
                 {"logprobs", logprobs_ ? Logprobs(0) : Json(nullptr)},
                 {"finish_reason", finish_reason_ ? Json(*finish_reason_) : Json(nullptr)}};
  Json completion = Head("text_completion");
  completion["choices"] = Json::array({std::move(choice)});
  completion["usage"] = Usage(prompt_tokens);
  return completion;
}

Json CompletionBuilder::UsageChunk(int64_t prompt_tokens) const {
  Json chunk = Head("text_completion");
  chunk["choices"] = Json::array();
  chunk["usage"] = Usage(prompt_tokens);
  return chunk;
}

Json CompletionBuilder::Head(const char* object) const {
  return {{"id", id_}, {"object", object}, {"created", created_}, {"model", model_}};
}

Json CompletionBuilder::Usage(int64_t prompt_tokens) const {
  return {{"prompt_tokens", prompt_tokens},
          {"completion_tokens", completion_tokens_},
          {"total_tokens", prompt_tokens + completion_tokens_}};
}

Json CompletionBuilder::Logprobs(size_t from) const {
  Json tokens = Json::array(), logprobs = Json::array(), offsets = Json::array();
  for (size_t i = from; i < token_texts_.size(); ++i) {
    tokens.push_back(token_texts_[i]);
    logprobs.push_back(token_logprobs_[i]);
    offsets.push_back(text_offsets_[i]);
  }
  return {{"tokens", std::move(tokens)},
          {"token_logprobs", std::move(logprobs)},
          {"top_logprobs", nullptr},
          {"text_offset", std::move(offsets)}};
}

std::string NewCompletionId() {
  thread_local std::mt19937_64 random(std::random_device{}());
  return absl::StrFormat("cmpl-%016x%08x", random(), static_cast<uint32_t>(random()));
}

int HttpStatusOf(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return 200;
    case grpc::StatusCode::CANCELLED:
      return 499;
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::FAILED_PRECONDITION:
    case grpc::StatusCode::OUT_OF_RANGE:
      return 400;
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return 504;
    case grpc::StatusCode::NOT_FOUND:
      return 404;
    case grpc::StatusCode::ALREADY_EXISTS:
    case grpc::StatusCode::ABORTED:
      return 409;
    case grpc::StatusCode::PERMISSION_DENIED:
      return 403;
    case grpc::StatusCode::UNAUTHENTICATED:
      return 401;
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return 429;
    case grpc::StatusCode::UNIMPLEMENTED:
      return 501;
    case grpc::StatusCode::UNAVAILABLE:
      return 503;
    default:
      return 500;  // UNKNOWN, INTERNAL, DATA_LOSS
  }
}

std::string CodeName(grpc::StatusCode code) { return util::StatusCodeName(static_cast<int>(code)); }

Json ErrorJson(const grpc::Status& status) {
  const int http = HttpStatusOf(status.error_code());
  const char* type = http == 400   ? "invalid_request_error"
                     : http == 401 ? "authentication_error"
                     : http == 403 ? "permission_error"
                     : http == 404 ? "not_found_error"
                     : http == 409 ? "conflict_error"
                     : http == 413 ? "invalid_request_error"
                     : http == 429 ? "rate_limit_error"
                                   : "server_error";
  Json error = {
      {"message", status.error_message()}, {"type", type}, {"code", CodeName(status.error_code())}};
  // The service's google.rpc.ErrorInfo reason, when its status details carry one.
  google::rpc::Status details;
  if (!status.error_details().empty() && details.ParseFromString(status.error_details())) {
    for (const google::protobuf::Any& any : details.details()) {
      google::rpc::ErrorInfo info;
      if (any.UnpackTo(&info)) error["reason"] = info.reason();
    }
  }
  return {{"error", std::move(error)}};
}

grpc::Status ToGrpc(const absl::Status& status) {
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

std::string Dump(const Json& value) {
  return value.dump(-1, ' ', false, Json::error_handler_t::replace);
}

}  // namespace ttt::http::internal
