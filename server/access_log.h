// The gRPC port as an operator watches it: a server interceptor that writes one access line per
// call (util/log.h, component "access") and keeps tttserve_requests_in_flight{method}; and gRPC's
// own log lines routed into the same log. The interceptor sees every call of the port (the
// TttService, health, reflection, the HTTP front door's in-process calls) without any handler's
// help, except the tenant, which only the handler's authorization knows (NoteCallTenant).
//
// The access line: method, tenant, session (the request's session_id, or the new session's id
// for the calls that create one), code (as tttserve_requests_total counts it), duration_ms,
// messages and protobuf bytes each way, peer, request_id. Never a token, text or credential.
// Health checks are logged at debug level (probes would drown the rest).
//
// Request ids: a client's `x-request-id` (1-128 characters of [A-Za-z0-9._:-]) is kept,
// otherwise one is generated; either way it comes back in the call's trailing metadata.
#pragma once

#include <memory>

#include <grpcpp/support/server_interceptor.h>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace grpc {
class ServerContextBase;
}  // namespace grpc

namespace ttt::server {

class Metrics;

inline constexpr char kRequestIdHeader[] = "x-request-id";

// The interceptor factory for grpc::ServerBuilder::experimental().SetInterceptorCreators.
// REQUIRES: `metrics` outlives the server built with it.
std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> NewAccessLogFactory(
    Metrics* metrics);

// The tenant a handler authorized the call as, for its access line (internal::CallerOf calls
// it). No-op for a call without the interceptor. Thread-safe.
void NoteCallTenant(const grpc::ServerContextBase& ctx, absl::string_view tenant);

// The label of `full_method` ("/tttserve.v1.TttService/Score") in the per-method metrics and the
// access line: the TttService method's name ("Score"), the full name of a health or reflection
// method ("grpc.health.v1.Health/Check"), "unknown" for anything else (so a client cannot grow
// the metrics' label set).
std::string MethodLabel(absl::string_view full_method);

// Routes gRPC's log lines (gpr_log) to util::Log under component "grpc", with their source file
// and line. Call once, before the first server starts.
void RouteGrpcLogsToLog();

namespace internal {
// OK when the access log's table of message types agrees with the TttService's descriptor (every
// method present, request and response types equal); tests call it.
absl::Status CheckAccessLogMethodTable();
}  // namespace internal

}  // namespace ttt::server
