// HTTP/JSON transcoding of the gRPC API (issue 25 item 1) as plain translations, apart from the
// HTTP server: a route's pattern against a request path, a JSON body and query parameters into
// the RPC's request message with protobuf's own JSON mapping (no hand-written field mapping),
// the path's variable into its field, a message back into JSON, and a gRPC status into the
// JSON of google.rpc.Status with its details. No rule of the API is checked here: the gRPC
// service validates what it receives; this refuses only what cannot be translated.
#pragma once

#include <google/protobuf/message.h>
#include <grpcpp/support/status.h>

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"

namespace ttt::http::internal {

using QueryParams = std::vector<std::pair<std::string, std::string>>;

// Matches `path` against `pattern`, which holds at most one "{var}" (one path segment, neither
// '/' nor ':' in it: ids of sessions and checkpoints have neither). Returns the variable's
// value ("" for a pattern without one), or nullopt when the path does not match.
std::optional<std::string> MatchPath(std::string_view pattern, std::string_view path);

// Parses `body` (JSON of the message's type, proto field names or their lowerCamelCase;
// empty: no field set) into `message`. INVALID_ARGUMENT naming the type and protobuf's reason.
absl::Status ParseJsonBody(std::string_view body, google::protobuf::Message* message,
                           const std::string& what = "the request body");

// Sets fields from query parameters, `field.sub_field=value` (a map's key as one more
// segment: `label_selector.user=alice`), each value read as the field's JSON type (a number,
// true/false, an enum's name, else a string). INVALID_ARGUMENT naming an unknown field.
absl::Status ApplyQuery(const QueryParams& query, google::protobuf::Message* message);

// Sets the string field `field` to `value` from the path; INVALID_ARGUMENT when the body
// already set it to something else.
absl::Status BindPathField(const std::string& field, const std::string& value,
                           google::protobuf::Message* message);

// The message as JSON: proto field names, fields at their defaults included, bytes in base64,
// 64-bit integers as strings (protobuf's JSON mapping).
std::string ToJson(const google::protobuf::Message& message);

// google.rpc.Status as JSON: the status details the service sent (ErrorInfo, RetryInfo); a
// status without them (this layer's, or gRPC's own) gets an ErrorInfo whose reason is the
// code's name, so that every HTTP/JSON refusal carries one.
std::string StatusJson(const grpc::Status& status);

// A status of the HTTP layer itself (a body over the limit), with ErrorInfo in the domain the
// service's own refusals use.
grpc::Status LayerStatus(grpc::StatusCode code, std::string message, std::string reason);

}  // namespace ttt::http::internal
