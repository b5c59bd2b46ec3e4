// The one translation from absl::Status to grpc::Status (their codes are the same numbers).
#pragma once

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace ttt::server {

grpc::Status ToGrpcStatus(const absl::Status& status);
// The canonical name of a gRPC code ("OK", "INVALID_ARGUMENT", ...), for metric labels.
const char* GrpcCodeName(grpc::StatusCode code);

}  // namespace ttt::server
