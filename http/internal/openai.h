// The OpenAI-compatible completions protocol as plain translations, apart from the HTTP server:
// a /v1/completions body into a GenerateRequest plus this server's extension fields, the
// GenerateResponse stream into OpenAI's completion object or its server-sent-event chunks, and a
// gRPC status into an HTTP status with OpenAI's error object. No rule of the API is checked
// here: the gRPC service validates what it receives (sampling ranges, sizes, tokens); this only
// refuses what cannot be translated (wrong JSON types, OpenAI options the API has no field for).
//
// JSON: nlohmann::json parsed with allow_exceptions=false and every field's type checked before
// it is read, so nothing throws. (Not JSON_NOEXCEPTION: engine/safetensors.cc uses the same
// header with exceptions, and one binary may not hold both builds of its inline functions.)
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <grpcpp/support/status.h>
#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"
#include "tttserve/v1/ttt_service.pb.h"

namespace ttt::http::internal {

// One /v1/completions request, translated.
struct CompletionCall {
  // prompt, max_tokens, temperature, top_p, stop, seed; session_id is left for the caller.
  tttserve::v1::GenerateRequest generate;
  std::string session_id;      // extension `session_id` ("" when absent)
  bool commit_prompt = false;  // extension: ingest the prompt into the session first
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage: a last chunk with usage
  bool logprobs = false;       // logprobs 0 or 1: each token's log-probability is returned
};

// OpenAI's default when max_tokens is absent (the gRPC API's own default, 0, means 64).
inline constexpr int kDefaultMaxTokens = 16;

// Parses a body. INVALID_ARGUMENT naming the field and what it must be; NOT_FOUND when `model`
// is given and is not `served_model`.
absl::StatusOr<CompletionCall> ParseCompletion(std::string_view body,
                                               const std::string& served_model);

// Collects a Generate stream into OpenAI's shapes. Not thread-safe (one request's thread).
class CompletionBuilder {
 public:
  CompletionBuilder(std::string id, int64_t created, std::string model, bool logprobs);

  // Takes the next GenerateResponse. Returns the chunk to stream for it (a token's text, or the
  // final message's finish_reason), or nullopt when it carries nothing to send.
  std::optional<nlohmann::json> Add(const tttserve::v1::GenerateResponse& response);
  // The whole non-streaming completion object.
  nlohmann::json Completion(int64_t prompt_tokens) const;
  // The streaming usage chunk (stream_options.include_usage): no choices, the usage.
  nlohmann::json UsageChunk(int64_t prompt_tokens) const;
  const std::string& text() const { return text_; }

 private:
  nlohmann::json Head(const char* object) const;
  nlohmann::json Usage(int64_t prompt_tokens) const;
  nlohmann::json Logprobs(size_t from) const;  // tokens [from, end)

  const std::string id_;
  const int64_t created_;
  const std::string model_;
  const bool logprobs_;
  std::string text_;
  std::vector<std::string> token_texts_;  // the text each token released (may be "")
  std::vector<float> token_logprobs_;
  std::vector<size_t> text_offsets_;
  std::optional<std::string> finish_reason_;
  int64_t completion_tokens_ = 0;
};

// A fresh completion id: "cmpl-" and 24 hex digits.
std::string NewCompletionId();

// The HTTP status for a gRPC code (Google's HTTP mapping: google/rpc/code.proto).
int HttpStatusOf(grpc::StatusCode code);
// The canonical name of a gRPC code ("NOT_FOUND").
std::string CodeName(grpc::StatusCode code);
// OpenAI's error object: {"error": {"message", "type", "code", "reason"}}, code the gRPC code's
// name, reason the google.rpc.ErrorInfo reason of the status details (absent without one).
nlohmann::json ErrorJson(const grpc::Status& status);
grpc::Status ToGrpc(const absl::Status& status);

// JSON text for the wire: invalid UTF-8 (never expected: the server sends whole characters) is
// replaced, not thrown about.
std::string Dump(const nlohmann::json& value);

}  // namespace ttt::http::internal
