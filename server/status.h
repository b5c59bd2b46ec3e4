// The one translation from absl::Status to grpc::Status (their codes are the same numbers), with
// details a program can act on: every non-OK status carries, in its details
// (grpc-status-details-bin, a google.rpc.Status), a google.rpc.ErrorInfo {reason, domain
// "ttt-serve", metadata} and, where retrying the same call later can succeed, a
// google.rpc.RetryInfo {retry_delay}. docs/contract.md, "Error reasons", lists them.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/server_context.h>
#include <grpcpp/support/server_interceptor.h>
#include <grpcpp/support/status.h>

#include "absl/status/status.h"
#include "util/error_reason.h"

namespace ttt::server {

using util::kErrorDomain;
// The retry delay of a refusal that says nothing more precise.
inline constexpr int64_t kDefaultRetryDelayMs = 1000;

grpc::Status ToGrpcStatus(const absl::Status& status);
// ErrorInfo's reason and metadata: the tag a module put on `status` (util::WithReason), else
// SESSION_BUSY for ABORTED and the code's name ("NOT_FOUND", ...) for the rest.
util::ErrorReason ReasonFor(const absl::Status& status);
// RetryInfo's delay: the ingest rate's wait for its refusals; kDefaultRetryDelayMs for ABORTED,
// UNAVAILABLE and the load-dependent RESOURCE_EXHAUSTED (ENGINE_BUSY,
// TOO_MANY_CONCURRENT_CALLS, the streams quota); none otherwise.
std::optional<int64_t> RetryDelayMs(const absl::Status& status);
// A refusal that says when to retry (auth::RetryAfterMs: the ingest rate) tells it machines
// too, as trailing metadata: `retry-after-ms` and gRPC's own `grpc-retry-pushback-ms` (which
// a client's retry policy obeys). Nothing for other statuses. REQUIRES: before Finish.
void AddRetryTrailers(const absl::Status& status, grpc::ServerContextBase* ctx);
// The canonical name of a gRPC code ("OK", "INVALID_ARGUMENT", ...), for metric labels.
std::string GrpcCodeName(grpc::StatusCode code);

// For refusals gRPC makes itself, so that they carry ErrorInfo too (the code's name as reason):
// an interceptor that gives every non-OK status sent without details ToGrpcStatus's (e.g. a
// request gRPC cannot parse), and a generic service that answers methods no service registers
// UNIMPLEMENTED naming the method (gRPC's own answer has neither a message nor details). A
// message over the receive limit is refused inside gRPC's core, before either sees the call:
// that refusal stays bare (docs/contract.md, "Error reasons").
std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> NewStatusDetailsFactory();
std::unique_ptr<grpc::CallbackGenericService> NewUnknownMethodService();

}  // namespace ttt::server
