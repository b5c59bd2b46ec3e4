// The one translation from absl::Status to grpc::Status (their codes are the same numbers).
#pragma once

#include <grpcpp/server_context.h>
#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace ttt::server {

grpc::Status ToGrpcStatus(const absl::Status& status);
// A refusal that says when to retry (auth::RetryAfterMs: the ingest rate) tells it machines
// too, as trailing metadata: `retry-after-ms` and gRPC's own `grpc-retry-pushback-ms` (which
// a client's retry policy obeys). Nothing for other statuses. REQUIRES: before Finish.
void AddRetryTrailers(const absl::Status& status, grpc::ServerContextBase* ctx);
// The canonical name of a gRPC code ("OK", "INVALID_ARGUMENT", ...), for metric labels.
const char* GrpcCodeName(grpc::StatusCode code);

}  // namespace ttt::server
