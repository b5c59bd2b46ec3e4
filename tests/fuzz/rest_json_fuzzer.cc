// libFuzzer target: the HTTP/JSON transcoding of untrusted requests (http/internal/rest_json.h):
// a route's path match, a JSON body, query parameters and the path's variable into the RPC's
// request message, and the message back into JSON. The first byte picks the request type; the
// rest is "path\nquery\nbody", the query as `name=value&...`. Nothing may crash; every refusal is
// INVALID_ARGUMENT with a bounded message; whatever was accepted prints as JSON that parses back
// into an equivalent message.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/util/message_differencer.h"
#include "http/internal/rest_json.h"
#include "tests/fuzz/fuzz_check.h"
#include "tttserve/v1/ttt_service.pb.h"

namespace {

namespace pb = tttserve::v1;
using ttt::http::internal::QueryParams;

std::unique_ptr<google::protobuf::Message> RequestOfType(uint8_t pick) {
  switch (pick % 6) {
    case 0:
      return std::make_unique<pb::CreateSessionRequest>();
    case 1:
      return std::make_unique<pb::IngestRequest>();
    case 2:
      return std::make_unique<pb::GenerateRequest>();
    case 3:
      return std::make_unique<pb::ScoreRequest>();
    case 4:
      return std::make_unique<pb::ListSessionsRequest>();
    default:
      return std::make_unique<pb::ForkRequest>();
  }
}

void CheckRefusal(const absl::Status& st, const char* what) {
  if (st.ok()) return;
  FUZZ_CHECK(st.code() == absl::StatusCode::kInvalidArgument, "%s: %s", what,
             st.ToString().c_str());
  FUZZ_CHECK(!st.message().empty() && st.message().size() < 4096, "%s: message of %zu bytes", what,
             st.message().size());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  std::unique_ptr<google::protobuf::Message> message = RequestOfType(data[0]);
  // (Debian's Abseil has its own string_view: the splits are copied into strings.)
  const absl::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  std::vector<std::string> parts = absl::StrSplit(rest, absl::MaxSplits('\n', 2));
  parts.resize(3);
  const std::string& path = parts[0];
  const std::string& query = parts[1];
  const std::string& body = parts[2];

  const std::optional<std::string> id =
      ttt::http::internal::MatchPath("/v1/sessions/{id}:ingest", path);
  if (id.has_value()) {
    FUZZ_CHECK(id->find('/') == std::string::npos && id->find(':') == std::string::npos,
               "the path's variable holds a separator: %s", id->c_str());
  }
  QueryParams params;
  for (absl::string_view pair : absl::StrSplit(query, '&', absl::SkipEmpty())) {
    std::vector<std::string> kv = absl::StrSplit(pair, absl::MaxSplits('=', 1));
    kv.resize(2);
    params.emplace_back(std::move(kv[0]), std::move(kv[1]));
  }
  absl::Status st = ttt::http::internal::ParseJsonBody(body, message.get());
  CheckRefusal(st, "body");
  if (st.ok()) {
    st = ttt::http::internal::ApplyQuery(params, message.get());
    CheckRefusal(st, "query");
  }
  if (st.ok() && id.has_value() && message->GetDescriptor()->FindFieldByName("session_id")) {
    st = ttt::http::internal::BindPathField("session_id", *id, message.get());
    CheckRefusal(st, "path");
  }
  if (!st.ok()) return 0;
  const std::string json = ttt::http::internal::ToJson(*message);
  std::unique_ptr<google::protobuf::Message> again(message->New());
  const absl::Status reparsed = ttt::http::internal::ParseJsonBody(json, again.get());
  FUZZ_CHECK(reparsed.ok(), "printed JSON does not parse back: %s", reparsed.ToString().c_str());
  // Equivalent, not Equals: a oneof member or an optional set to its default prints as the
  // default, which parses back unset (and a map prints in no particular order).
  FUZZ_CHECK(google::protobuf::util::MessageDifferencer::Equivalent(*message, *again),
             "printed JSON parses into another message: %s", json.c_str());
  return 0;
}
