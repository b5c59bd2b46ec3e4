// The streaming reactors of TttService, one file each (ingest_reactor.cc, generate_reactor.cc,
// export_reactor.cc, import_reactor.cc), and the unary-handler runner. Reactor rules followed
// throughout: one read and one write in flight at a time; state shared by reactions and engine
// callbacks is guarded by the reactor's mutex; Finish is never called with a write outstanding;
// a reactor deletes itself only when gRPC is done with it (OnDone) and no engine callback is
// still due (reactor_lifetime.h).
#pragma once

#include <atomic>
#include <chrono>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "server/internal/convert.h"
#include "server/metrics.h"
#include "server/service.h"
#include "server/status.h"
#include "tttserve/v1/ttt_service.grpc.pb.h"

namespace ttt::server::internal {

using Clock = std::chrono::steady_clock;

inline double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// The code a finished call is counted under in tttserve_requests_total: DEADLINE_EXCEEDED when
// the client's deadline passed before the server finished (the client saw that code, whatever
// the server then said: gRPC reports a passed deadline to the server only as a cancellation),
// otherwise `status`'s own. So the error-rate alert sees the timeouts of a slow server.
inline grpc::StatusCode RecordedCode(const grpc::ServerContextBase& ctx,
                                     const grpc::Status& status) {
  const auto now = std::chrono::system_clock::now();
  const auto deadline = ctx.deadline();  // time_point::max() without one
  if (now >= deadline) return grpc::StatusCode::DEADLINE_EXCEEDED;
  // gRPC cancels the call when its deadline timer fires, and the wall clock read here may lag
  // that timer's clock slightly: a cancellation within that margin of the deadline is the
  // deadline's.
  constexpr auto kClockSkew = std::chrono::milliseconds(50);
  if (ctx.IsCancelled() && now + kClockSkew >= deadline) {
    return grpc::StatusCode::DEADLINE_EXCEEDED;
  }
  return status.error_code();
}

// Records a finished call of `method` (its code as RecordedCode says, its duration since `start`).
inline void RecordCall(Metrics* metrics, const grpc::ServerContextBase& ctx, const char* method,
                       const grpc::Status& status, Clock::time_point start) {
  metrics->RecordRequest(method, RecordedCode(ctx, status), SecondsSince(start));
}

// Takes one of `tenant`'s open streams (--quotas_file) into `*lease`, which holds it until reset
// (left empty without quotas). RESOURCE_EXHAUSTED at the tenant's limit.
inline absl::Status AcquireStream(QuotaGate& quotas, const std::string& tenant,
                                  std::optional<auth::Quotas::StreamLease>* lease) {
  auto stream = quotas.AcquireStream(tenant);
  if (!stream.ok()) return stream.status();
  if (*stream) lease->emplace(std::move(**stream));
  return absl::OkStatus();
}

// Runs `body` (returning absl::Status) so that nothing escapes a reactor: an exception becomes
// INTERNAL "<what> failed: ...".
template <typename Body>
absl::Status Guarded(const char* what, Body&& body) {
  try {
    return body();
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(what, " failed: ", e.what()));
  }
}

// Each returns a reactor that owns itself (deleted in OnDone, or when its last engine callback
// ran after that). REQUIRES: svc outlives the call.
grpc::ServerBidiReactor<tttserve::v1::IngestRequest, tttserve::v1::IngestResponse>*
NewIngestReactor(TttServiceImpl* svc, grpc::CallbackServerContext* ctx);
grpc::ServerWriteReactor<tttserve::v1::GenerateResponse>* NewGenerateReactor(
    TttServiceImpl* svc, grpc::CallbackServerContext* ctx,
    const tttserve::v1::GenerateRequest* req);
grpc::ServerWriteReactor<tttserve::v1::ExportSessionResponse>* NewExportReactor(
    TttServiceImpl* svc, grpc::CallbackServerContext* ctx,
    const tttserve::v1::ExportSessionRequest* req);
grpc::ServerReadReactor<tttserve::v1::ImportSessionRequest>* NewImportReactor(
    TttServiceImpl* svc, grpc::CallbackServerContext* ctx, tttserve::v1::Session* resp);

// Runs a unary handler: `body(tenant, finish)` must call finish exactly once (now or later from
// an engine callback). Records the request metrics; nothing escapes as an exception.
using Finisher = std::function<void(absl::Status)>;
template <typename Body>
grpc::ServerUnaryReactor* RunUnary(const TttServiceImpl* svc, grpc::CallbackServerContext* ctx,
                                   const char* method, Body&& body) {
  Metrics* metrics = svc->metrics();
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  const auto start = Clock::now();
  auto called = std::make_shared<std::atomic<bool>>(false);
  Finisher finish = [metrics, ctx, reactor, method, start, called](absl::Status st) {
    if (called->exchange(true)) return;
    const grpc::Status status = ToGrpcStatus(st);
    RecordCall(metrics, *ctx, method, status, start);
    reactor->Finish(status);
  };
  try {
    auto tenant = TenantOf(svc->authorizer(), ctx, method);
    if (!tenant.ok()) {
      finish(tenant.status());
    } else {
      body(*tenant, finish);
    }
  } catch (const std::exception& e) {
    finish(absl::InternalError(absl::StrCat(method, " failed: ", e.what())));
  }
  return reactor;
}

}  // namespace ttt::server::internal
