// The OpenAI completions translations of the HTTP front door (http/internal/openai.h): request
// fields into GenerateRequest, refusals naming the field, Generate's responses into chunks and
// the completion object, gRPC codes into HTTP statuses. The server end to end:
// tests/e2e/http_e2e_test.py.
#include "http/internal/openai.h"

#include <gtest/gtest.h>

#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"

namespace ttt::http::internal {
namespace {

namespace pb = tttserve::v1;
using Json = nlohmann::json;

CompletionCall ParseOk(const std::string& body) {
  absl::StatusOr<CompletionCall> call = ParseCompletion(body, "ttt-brown");
  EXPECT_TRUE(call.ok()) << call.status();
  return call.ok() ? *call : CompletionCall();
}

void ExpectRefused(const std::string& body, absl::StatusCode code, const std::string& fragment) {
  absl::StatusOr<CompletionCall> call = ParseCompletion(body, "ttt-brown");
  ASSERT_FALSE(call.ok()) << body;
  EXPECT_EQ(call.status().code(), code) << call.status();
  EXPECT_NE(call.status().message().find(fragment), std::string::npos) << call.status();
}

TEST(OpenAiTest, MapsEveryFieldToGenerateRequest) {
  const CompletionCall call = ParseOk(R"({
      "model": "ttt-brown", "prompt": "The jury", "max_tokens": 7, "temperature": 0,
      "top_p": 0.5, "top_k": 3, "seed": 42, "stop": ["\n", "."], "ignore_eos": true,
      "logprobs": 1, "stream": true, "stream_options": {"include_usage": true},
      "session_id": "s-1", "commit_prompt": true, "user": "ignored"})");
  const pb::GenerateRequest& g = call.generate;
  EXPECT_EQ(g.prompt_text(), "The jury");
  EXPECT_EQ(g.max_tokens(), 7);
  ASSERT_TRUE(g.has_temperature());  // an explicit 0 is greedy, not "unset"
  EXPECT_EQ(g.temperature(), 0.0);
  EXPECT_EQ(g.top_p(), 0.5);
  EXPECT_EQ(g.top_k(), 3);
  EXPECT_EQ(g.seed(), 42u);
  ASSERT_EQ(g.stop_size(), 2);
  EXPECT_EQ(g.stop(1), ".");
  EXPECT_TRUE(g.ignore_eos());
  EXPECT_FALSE(g.commit());  // the output is never committed
  EXPECT_TRUE(call.logprobs && call.stream && call.include_usage && call.commit_prompt);
  EXPECT_EQ(call.session_id, "s-1");
}

TEST(OpenAiTest, DefaultsAreOpenAisAndNullMeansAbsent) {
  const CompletionCall call = ParseOk(R"({"prompt": "x", "temperature": null, "stop": null})");
  EXPECT_EQ(call.generate.max_tokens(), kDefaultMaxTokens);
  EXPECT_FALSE(call.generate.has_temperature());
  EXPECT_EQ(call.generate.stop_size(), 0);
  EXPECT_FALSE(call.stream || call.commit_prompt || call.logprobs);
  EXPECT_EQ(ParseOk(R"({"stop": "END"})").generate.stop(0), "END");
  EXPECT_TRUE(ParseOk("{}").generate.prompt_text().empty());  // from the session as it is
}

TEST(OpenAiTest, TokenIdPromptsAndOneElementBatches) {
  EXPECT_EQ(ParseOk(R"({"prompt": [1, 2, 3]})").generate.prompt_token_ids_size(), 3);
  EXPECT_EQ(ParseOk(R"({"prompt": [[4, 5]]})").generate.prompt_token_ids(1), 5);
  EXPECT_EQ(ParseOk(R"({"prompt": ["one"]})").generate.prompt_text(), "one");
}

TEST(OpenAiTest, RefusesWhatCannotBeTranslated) {
  using absl::StatusCode;
  ExpectRefused("{not json", StatusCode::kInvalidArgument, "not valid JSON");
  ExpectRefused("[1]", StatusCode::kInvalidArgument, "must be a JSON object");
  ExpectRefused(R"({"model": "gpt-4"})", StatusCode::kNotFound, "lists 'ttt-brown'");
  ExpectRefused(R"({"prompt": ["a", "b"]})", StatusCode::kInvalidArgument, "one prompt per");
  ExpectRefused(R"({"prompt": [1, 2.5]})", StatusCode::kInvalidArgument, "integer token ids");
  ExpectRefused(R"({"prompt": [4294967296]})", StatusCode::kInvalidArgument, "token ids");
  ExpectRefused(R"({"prompt": {"a": 1}})", StatusCode::kInvalidArgument, "`prompt`");
  ExpectRefused(R"({"max_tokens": 0})", StatusCode::kInvalidArgument, "`max_tokens` must be >= 1");
  ExpectRefused(R"({"max_tokens": "5"})", StatusCode::kInvalidArgument, "must be an integer");
  ExpectRefused(R"({"temperature": "hot"})", StatusCode::kInvalidArgument, "must be a number");
  ExpectRefused(R"({"seed": -1})", StatusCode::kInvalidArgument, "`seed` must be a non-negative");
  ExpectRefused(R"({"stop": [1]})", StatusCode::kInvalidArgument, "`stop` must be a string");
  ExpectRefused(R"({"logprobs": 5})", StatusCode::kInvalidArgument, "`logprobs` may be 0 or 1");
  ExpectRefused(R"({"n": 2})", StatusCode::kInvalidArgument, "`n` must be 1");
  ExpectRefused(R"({"echo": true})", StatusCode::kInvalidArgument, "`echo`");
  ExpectRefused(R"({"presence_penalty": 0.5})", StatusCode::kInvalidArgument, "only 0");
  ExpectRefused(R"({"logit_bias": {"5": 1}})", StatusCode::kInvalidArgument, "logit_bias");
  ExpectRefused(R"({"stream": 1})", StatusCode::kInvalidArgument, "`stream` must be true");
  ExpectRefused(R"({"session_id": 7})", StatusCode::kInvalidArgument, "`session_id` must be");
  ExpectRefused(R"({"stream_options": true})", StatusCode::kInvalidArgument, "an object");
}

pb::GenerateResponse Token(int32_t id, const std::string& text, float logprob) {
  pb::GenerateResponse r;
  r.set_token_id(id);
  r.set_text(text);
  r.set_logprob(logprob);
  return r;
}

pb::GenerateResponse Final(const std::string& text, pb::FinishReason reason, int32_t n) {
  pb::GenerateResponse r;
  r.set_text(text);
  r.set_finish_reason(reason);
  r.set_tokens_generated(n);
  return r;
}

TEST(OpenAiTest, BuildsChunksAndTheCompletion) {
  CompletionBuilder builder("cmpl-1", 100, "ttt-brown", /*logprobs=*/false);
  std::optional<Json> first = builder.Add(Token(1, "He", -0.5f));
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ((*first)["choices"][0]["text"], "He");
  EXPECT_TRUE((*first)["choices"][0]["finish_reason"].is_null());
  EXPECT_FALSE(builder.Add(Token(2, "", -1.0f)).has_value());  // text held back: nothing to send
  ASSERT_TRUE(builder.Add(Token(3, "llo", -1.5f)).has_value());
  std::optional<Json> last = builder.Add(Final("!", pb::FINISH_REASON_LENGTH, 3));
  ASSERT_TRUE(last.has_value());
  EXPECT_EQ((*last)["choices"][0]["finish_reason"], "length");

  const Json completion = builder.Completion(/*prompt_tokens=*/2);
  EXPECT_EQ(completion["id"], "cmpl-1");
  EXPECT_EQ(completion["object"], "text_completion");
  EXPECT_EQ(completion["created"], 100);
  EXPECT_EQ(completion["choices"][0]["text"], "Hello!");
  EXPECT_TRUE(completion["choices"][0]["logprobs"].is_null());
  EXPECT_EQ(completion["usage"],
            Json({{"prompt_tokens", 2}, {"completion_tokens", 3}, {"total_tokens", 5}}));
  const Json usage = builder.UsageChunk(2);
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["total_tokens"], 5);
}

TEST(OpenAiTest, LogprobsCarryEveryTokenAndItsTextOffset) {
  CompletionBuilder builder("cmpl-2", 0, "m", /*logprobs=*/true);
  builder.Add(Token(1, "He", -0.5f));
  std::optional<Json> held = builder.Add(Token(2, "", -1.0f));
  ASSERT_TRUE(held.has_value());  // its logprob is news even without text
  EXPECT_EQ((*held)["choices"][0]["logprobs"]["text_offset"], Json({2}));
  builder.Add(Token(3, "llo", -1.5f));
  builder.Add(Final("", pb::FINISH_REASON_EOS, 3));
  const Json logprobs = builder.Completion(0)["choices"][0]["logprobs"];
  EXPECT_EQ(logprobs["tokens"], Json({"He", "", "llo"}));
  EXPECT_EQ(logprobs["token_logprobs"], Json({-0.5, -1.0, -1.5}));
  EXPECT_EQ(logprobs["text_offset"], Json({0, 2, 2}));
  EXPECT_TRUE(logprobs["top_logprobs"].is_null());
  EXPECT_EQ(builder.Completion(0)["choices"][0]["finish_reason"], "stop");  // eos
}

TEST(OpenAiTest, GrpcCodesBecomeHttpStatusesAndErrorObjects) {
  using grpc::StatusCode;
  const std::pair<StatusCode, int> table[] = {
      {StatusCode::INVALID_ARGUMENT, 400}, {StatusCode::FAILED_PRECONDITION, 400},
      {StatusCode::UNAUTHENTICATED, 401},  {StatusCode::PERMISSION_DENIED, 403},
      {StatusCode::NOT_FOUND, 404},        {StatusCode::ABORTED, 409},
      {StatusCode::ALREADY_EXISTS, 409},   {StatusCode::RESOURCE_EXHAUSTED, 429},
      {StatusCode::UNAVAILABLE, 503},      {StatusCode::DEADLINE_EXCEEDED, 504},
      {StatusCode::UNIMPLEMENTED, 501},    {StatusCode::DATA_LOSS, 500},
      {StatusCode::CANCELLED, 499}};
  for (const auto& [code, http] : table) EXPECT_EQ(HttpStatusOf(code), http) << CodeName(code);
  const Json error = ErrorJson(grpc::Status(StatusCode::RESOURCE_EXHAUSTED, "over quota"));
  EXPECT_EQ(error, Json({{"error",
                          {{"message", "over quota"},
                           {"type", "rate_limit_error"},
                           {"code", "RESOURCE_EXHAUSTED"}}}}));
  EXPECT_EQ(CodeName(StatusCode::UNAUTHENTICATED), "UNAUTHENTICATED");
  // A code no enumerator names (a peer's own code); 20 is inside the enum's range of values
  // (DO_NOT_USE = -1 gives -32..31), where 99 would be undefined behaviour (UBSan's enum check).
  EXPECT_EQ(CodeName(static_cast<StatusCode>(20)), "UNKNOWN");
  // The service's ErrorInfo reason rides along (issue 25 item 5).
  google::rpc::ErrorInfo info;
  info.set_reason("SESSION_BUSY");
  info.set_domain("ttt-serve");
  google::rpc::Status details;
  details.set_code(static_cast<int>(StatusCode::ABORTED));
  details.add_details()->PackFrom(info);
  const Json busy =
      ErrorJson(grpc::Status(StatusCode::ABORTED, "busy", details.SerializeAsString()));
  EXPECT_EQ(busy["error"]["reason"], "SESSION_BUSY");
  EXPECT_EQ(busy["error"]["code"], "ABORTED");
}

TEST(OpenAiTest, CompletionIdsAreFreshAndShaped) {
  const std::string a = NewCompletionId(), b = NewCompletionId();
  EXPECT_NE(a, b);
  EXPECT_EQ(a.rfind("cmpl-", 0), 0u);
  EXPECT_EQ(a.size(), 5u + 24u);
}

TEST(OpenAiTest, DumpReplacesInvalidUtf8InsteadOfThrowing) {
  EXPECT_EQ(Dump(Json("a\xff")), "\"a\xEF\xBF\xBD\"");
}

}  // namespace
}  // namespace ttt::http::internal
