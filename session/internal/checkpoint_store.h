// The checkpoint directory, in one place: its layout, atomic writes, reads, listings and removal.
//
//   <root>/<tenant>/checkpoints/<checkpoint id>.safetensors   named checkpoints (clients)
//   <root>/<tenant>/sessions/<session id>.safetensors         session states evicted to disk or
//                                                              persisted at shutdown (one server)
//   <root>/<tenant>/blobs/<session id>/<name>.safetensors     committed session states of a store
//                                                              shared through etcd (immutable)
//
// Files are in the checkpoint format (checkpoint.h) and written atomically (a temporary file
// beside the final name, fsync, rename, fsync the folder), so a crash leaves the old file or the
// new one, never a torn one; temporary names do not end in ".safetensors" and are never listed,
// and those a killed process left are removed when a store starts (Init).
// Reads and listings only open regular files, and follow no symbolic link below the root: each
// folder is opened with O_NOFOLLOW, each file with O_NOFOLLOW | O_NONBLOCK (a FIFO cannot block
// a listing) and checked with fstat. A listing shows only files whose header, format and size
// are whole (the checksum is checked when the bytes are used). Tenant and id are validated by
// the caller (names.h): they are safe file names. Thread-safe: each method is a file-system
// operation on its own.
#pragma once

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "session/internal/checkpoint.h"
#include "session/session.h"

namespace ttt::session::internal {

class CheckpointStore {
 public:
  explicit CheckpointStore(std::filesystem::path root) : root_(std::move(root)) {}

  // Creates the root folder and removes the temporary files of writes a killed process left
  // (those no live writer holds: util::RemoveAbandonedTempFiles). FAILED_PRECONDITION when the
  // folder cannot be created.
  absl::Status Init() const;

  // Named checkpoints. Read/Delete answer NOT_FOUND ("checkpoint 'x' not found").
  absl::Status WriteCheckpoint(const std::string& tenant, const std::string& id,
                               const std::string& bytes) const;
  absl::StatusOr<std::string> ReadCheckpoint(const std::string& tenant,
                                             const std::string& id) const;
  absl::Status DeleteCheckpoint(const std::string& tenant, const std::string& id) const;
  // The tenant's whole checkpoints by id, with what their metadata says.
  std::vector<CheckpointInfo> ListCheckpoints(const std::string& tenant) const;

  // Session files. Read answers NOT_FOUND when there is none.
  absl::Status WriteSession(const std::string& tenant, const std::string& id,
                            const std::string& bytes) const;
  absl::StatusOr<std::string> ReadSession(const std::string& tenant, const std::string& id) const;
  void RemoveSession(const std::string& tenant, const std::string& id) const;
  // The metadata of one session file (a listing's checks); NOT_FOUND when there is none.
  absl::StatusOr<CheckpointMeta> InspectSession(const std::string& tenant,
                                                const std::string& id) const;
  // Whether a session file of that id exists (whatever its content: it holds the id).
  bool HasSession(const std::string& tenant, const std::string& id) const;
  // Names a session file in messages.
  std::string SessionFileName(const std::string& tenant, const std::string& id) const;

  // Blobs: the committed states of sessions shared through etcd (cluster_store.h). A blob is
  // created exclusively (O_EXCL: never overwritten, never renamed over), fsync'd with its folder,
  // and never changed: which one is current is etcd's to say, so the volume needs no atomic
  // coordination. WriteBlob answers ALREADY_EXISTS when the name is taken.
  absl::Status WriteBlob(const std::string& tenant, const std::string& id, const std::string& name,
                         const std::string& bytes) const;
  // NOT_FOUND when there is no regular file of that name.
  absl::StatusOr<std::string> ReadBlob(const std::string& tenant, const std::string& id,
                                       const std::string& name) const;
  void DeleteBlob(const std::string& tenant, const std::string& id, const std::string& name) const;
  // One session's blob folder, as the garbage sweep sees it.
  struct BlobFolder {
    std::string tenant;
    std::string id;
    std::vector<std::pair<std::string, absl::Time>> blobs;  // name, when last written
  };
  // Every blob folder of every tenant (folders and files with invalid names, symbolic links and
  // anything but regular files are left out).
  std::vector<BlobFolder> ListBlobFolders() const;
  // Removes a session's blob folder if it is empty (a deleted session's).
  void RemoveEmptyBlobFolder(const std::string& tenant, const std::string& id) const;

  // Turns a session file into the tenant's checkpoint of the same id (sessions that do not fit
  // under --max_sessions at start). ALREADY_EXISTS when a checkpoint has that id.
  absl::Status MoveSessionToCheckpoints(const std::string& tenant, const std::string& id) const;

  struct PersistedSession {
    std::string tenant;
    std::string id;
    CheckpointMeta meta;
  };
  // Session files of every tenant whose metadata reads and names `model_fingerprint`; the
  // others are skipped with a line on stderr.
  std::vector<PersistedSession> ListSessions(const std::string& model_fingerprint) const;

 private:
  void RemoveAbandonedTempFiles() const;
  std::filesystem::path Path(const std::string& tenant, const char* kind,
                             const std::string& id) const;
  // The whole file <root>/<tenant>/<kind>/<id>.safetensors; NOT_FOUND unless a regular file.
  absl::StatusOr<std::string> ReadWhole(const std::string& tenant, const char* kind,
                                        const std::string& id) const;
  // The whole file <root>/<folders...>/<name>.safetensors, each folder opened without following
  // a symbolic link; NOT_FOUND unless a regular file.
  absl::StatusOr<std::string> ReadWholeIn(const std::vector<std::string>& folders,
                                          const std::string& name) const;
  std::filesystem::path BlobPath(const std::string& tenant, const std::string& id,
                                 const std::string& name) const;
  // Every <root>/<tenant>/<kind>/*.safetensors by id, with its metadata or why it is not whole;
  // `sizes` (optional) receives the file sizes in the same order.
  std::vector<std::pair<std::string, absl::StatusOr<CheckpointMeta>>> InspectAll(
      const std::string& tenant, const char* kind, std::vector<uint64_t>* sizes) const;

  const std::filesystem::path root_;
};

}  // namespace ttt::session::internal
