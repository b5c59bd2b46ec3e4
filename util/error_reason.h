// Stable, machine-readable reasons for refusals: a module that knows why it refuses tags its
// absl::Status (WithReason), and the server's one ToGrpcStatus sends the tag as
// google.rpc.ErrorInfo.reason in the call's status details (server/status.h). Untagged statuses
// get their code's default reason there. Plain Abseil (a status payload), so the engine, the
// session manager and auth can tag without knowing gRPC. The table is docs/contract.md's
// "Error reasons".
#pragma once

#include <initializer_list>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "absl/status/status.h"

namespace ttt::util {

// google.rpc.ErrorInfo.domain of every refusal (the server's and the HTTP layer's own).
inline constexpr char kErrorDomain[] = "ttt-serve";

// The reasons modules below the server tag; the server adds its own and the code defaults.
inline constexpr char kReasonSessionBusy[] = "SESSION_BUSY";
inline constexpr char kReasonSessionOwnedElsewhere[] = "SESSION_OWNED_ELSEWHERE";
inline constexpr char kReasonQuotaExceeded[] = "QUOTA_EXCEEDED";
inline constexpr char kReasonTokenOutOfVocab[] = "TOKEN_OUT_OF_VOCAB";
inline constexpr char kReasonStateFromOtherModel[] = "STATE_FROM_OTHER_MODEL";
// Load-dependent refusals: retrying later can succeed.
inline constexpr char kReasonEngineBusy[] = "ENGINE_BUSY";
inline constexpr char kReasonTooManyConcurrentCalls[] = "TOO_MANY_CONCURRENT_CALLS";

// A reason and its metadata (google.rpc.ErrorInfo's reason and metadata).
struct ErrorReason {
  std::string reason;
  std::map<std::string, std::string> metadata;
};

// `status` tagged with `reason` (UPPER_SNAKE_CASE) and `metadata` (keys lower_snake_case; a
// value's line breaks become spaces). An OK status is returned unchanged.
absl::Status WithReason(
    absl::Status status, std::string_view reason,
    std::initializer_list<std::pair<std::string_view, std::string>> metadata = {});

// The tag WithReason put on `status`, if any.
std::optional<ErrorReason> ReasonOf(const absl::Status& status);

// The canonical name of status code number `code` ("NOT_FOUND"; gRPC and Abseil number their
// codes alike, so a grpc::StatusCode cast to int works), or `unknown` for a number outside them.
std::string StatusCodeName(int code, std::string_view unknown = "UNKNOWN");

}  // namespace ttt::util
