// The credential of an open stream, checked again while the stream lives: a stream outlives the
// credential it opened with, and the tokens file is re-read while the server runs, so a revoked
// or re-scoped token, or one moved to another tenant, must write nothing more once the server has
// read the new file. The reactor checks before each later message and, through an alarm, every
// kRecheckInterval while the stream is idle.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include <grpcpp/alarm.h>
#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "auth/authorizer.h"

namespace ttt::server::internal {

// Not thread-safe: the reactor calls it under its mutex. REQUIRES: `authorizer` and `ctx`
// outlive it.
class StreamCredential {
 public:
  // How often an idle stream's credential is checked: the tokens file's poll period, so a
  // revoked token's idle stream ends within about twice that.
  static constexpr std::chrono::seconds kRecheckInterval{1};

  // `method` names the call for the authorizer ("Ingest").
  StreamCredential(const auth::Authorizer& authorizer, const grpc::CallbackServerContext* ctx,
                   const char* method)
      : authorizer_(authorizer), ctx_(ctx), method_(method) {}

  // The caller's tenant when the stream opens (TenantOf's codes). REQUIRES: called once, first.
  absl::Status Open();
  const std::string& tenant() const { return tenant_; }

  // OK while the call's credential still holds and names the same tenant. Otherwise the
  // authorizer's code (UNAUTHENTICATED for a removed token, PERMISSION_DENIED for a scope or
  // tenant it lost) with a message prefixed by `where`. Cheap: a hash and a lookup.
  absl::Status Check(const std::string& where) const;

  // With authentication on, arms the next idle check: `on_fire(fired)` runs on gRPC's executor
  // thread after kRecheckInterval, without the reactor's mutex. Returns whether it armed one
  // (then the callback is due). The alarm is never cancelled (that could run the callback
  // inline, under the reactor's mutex): a finished stream's last alarm just fires.
  bool Arm(std::function<void(bool fired)> on_fire);

 private:
  const auth::Authorizer& authorizer_;
  const grpc::CallbackServerContext* const ctx_;
  const char* const method_;
  std::string tenant_;
  std::unique_ptr<grpc::Alarm> alarm_;
};

}  // namespace ttt::server::internal
