// ImportSession: a client stream of checkpoint-format bytes that becomes a new session. The
// bytes are checked as they arrive (ImportGuard: header length, header nesting, total, all
// against limits from the model), at most --max_concurrent_imports run at once, and a call that
// ends cancelled leaves no session behind.
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/internal/call_slots.h"
#include "server/internal/import_guard.h"
#include "server/internal/reactors.h"
#include "util/status_macros.h"

namespace ttt::server::internal {
namespace {

namespace pb = tttserve::v1;

class ImportReactor final : public grpc::ServerReadReactor<pb::ImportSessionRequest> {
 public:
  ImportReactor(TttServiceImpl* svc, grpc::CallbackServerContext* ctx, pb::Session* resp)
      : svc_(svc), ctx_(ctx), start_(Clock::now()), resp_(resp), guard_(svc->import_limits()) {
    absl::Status st = Start();
    if (!st.ok()) FinishWith(st);
  }

  void OnReadDone(bool ok) override {
    if (!ok) return ImportReceived();
    if (first_) {
      if (req_.has_options()) options_ = FromProto(req_.options());
      new_id_ = req_.session_id();
      absl::Status routed = CheckSessionHeader(ctx_, {new_id_});
      if (!routed.ok()) return FinishWith(routed);
    }
    first_ = false;
    absl::Status st = guard_.Append(req_.data());
    if (!st.ok()) return FinishWith(st);
    StartRead(&req_);
  }

  void OnCancel() override {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_ = true;
  }

  // A session created for a call that then ended cancelled (the client never learned its id)
  // is removed again: a cancelled import leaves nothing behind.
  void OnDone() override {
    bool cancelled;
    {
      std::lock_guard<std::mutex> lock(mu_);
      cancelled = cancelled_ || ctx_->IsCancelled();
    }
    if (cancelled && !created_.empty()) {
      (void)svc_->sessions()->DeleteSession(tenant_, created_);
    }
    delete this;
  }

 private:
  absl::Status Start() {
    ASSIGN_OR_RETURN(tenant_, TenantOf(svc_->authorizer(), ctx_, "ImportSession"));
    // Quotas before any byte is read: an open stream, and a place for the new session.
    RETURN_IF_ERROR(AcquireStream(*svc_->quotas(), tenant_, &stream_));
    ASSIGN_OR_RETURN(reservation_, svc_->quotas()->ReserveSession(tenant_));
    RETURN_IF_ERROR(slot_.Acquire(svc_->import_slots()));
    StartRead(&req_);
    return absl::OkStatus();
  }

  bool Cancelled() {
    std::lock_guard<std::mutex> lock(mu_);
    return cancelled_ || ctx_->IsCancelled();
  }

  // Reads ended: the client half-closed (verify the bytes and create the session), or the call
  // was cancelled (then nothing is created).
  void ImportReceived() {
    if (Cancelled()) return FinishWith(absl::CancelledError("the client cancelled the import"));
    absl::StatusOr<session::SessionInfo> info;
    try {
      info = svc_->sessions()->ImportSession(tenant_, guard_.Take(), options_, new_id_);
    } catch (const std::exception& e) {
      info = absl::InternalError(absl::StrCat("import failed: ", e.what()));
    }
    if (info.ok()) {
      created_ = info->id;
      ToProto(*info, resp_);
    }
    FinishWith(info.status());
  }

  // The stream and the session reservation end here, before the client hears the end (it may
  // open its next stream at once).
  void FinishWith(absl::Status st) {
    stream_.reset();
    reservation_.reset();
    const grpc::Status status = ToGrpcStatus(st);
    RecordCall(svc_->metrics(), *ctx_, "ImportSession", status, start_);
    Finish(status);
  }

  TttServiceImpl* const svc_;
  grpc::CallbackServerContext* const ctx_;
  const Clock::time_point start_;
  pb::Session* resp_;
  SlotLease slot_;
  std::string tenant_;
  std::optional<auth::Quotas::StreamLease> stream_;
  std::shared_ptr<QuotaGate::SessionReservation> reservation_;
  pb::ImportSessionRequest req_;
  ImportGuard guard_;
  std::optional<session::SessionOptions> options_;
  std::string new_id_;  // the first message's session_id: the new session's id (empty: picked)
  bool first_ = true;
  std::string created_;  // the session this call created, if any

  std::mutex mu_;
  bool cancelled_ = false;  // guarded by mu_
};

}  // namespace

grpc::ServerReadReactor<pb::ImportSessionRequest>* NewImportReactor(
    TttServiceImpl* svc, grpc::CallbackServerContext* ctx, pb::Session* resp) {
  return new ImportReactor(svc, ctx, resp);
}

}  // namespace ttt::server::internal
