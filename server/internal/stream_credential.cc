// StreamCredential (see stream_credential.h).
#include "server/internal/stream_credential.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "server/internal/convert.h"
#include "util/status_macros.h"

namespace ttt::server::internal {

absl::Status StreamCredential::Open() {
  ASSIGN_OR_RETURN(tenant_, TenantOf(authorizer_, ctx_, method_));
  return absl::OkStatus();
}

absl::Status StreamCredential::Check(const std::string& where) const {
  if (!authorizer_.enabled()) return absl::OkStatus();
  auto caller = CallerOf(authorizer_, ctx_, method_);
  absl::Status why;
  if (!caller.ok()) {
    why = caller.status();
  } else if (caller->tenant != tenant_) {
    why = absl::PermissionDeniedError(
        absl::StrCat("it now names tenant ", caller->tenant, ", not ", tenant_));
  } else {
    return absl::OkStatus();
  }
  const std::string message =
      absl::StrCat(where, ": the credential this stream opened with was revoked or changed (",
                   why.message(), "); everything applied before is acknowledged");
  return absl::Status(why.code(), message);
}

bool StreamCredential::Arm(std::function<void(bool fired)> on_fire) {
  if (!authorizer_.enabled()) return false;
  // A fresh alarm each time: this may run inside the previous one's callback, which gRPC keeps
  // alive until it returns.
  alarm_ = std::make_unique<grpc::Alarm>();
  alarm_->Set(std::chrono::system_clock::now() + kRecheckInterval, std::move(on_fire));
  return true;
}

}  // namespace ttt::server::internal
