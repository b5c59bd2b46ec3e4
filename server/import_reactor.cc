// ImportSession: a client stream of checkpoint-format bytes that becomes a new session.
#include <exception>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/internal/reactors.h"

namespace ttt::server::internal {
namespace {

namespace pb = tttserve::v1;

class ImportReactor final : public grpc::ServerReadReactor<pb::ImportSessionRequest> {
 public:
  ImportReactor(TttServiceImpl* svc, grpc::CallbackServerContext* ctx, pb::Session* resp)
      : svc_(svc), start_(Clock::now()), resp_(resp) {
    auto tenant = TenantOf(ctx);
    if (!tenant.ok()) {
      FinishWith(tenant.status());
      return;
    }
    tenant_ = *tenant;
    StartRead(&req_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) return ImportBuffered();
    if (first_ && req_.has_options()) options_ = FromProto(req_.options());
    first_ = false;
    if (static_cast<int64_t>(buf_.size() + req_.data().size()) >
        svc_->limits().max_import_bytes) {
      return FinishWith(absl::ResourceExhaustedError(absl::StrCat(
          "import exceeds the limit of ", svc_->limits().max_import_bytes, " bytes")));
    }
    buf_ += req_.data();
    StartRead(&req_);
  }

  void OnDone() override { delete this; }

 private:
  // The client half-closed: verify the bytes and create the session.
  void ImportBuffered() {
    absl::StatusOr<session::SessionInfo> info;
    try {
      info = svc_->sessions()->ImportSession(tenant_, std::move(buf_), options_);
    } catch (const std::exception& e) {
      info = absl::InternalError(absl::StrCat("import failed: ", e.what()));
    }
    if (info.ok()) ToProto(*info, resp_);
    FinishWith(info.status());
  }

  void FinishWith(absl::Status st) {
    const grpc::Status status = ToGrpcStatus(st);
    svc_->metrics()->RecordRequest("ImportSession", status.error_code(), SecondsSince(start_));
    Finish(status);
  }

  TttServiceImpl* const svc_;
  const Clock::time_point start_;
  pb::Session* resp_;
  std::string tenant_;
  pb::ImportSessionRequest req_;
  std::string buf_;
  std::optional<session::SessionOptions> options_;
  bool first_ = true;
};

}  // namespace

grpc::ServerReadReactor<pb::ImportSessionRequest>* NewImportReactor(
    TttServiceImpl* svc, grpc::CallbackServerContext* ctx, pb::Session* resp) {
  return new ImportReactor(svc, ctx, resp);
}

}  // namespace ttt::server::internal
