// Checkpoints, exports and imports: a session's state as checkpoint-format bytes (checkpoint.h),
// kept in the tenant's checkpoint folder (CheckpointStore) or handed to the client.
#include <chrono>

#include "absl/strings/str_cat.h"
#include "session/internal/checkpoint.h"
#include "session/internal/checkpoint_store.h"
#include "session/internal/names.h"
#include "session/internal/session_manager_impl.h"
#include "session/internal/session_record.h"
#include "session/session.h"
#include "util/status_macros.h"

namespace ttt::session {

using internal::ValidateName;

namespace {

absl::Status ValidateCheckpointId(const std::string& id) {
  return ValidateName(id, "checkpoint_id", 128);
}

}  // namespace

absl::Status SessionManagerImpl::Checkpoint(
    const std::string& tenant, const std::string& id, const std::string& checkpoint_id,
    std::function<void(absl::StatusOr<CheckpointInfo>)> done) {
  ASSIGN_OR_RETURN(auto s, Find(tenant, id));
  std::string ckpt = checkpoint_id.empty() ? "ck-" + internal::RandomHex(12) : checkpoint_id;
  RETURN_IF_ERROR(ValidateCheckpointId(ckpt));
  engine::Work w;
  w.key = s->key;
  w.task = [this, s, ckpt, done]() {
    const auto start = std::chrono::steady_clock::now();
    absl::Status loaded = EnsureResident(*s);
    auto bytes = loaded.ok() ? EncodeSession(*s, ckpt) : absl::StatusOr<std::string>(loaded);
    if (!bytes.ok()) {
      s->EndOp();
      return done(bytes.status());
    }
    absl::Status written = store_->WriteCheckpoint(s->tenant, ckpt, *bytes);
    CheckpointInfo info;
    info.id = ckpt;
    info.session_id = s->id;
    info.size_bytes = static_cast<int64_t>(bytes->size());
    info.create_time_unix_ms = NowMs();
    info.model_fingerprint = model_->fingerprint();
    {
      std::lock_guard<std::mutex> lock(s->mu);
      info.counters = s->counters;
      info.options = s->options;
    }
    s->EndOp();
    if (!written.ok()) return done(written);
    if (listener_ != nullptr) {
      listener_->OnCheckpointWritten(
          info.size_bytes,
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    done(info);
  };
  return SubmitOp(*s, std::move(w), nullptr);
}

absl::Status SessionManagerImpl::Restore(const std::string& tenant,
                                         const std::string& checkpoint_id,
                                         const std::string& target_session,
                                         std::optional<SessionOptions> options,
                                         std::function<void(absl::StatusOr<SessionInfo>)> done,
                                         const std::string& new_id) {
  RETURN_IF_ERROR(ValidateTenant(tenant));
  RETURN_IF_ERROR(ValidateCheckpointId(checkpoint_id));
  if (options) RETURN_IF_ERROR(ValidateOptions(*options));
  ASSIGN_OR_RETURN(std::string bytes, store_->ReadCheckpoint(tenant, checkpoint_id));
  ASSIGN_OR_RETURN(auto decoded, internal::DecodeCheckpoint(
                                     std::move(bytes), internal::Quote(checkpoint_id), *model_));
  if (target_session.empty()) {
    ASSIGN_OR_RETURN(auto s, Insert(tenant, options ? *options : decoded.meta.options,
                                    std::move(decoded.state), decoded.meta.counters, new_id));
    done(s->Info());
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(std::shared_ptr<Writer> writer, OpenWriter(tenant, target_session, "a Restore"));
  ASSIGN_OR_RETURN(auto s, Find(tenant, target_session));
  auto shared = std::make_shared<internal::DecodedCheckpoint>(std::move(decoded));
  engine::Work w;
  w.key = s->key;
  w.task = [this, s, shared, writer = std::move(writer), options, done]() mutable {
    s->state = std::move(shared->state);
    s->path = {};  // a state from a file: rebased at its next Ingest
    bool admitted;
    {
      std::lock_guard<std::mutex> lock(s->mu);
      admitted = !s->resident;
      s->resident = true;
      s->counters = shared->meta.counters;
      if (options) s->options = *options;
      s->RefreshLocked();
    }
    if (admitted) EvictToFit(s.get());
    writer.reset();
    s->EndOp();
    done(s->Info());
  };
  return SubmitOp(*s, std::move(w), nullptr);
}

absl::StatusOr<std::vector<CheckpointInfo>> SessionManagerImpl::ListCheckpoints(
    const std::string& tenant) {
  RETURN_IF_ERROR(ValidateTenant(tenant));
  return store_->ListCheckpoints(tenant);
}

absl::Status SessionManagerImpl::DeleteCheckpoint(const std::string& tenant,
                                                  const std::string& checkpoint_id) {
  RETURN_IF_ERROR(ValidateTenant(tenant));
  RETURN_IF_ERROR(ValidateCheckpointId(checkpoint_id));
  return store_->DeleteCheckpoint(tenant, checkpoint_id);
}

absl::Status SessionManagerImpl::ExportSession(
    const std::string& tenant, const std::string& id,
    std::function<void(absl::StatusOr<std::string>)> done) {
  ASSIGN_OR_RETURN(auto s, Find(tenant, id));
  engine::Work w;
  w.key = s->key;
  w.task = [this, s, done]() {
    absl::Status loaded = EnsureResident(*s);
    auto bytes = loaded.ok() ? EncodeSession(*s, "") : absl::StatusOr<std::string>(loaded);
    s->EndOp();
    done(std::move(bytes));
  };
  return SubmitOp(*s, std::move(w), nullptr);
}

absl::StatusOr<std::string> SessionManagerImpl::ExportCheckpoint(const std::string& tenant,
                                                                 const std::string& checkpoint_id) {
  RETURN_IF_ERROR(ValidateTenant(tenant));
  RETURN_IF_ERROR(ValidateCheckpointId(checkpoint_id));
  ASSIGN_OR_RETURN(std::string bytes, store_->ReadCheckpoint(tenant, checkpoint_id));
  // A damaged file is reported here, not by whoever imports the bytes later.
  RETURN_IF_ERROR(internal::VerifyCheckpoint(bytes, internal::Quote(checkpoint_id)).status());
  return bytes;
}

absl::StatusOr<SessionInfo> SessionManagerImpl::ImportSession(const std::string& tenant,
                                                              std::string bytes,
                                                              std::optional<SessionOptions> options,
                                                              const std::string& new_id) {
  RETURN_IF_ERROR(ValidateTenant(tenant));
  if (static_cast<int64_t>(bytes.size()) > options_.max_checkpoint_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("import of ", bytes.size(),
                                                     " bytes exceeds the limit of ",
                                                     options_.max_checkpoint_bytes, " bytes"));
  }
  if (bytes.empty()) return absl::InvalidArgumentError("import carried no bytes");
  ASSIGN_OR_RETURN(auto decoded,
                   internal::DecodeCheckpoint(std::move(bytes), "(imported bytes)", *model_));
  if (options) RETURN_IF_ERROR(ValidateOptions(*options));
  ASSIGN_OR_RETURN(auto s, Insert(tenant, options ? *options : decoded.meta.options,
                                  std::move(decoded.state), decoded.meta.counters, new_id));
  return s->Info();
}

}  // namespace ttt::session
