// ExportSession: a server stream of checkpoint-format bytes, of a live session (encoded on the
// engine thread) or of a stored checkpoint, in pieces of export_piece_bytes. Memory stays
// bounded however slowly clients read: at most --max_concurrent_exports run at once (each holds
// one state's bytes, at most the model's largest state), one piece is written at a time, and the
// transport's buffers are bounded by the server's resource quota and stream limits.
#include <algorithm>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

#include "server/internal/call_slots.h"
#include "server/internal/reactor_lifetime.h"
#include "server/internal/reactors.h"

namespace ttt::server::internal {
namespace {

namespace pb = tttserve::v1;

class ExportReactor final : public grpc::ServerWriteReactor<pb::ExportSessionResponse> {
 public:
  ExportReactor(TttServiceImpl* svc, grpc::CallbackServerContext* ctx,
                const pb::ExportSessionRequest* req)
      : svc_(svc), ctx_(ctx), start_(Clock::now()) {
    std::lock_guard<std::mutex> lock(mu_);
    StartLocked(ctx, *req);
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!ok) return FinishLocked(absl::CancelledError("the client went away"));
    WriteNextLocked();
  }

  void OnCancel() override {}

  void OnDone() override {
    ReactThenMaybeDelete(this, mu_, lifetime_, [this] { lifetime_.GrpcDone(); });
  }

 private:
  // Reads a stored checkpoint now, or asks the engine thread to encode a live session.
  void StartLocked(grpc::CallbackServerContext* ctx, const pb::ExportSessionRequest& req) {
    auto tenant = TenantOf(svc_->authorizer(), ctx, "ExportSession");
    if (!tenant.ok()) return FinishLocked(tenant.status());
    absl::Status routed = CheckSessionHeader(ctx, {req.session_id()});
    if (!routed.ok()) return FinishLocked(routed);
    if (req.session_id().empty() == req.checkpoint_id().empty()) {
      return FinishLocked(absl::InvalidArgumentError(
          "ExportSession needs exactly one of session_id and checkpoint_id"));
    }
    absl::Status stream = AcquireStream(*svc_->quotas(), *tenant, &stream_);
    if (!stream.ok()) return FinishLocked(stream);
    absl::Status slot = slot_.Acquire(svc_->export_slots());
    if (!slot.ok()) return FinishLocked(slot);
    if (!req.checkpoint_id().empty()) {
      auto bytes = svc_->sessions()->ExportCheckpoint(*tenant, req.checkpoint_id());
      if (!bytes.ok()) return FinishLocked(bytes.status());
      data_ = std::move(*bytes);
      return WriteNextLocked();
    }
    lifetime_.Due();
    absl::Status st = svc_->sessions()->ExportSession(
        *tenant, req.session_id(),
        [this](absl::StatusOr<std::string> bytes) { OnEncoded(std::move(bytes)); });
    if (!st.ok()) {
      lifetime_.Ran();  // refused: no callback comes
      FinishLocked(st);
    }
  }

  // Engine thread: the live session's bytes.
  void OnEncoded(absl::StatusOr<std::string> bytes) {
    ReactThenMaybeDelete(this, mu_, lifetime_, [&] {
      lifetime_.Ran();
      if (finish_called_) return;
      if (!bytes.ok()) return FinishLocked(bytes.status());
      data_ = std::move(*bytes);
      WriteNextLocked();
    });
  }

  void WriteNextLocked() {
    if (finish_called_) return;
    if (offset_ >= data_.size()) return FinishLocked(absl::OkStatus());
    const size_t n = std::min<size_t>(svc_->limits().export_piece_bytes, data_.size() - offset_);
    resp_.Clear();
    if (offset_ == 0) resp_.set_total_size(static_cast<int64_t>(data_.size()));
    resp_.set_data(data_.substr(offset_, n));
    offset_ += n;
    StartWrite(&resp_);
  }

  void FinishLocked(absl::Status st) {
    if (finish_called_) return;
    finish_called_ = true;
    stream_.reset();  // before the client hears the end: it may open its next stream at once
    const grpc::Status status = ToGrpcStatus(st);
    RecordCall(svc_->metrics(), *ctx_, "ExportSession", status, start_);
    Finish(status);
  }

  TttServiceImpl* const svc_;
  grpc::CallbackServerContext* const ctx_;
  const Clock::time_point start_;
  SlotLease slot_;  // released when the reactor is destroyed
  std::mutex mu_;
  std::optional<auth::Quotas::StreamLease> stream_;  // guarded by mu_; --quotas_file streams
  std::string data_;
  size_t offset_ = 0;
  pb::ExportSessionResponse resp_;
  ReactorLifetime lifetime_;  // the engine's OnEncoded due
  bool finish_called_ = false;
};

}  // namespace

grpc::ServerWriteReactor<pb::ExportSessionResponse>* NewExportReactor(
    TttServiceImpl* svc, grpc::CallbackServerContext* ctx, const pb::ExportSessionRequest* req) {
  return new ExportReactor(svc, ctx, req);
}

}  // namespace ttt::server::internal
