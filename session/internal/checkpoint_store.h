// The checkpoint directory, in one place: its layout, atomic writes, reads, listings and removal.
//
//   <root>/<tenant>/checkpoints/<checkpoint id>.safetensors   named checkpoints (clients)
//   <root>/<tenant>/sessions/<session id>.safetensors         session states evicted to disk or
//                                                              persisted at shutdown
//
// Files are in the checkpoint format (checkpoint.h) and written atomically (a temporary file
// beside the final name, fsync, rename, fsync the folder), so a crash leaves the old file or the
// new one, never a torn one. Tenant and id are validated by the caller (names.h): they are safe
// file names. Thread-safe: every method is a file-system operation on its own.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "session/internal/checkpoint.h"
#include "session/session.h"

namespace ttt::session::internal {

class CheckpointStore {
 public:
  explicit CheckpointStore(std::filesystem::path root) : root_(std::move(root)) {}

  // Creates the root folder. FAILED_PRECONDITION when it cannot.
  absl::Status Init() const;

  // Named checkpoints. Read/Delete answer NOT_FOUND ("checkpoint 'x' not found").
  absl::Status WriteCheckpoint(const std::string& tenant, const std::string& id,
                               const std::string& bytes) const;
  absl::StatusOr<std::string> ReadCheckpoint(const std::string& tenant,
                                             const std::string& id) const;
  absl::Status DeleteCheckpoint(const std::string& tenant, const std::string& id) const;
  // The tenant's checkpoints by id, with what their metadata says.
  std::vector<CheckpointInfo> ListCheckpoints(const std::string& tenant) const;

  // Session files. Read answers NOT_FOUND when there is none.
  absl::Status WriteSession(const std::string& tenant, const std::string& id,
                            const std::string& bytes) const;
  absl::StatusOr<std::string> ReadSession(const std::string& tenant, const std::string& id) const;
  void RemoveSession(const std::string& tenant, const std::string& id) const;
  // Names a session file in messages.
  std::string SessionFileName(const std::string& tenant, const std::string& id) const;

  struct PersistedSession {
    std::string tenant;
    std::string id;
    CheckpointMeta meta;
  };
  // Session files of every tenant whose metadata reads and names `model_fingerprint`; the
  // others are skipped with a line on stderr.
  std::vector<PersistedSession> ListSessions(const std::string& model_fingerprint) const;

 private:
  std::filesystem::path TenantDir(const std::string& tenant) const { return root_ / tenant; }
  std::filesystem::path CheckpointPath(const std::string& tenant, const std::string& id) const;
  std::filesystem::path SessionPath(const std::string& tenant, const std::string& id) const;

  const std::filesystem::path root_;
};

}  // namespace ttt::session::internal
