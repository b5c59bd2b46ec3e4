// absl::Status -> grpc::Status, with google.rpc.ErrorInfo and RetryInfo in the status details.
#include "server/status.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "auth/quotas.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "util/error_reason.h"

namespace ttt::server {

namespace {

// A reason for a status that no module tagged: ABORTED only ever means a busy session (the
// writer lease); otherwise the code's own name.
util::ErrorReason DefaultReason(absl::StatusCode code) {
  if (code == absl::StatusCode::kAborted) return {util::kReasonSessionBusy, {}};
  return {GrpcCodeName(static_cast<grpc::StatusCode>(code)), {}};
}

}  // namespace

util::ErrorReason ReasonFor(const absl::Status& status) {
  std::optional<util::ErrorReason> tagged = util::ReasonOf(status);
  return tagged ? *std::move(tagged) : DefaultReason(status.code());
}

std::optional<int64_t> RetryDelayMs(const absl::Status& status) {
  if (std::optional<int64_t> ms = auth::RetryAfterMs(status)) return ms;  // the ingest rate's
  switch (status.code()) {
    case absl::StatusCode::kAborted:      // a busy session: its writer finishes
    case absl::StatusCode::kUnavailable:  // shutting down, owned elsewhere, store unreachable
      return kDefaultRetryDelayMs;
    case absl::StatusCode::kResourceExhausted: {
      // Only the load-dependent refusals; a size limit or a held quota (live sessions,
      // checkpoint bytes) does not pass by waiting.
      util::ErrorReason reason = ReasonFor(status);
      const bool load =
          reason.reason == util::kReasonEngineBusy ||
          reason.reason == util::kReasonTooManyConcurrentCalls ||
          (reason.reason == util::kReasonQuotaExceeded && reason.metadata["quota"] == "streams");
      if (load) return kDefaultRetryDelayMs;
      return std::nullopt;
    }
    default:
      return std::nullopt;
  }
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  google::rpc::Status details;
  details.set_code(static_cast<int32_t>(status.code()));
  details.set_message(std::string(status.message()));
  util::ErrorReason reason = ReasonFor(status);
  google::rpc::ErrorInfo info;
  info.set_reason(reason.reason);
  info.set_domain(kErrorDomain);
  for (auto& [key, value] : reason.metadata) (*info.mutable_metadata())[key] = std::move(value);
  details.add_details()->PackFrom(info);
  if (std::optional<int64_t> ms = RetryDelayMs(status)) {
    google::rpc::RetryInfo retry;
    retry.mutable_retry_delay()->set_seconds(*ms / 1000);
    retry.mutable_retry_delay()->set_nanos(static_cast<int32_t>(*ms % 1000) * 1000000);
    details.add_details()->PackFrom(retry);
  }
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()),
                      details.SerializeAsString());
}

void AddRetryTrailers(const absl::Status& status, grpc::ServerContextBase* ctx) {
  const std::optional<int64_t> ms = auth::RetryAfterMs(status);
  if (!ms) return;
  ctx->AddTrailingMetadata("retry-after-ms", absl::StrCat(*ms));
  ctx->AddTrailingMetadata("grpc-retry-pushback-ms", absl::StrCat(*ms));
}
namespace {

class StatusDetailsInterceptor final : public grpc::experimental::Interceptor {
 public:
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    using grpc::experimental::InterceptionHookPoints;
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      const grpc::Status sent = methods->GetSendStatus();
      if (!sent.ok() && sent.error_details().empty()) {
        methods->ModifySendStatus(ToGrpcStatus(
            absl::Status(static_cast<absl::StatusCode>(sent.error_code()), sent.error_message())));
      }
    }
    methods->Proceed();
  }
};

class StatusDetailsFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo*) override {
    return new StatusDetailsInterceptor();
  }
};

class UnknownMethodService final : public grpc::CallbackGenericService {
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* ctx) override {
    class Refuse final : public grpc::ServerGenericBidiReactor {
     public:
      explicit Refuse(const std::string& method) {
        Finish(ToGrpcStatus(absl::UnimplementedError(absl::StrCat(
            "this server has no method ", method,
            " (it serves tttserve.v1.TttService, grpc.health.v1.Health and, where enabled, "
            "server reflection)"))));
      }
      void OnDone() override { delete this; }
    };
    return new Refuse(ctx->method());
  }
};

}  // namespace

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> NewStatusDetailsFactory() {
  return std::make_unique<StatusDetailsFactory>();
}

std::unique_ptr<grpc::CallbackGenericService> NewUnknownMethodService() {
  return std::make_unique<UnknownMethodService>();
}

std::string GrpcCodeName(grpc::StatusCode code) {
  return util::StatusCodeName(static_cast<int>(code));
}

}  // namespace ttt::server
