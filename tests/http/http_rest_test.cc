// The HTTP/JSON transcoding translations of the HTTP front door (http/internal/rest_json.h):
// route patterns, JSON bodies and query parameters into request messages, path variables,
// google.rpc.Status JSON. Every route against the real server: tests/e2e/http_e2e_test.py.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "http/internal/rest_json.h"
#include "tttserve/v1/ttt_service.pb.h"

namespace ttt::http::internal {
namespace {

namespace pb = tttserve::v1;
using Json = nlohmann::json;

void ExpectInvalid(const absl::Status& status, const std::string& fragment) {
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(status.message().find(fragment), std::string::npos) << status;
}

TEST(RestJsonTest, MatchPathBindsOneSegmentWithoutColonOrSlash) {
  EXPECT_EQ(MatchPath("/v1/sessions/{session_id}:ingest", "/v1/sessions/s-1:ingest"), "s-1");
  EXPECT_EQ(MatchPath("/v1/sessions/{session_id}", "/v1/sessions/s-1"), "s-1");
  EXPECT_EQ(MatchPath("/v1/sessions", "/v1/sessions"), "");
  EXPECT_FALSE(MatchPath("/v1/sessions/{session_id}", "/v1/sessions/s-1:ingest"));
  EXPECT_FALSE(MatchPath("/v1/sessions/{session_id}", "/v1/sessions/a/b"));
  EXPECT_FALSE(MatchPath("/v1/sessions/{session_id}", "/v1/sessions/"));
  EXPECT_FALSE(MatchPath("/v1/sessions/{session_id}:fork", "/v1/sessions:fork"));
  EXPECT_FALSE(MatchPath("/v1/sessions", "/v1/sessions:import"));
}

TEST(RestJsonTest, ParsesProtoAndCamelCaseNamesAndBase64Bytes) {
  pb::GenerateRequest req;
  ASSERT_TRUE(ParseJsonBody(R"({"max_tokens": 5, "promptText": "aGk=", "temperature": 0,
                                "stop": ["."]})",
                            &req)
                  .ok());
  EXPECT_EQ(req.max_tokens(), 5);
  EXPECT_EQ(req.prompt_text(), "hi");
  EXPECT_TRUE(req.has_temperature());  // an explicit 0 keeps its presence
  EXPECT_EQ(req.stop_size(), 1);
  pb::GenerateRequest empty;
  EXPECT_TRUE(ParseJsonBody(" \n", &empty).ok());
}

TEST(RestJsonTest, RefusesBadJsonNamingTheTypeAndTheProblem) {
  pb::ScoreRequest req;
  ExpectInvalid(ParseJsonBody("{not json", &req), "not a JSON tttserve.v1.ScoreRequest");
  ExpectInvalid(ParseJsonBody(R"({"bogus": 1})", &req), "bogus");
  ExpectInvalid(ParseJsonBody(R"({"token_ids": "x"})", &req), "token_ids");
  ExpectInvalid(ParseJsonBody("{}x", &req, "line 3 of the body"), "line 3 of the body");
}

TEST(RestJsonTest, QueryParamsSetNestedMapRepeatedAndBoolFields) {
  pb::ImportSessionRequest import;
  ASSERT_TRUE(ApplyQuery({{"session_id", "s-9"},
                          {"options.idle_ttl_seconds", "60"},
                          {"options.reset_at_document_end", "true"},
                          {"options.labels.user", "true"}},
                         &import)
                  .ok());
  EXPECT_EQ(import.session_id(), "s-9");
  EXPECT_EQ(import.options().idle_ttl_seconds(), 60);
  EXPECT_TRUE(import.options().reset_at_document_end());
  EXPECT_EQ(import.options().labels().at("user"), "true");  // a string map keeps strings
  pb::DetokenizeRequest detok;
  ASSERT_TRUE(ApplyQuery({{"token_ids", "3"}, {"token_ids", "4"}}, &detok).ok());
  EXPECT_EQ(detok.token_ids_size(), 2);
}

TEST(RestJsonTest, QueryParamsRefuseUnknownFieldsAndBadValues) {
  pb::ListSessionsRequest list;
  ExpectInvalid(ApplyQuery({{"nope", "1"}}, &list), "'nope' names no field");
  ExpectInvalid(ApplyQuery({{"label_selector", "x"}}, &list), "label_selector.<key>=<value>");
  pb::ImportSessionRequest import;
  ExpectInvalid(ApplyQuery({{"options.idle_ttl_seconds", "soon"}}, &import),
                "the query parameters");
  // Found by rest_json_fuzzer: bytes that are not UTF-8 (a percent-decoded %FF) threw out of
  // the JSON printer and ended the process.
  ExpectInvalid(ApplyQuery({{"label_selector.user", "al\xffice"}}, &list), "not valid UTF-8");
  ExpectInvalid(ApplyQuery({{"label_selector.\xff", "x"}}, &list), "not valid UTF-8");
  // Also found by it: a percent-decoded path id that is not UTF-8 went into a proto string.
  pb::IngestRequest ingest;
  ExpectInvalid(BindPathField("session_id",
                              "ab\xc0\xaf"
                              "c",
                              &ingest),
                "not valid UTF-8");
  ExpectInvalid(BindPathField("session_id", "\xed\xa0\x80", &ingest), "not valid UTF-8");
  EXPECT_TRUE(BindPathField("session_id", "caf\xc3\xa9-\xf0\x9f\x98\x80", &ingest).ok());
}

TEST(RestJsonTest, PathVariableFillsTheFieldAndRefusesAnotherInTheBody) {
  pb::ScoreRequest req;
  ASSERT_TRUE(BindPathField("session_id", "s-1", &req).ok());
  EXPECT_EQ(req.session_id(), "s-1");
  ASSERT_TRUE(BindPathField("session_id", "s-1", &req).ok());  // the same id again is fine
  ExpectInvalid(BindPathField("session_id", "s-2", &req), "leave it out of the body");
}

TEST(RestJsonTest, ToJsonUsesProtoNamesAndPrintsDefaults) {
  pb::Session session;
  session.set_session_id("s-1");
  const Json json = Json::parse(ToJson(session));
  EXPECT_EQ(json["session_id"], "s-1");
  EXPECT_FALSE(json.contains("counters"));  // an unset message stays absent
  EXPECT_EQ(json["memory_bytes"], "0");     // int64 as a string, printed at its default
  EXPECT_EQ(json["resident"], false);
}

TEST(RestJsonTest, StatusJsonCarriesTheServiceDetailsOrTheCodeAsReason) {
  google::rpc::Status details;
  details.set_code(10);
  details.set_message("busy");
  google::rpc::ErrorInfo info;
  info.set_reason("SESSION_BUSY");
  info.set_domain("ttt-serve");
  details.add_details()->PackFrom(info);
  google::rpc::RetryInfo retry;
  retry.mutable_retry_delay()->set_seconds(1);
  details.add_details()->PackFrom(retry);
  Json json = Json::parse(
      StatusJson(grpc::Status(grpc::StatusCode::ABORTED, "busy", details.SerializeAsString())));
  EXPECT_EQ(json["code"], 10);
  EXPECT_EQ(json["message"], "busy");
  ASSERT_EQ(json["details"].size(), 2u);
  EXPECT_EQ(json["details"][0]["@type"], "type.googleapis.com/google.rpc.ErrorInfo");
  EXPECT_EQ(json["details"][0]["reason"], "SESSION_BUSY");
  EXPECT_EQ(json["details"][1]["retry_delay"], "1s");

  // gRPC's own refusal (no details): the code's name as the reason.
  json = Json::parse(StatusJson(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "too big")));
  EXPECT_EQ(json["code"], 8);
  ASSERT_EQ(json["details"].size(), 1u);
  EXPECT_EQ(json["details"][0]["reason"], "RESOURCE_EXHAUSTED");
  EXPECT_EQ(json["details"][0]["domain"], "ttt-serve");
}

}  // namespace
}  // namespace ttt::http::internal
