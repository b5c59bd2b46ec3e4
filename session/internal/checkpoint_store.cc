// The checkpoint directory (see checkpoint_store.h).
#include "session/internal/checkpoint_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <system_error>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "session/internal/names.h"
#include "util/files.h"
#include "util/log.h"
#include "util/status_macros.h"

namespace ttt::session::internal {

namespace fs = std::filesystem;

namespace {

constexpr char kExtension[] = ".safetensors";
constexpr char kCheckpoints[] = "checkpoints";
constexpr char kSessions[] = "sessions";
constexpr char kBlobs[] = "blobs";

// An owned file descriptor.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  Fd& operator=(Fd&& o) noexcept {
    std::swap(fd_, o.fd_);
    return *this;
  }
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }
  bool ok() const { return fd_ >= 0; }

 private:
  int fd_;
};

// Opens `name` in `dir` as a directory, not following a symbolic link.
Fd OpenSubdir(int dir, const std::string& name) {
  return Fd(::openat(dir, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
}

// An open regular file and its size.
struct RegularFile {
  Fd fd;
  uint64_t size = 0;
};

// Opens `name` in `dir` for reading only if it is a regular file: a symbolic link is not
// followed (O_NOFOLLOW), and a FIFO or device neither blocks the open (O_NONBLOCK) nor is read.
// NOT_FOUND for anything else.
absl::StatusOr<RegularFile> OpenRegular(int dir, const std::string& name) {
  Fd fd(::openat(dir, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
  if (!fd.ok()) return absl::NotFoundError(absl::StrCat(name, ": ", std::strerror(errno)));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
    return absl::NotFoundError(absl::StrCat(name, " is not a regular file"));
  }
  const int flags = ::fcntl(fd.get(), F_GETFL);
  if (flags < 0 || ::fcntl(fd.get(), F_SETFL, flags & ~O_NONBLOCK) != 0) {
    return absl::InternalError(absl::StrCat("fcntl on ", name, ": ", std::strerror(errno)));
  }
  return RegularFile{std::move(fd), static_cast<uint64_t>(st.st_size)};
}

// Up to `n` bytes from the start of `fd`.
absl::StatusOr<std::string> ReadPrefix(int fd, uint64_t n, const std::string& what) {
  std::string out(n, '\0');
  uint64_t got = 0;
  while (got < n) {
    const ssize_t r = ::pread(fd, out.data() + got, n - got, static_cast<off_t>(got));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0)
      return absl::DataLossError(absl::StrCat("cannot read ", what, ": ", std::strerror(errno)));
    if (r == 0) break;
    got += static_cast<uint64_t>(r);
  }
  out.resize(got);
  return out;
}

// The metadata of a checkpoint file, checked as far as a listing can without reading it all.
absl::StatusOr<CheckpointMeta> Inspect(int dir, const std::string& name, const std::string& source,
                                       uint64_t* size) {
  ASSIGN_OR_RETURN(RegularFile f, OpenRegular(dir, name));
  *size = f.size;
  ASSIGN_OR_RETURN(std::string first8, ReadPrefix(f.fd.get(), 8, source));
  ASSIGN_OR_RETURN(uint64_t head_size, CheckpointHeadSize(first8, f.size, source));
  ASSIGN_OR_RETURN(std::string head, ReadPrefix(f.fd.get(), head_size, source));
  if (head.size() != head_size) return absl::DataLossError(absl::StrCat(source, " shrank"));
  return InspectCheckpoint(head, f.size, source);
}

// The ids of `<dir>/*.safetensors` (temporary files end otherwise and are never listed).
std::vector<std::string> IdsIn(int dir_fd) {
  std::vector<std::string> ids;
  const int dup = ::dup(dir_fd);
  if (dup < 0) return ids;
  DIR* dir = ::fdopendir(dup);
  if (dir == nullptr) {
    ::close(dup);
    return ids;
  }
  while (const dirent* e = ::readdir(dir)) {
    const std::string name = e->d_name;
    if (!absl::EndsWith(name, kExtension)) continue;
    std::string id = name.substr(0, name.size() - std::strlen(kExtension));
    if (ValidateName(id, "id", 128).ok()) ids.push_back(std::move(id));
  }
  ::closedir(dir);
  std::sort(ids.begin(), ids.end());
  return ids;
}

absl::Status WriteAtomically(const fs::path& path, const std::string& bytes) {
  std::error_code ec;
  fs::create_directories(path.parent_path(), ec);
  return util::WriteFileAtomically(path, bytes);
}

// Creates `path` with `bytes`, failing if it exists; durable (file and folder fsync'd) on OK.
// Subfolders of `dir_fd` with valid names (names.h), symbolic links left out.
std::vector<std::string> FoldersIn(int dir_fd) {
  std::vector<std::string> out;
  const int dup = ::dup(dir_fd);
  DIR* dir = dup < 0 ? nullptr : ::fdopendir(dup);
  if (dir == nullptr) {
    if (dup >= 0) ::close(dup);
    return out;
  }
  while (const dirent* e = ::readdir(dir)) {
    struct stat st;
    if (ValidateName(e->d_name, "name", 128).ok() &&
        ::fstatat(dir_fd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode)) {
      out.emplace_back(e->d_name);
    }
  }
  ::closedir(dir);
  return out;
}

absl::Status WriteExclusively(const fs::path& path, const std::string& bytes) {
  Fd fd;
  // The garbage sweep removes empty folders of deleted sessions; a new session of the same id
  // may find its folder gone between creating it and opening the file: create it again.
  for (int attempt = 0; attempt < 3 && !fd.ok(); ++attempt) {
    std::error_code ec;
    fs::create_directories(path.parent_path(), ec);
    fd = Fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644));
    if (!fd.ok() && errno != ENOENT) break;
  }
  if (!fd.ok()) {
    if (errno == EEXIST) return absl::AlreadyExistsError(absl::StrCat(path.string(), " exists"));
    return absl::ErrnoToStatus(errno, absl::StrCat("creating ", path.string()));
  }
  absl::Status status;
  for (size_t done = 0; done < bytes.size() && status.ok();) {
    const ssize_t n = ::write(fd.get(), bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) status = absl::ErrnoToStatus(errno, absl::StrCat("writing ", path.string()));
    if (n > 0) done += static_cast<size_t>(n);
  }
  if (status.ok() && ::fsync(fd.get()) != 0) {
    status = absl::ErrnoToStatus(errno, absl::StrCat("fsync ", path.string()));
  }
  Fd dir(::open(path.parent_path().c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (status.ok() && (!dir.ok() || ::fsync(dir.get()) != 0)) {
    status = absl::ErrnoToStatus(errno, absl::StrCat("fsync ", path.parent_path().string()));
  }
  if (!status.ok()) ::unlink(path.c_str());  // a torn blob is nobody's
  return status;
}

absl::Status CheckpointNotFound(const std::string& id) {
  return absl::NotFoundError(absl::StrCat("checkpoint ", Quote(id), " not found"));
}

}  // namespace

absl::Status CheckpointStore::Init() const {
  std::error_code ec;
  fs::create_directories(root_, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create checkpoint directory ", root_.string(), ": ", ec.message()));
  }
  RemoveAbandonedTempFiles();
  return absl::OkStatus();
}

void CheckpointStore::RemoveAbandonedTempFiles() const {
  std::error_code ec;
  for (const auto& tenant_dir : fs::directory_iterator(root_, ec)) {
    const std::string tenant = tenant_dir.path().filename().string();
    if (tenant_dir.is_symlink(ec) || !ValidateName(tenant, "tenant", 64).ok()) continue;
    for (const char* kind : {kCheckpoints, kSessions}) {
      const fs::path dir = root_ / tenant / kind;
      const int removed = util::RemoveAbandonedTempFiles(dir);
      if (removed > 0) {
        util::LogInfo("session",
                      absl::StrCat("removed ", removed,
                                   " temporary files of interrupted writes in ", dir.string()));
      }
    }
  }
}

fs::path CheckpointStore::Path(const std::string& tenant, const char* kind,
                               const std::string& id) const {
  return root_ / tenant / kind / (id + kExtension);
}

std::string CheckpointStore::SessionFileName(const std::string& tenant,
                                             const std::string& id) const {
  return Path(tenant, kSessions, id).string();
}

absl::StatusOr<std::string> CheckpointStore::ReadWhole(const std::string& tenant, const char* kind,
                                                       const std::string& id) const {
  return ReadWholeIn({tenant, kind}, id);
}

absl::StatusOr<std::string> CheckpointStore::ReadWholeIn(const std::vector<std::string>& folders,
                                                         const std::string& name) const {
  fs::path path = root_;
  Fd dir(::open(root_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  for (const std::string& folder : folders) {
    path /= folder;
    if (dir.ok()) dir = OpenSubdir(dir.get(), folder);
  }
  path /= name + kExtension;
  if (!dir.ok()) return absl::NotFoundError(absl::StrCat("no folder for ", path.string()));
  ASSIGN_OR_RETURN(RegularFile f, OpenRegular(dir.get(), name + kExtension));
  ASSIGN_OR_RETURN(std::string bytes, ReadPrefix(f.fd.get(), f.size, path.string()));
  if (bytes.size() != f.size) {
    return absl::DataLossError(
        absl::StrCat("cannot read ", path.string(), ": it shrank while read"));
  }
  return bytes;
}

fs::path CheckpointStore::BlobPath(const std::string& tenant, const std::string& id,
                                   const std::string& name) const {
  return root_ / tenant / kBlobs / id / (name + kExtension);
}

absl::Status CheckpointStore::WriteBlob(const std::string& tenant, const std::string& id,
                                        const std::string& name, const std::string& bytes) const {
  return WriteExclusively(BlobPath(tenant, id, name), bytes);
}

absl::StatusOr<std::string> CheckpointStore::ReadBlob(const std::string& tenant,
                                                      const std::string& id,
                                                      const std::string& name) const {
  return ReadWholeIn({tenant, kBlobs, id}, name);
}

void CheckpointStore::DeleteBlob(const std::string& tenant, const std::string& id,
                                 const std::string& name) const {
  std::error_code ec;
  fs::remove(BlobPath(tenant, id, name), ec);
}

std::vector<CheckpointStore::BlobFolder> CheckpointStore::ListBlobFolders() const {
  std::vector<BlobFolder> out;
  Fd root(::open(root_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!root.ok()) return out;
  for (const std::string& tenant : FoldersIn(root.get())) {
    Fd tenant_dir = OpenSubdir(root.get(), tenant);
    Fd blobs = tenant_dir.ok() ? OpenSubdir(tenant_dir.get(), kBlobs) : Fd();
    if (!blobs.ok()) continue;
    for (const std::string& id : FoldersIn(blobs.get())) {
      Fd session_dir = OpenSubdir(blobs.get(), id);
      if (!session_dir.ok()) continue;
      BlobFolder folder{tenant, id, {}};
      for (const std::string& name : IdsIn(session_dir.get())) {
        struct stat st;
        const std::string file = name + kExtension;
        if (::fstatat(session_dir.get(), file.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 &&
            S_ISREG(st.st_mode)) {
          folder.blobs.emplace_back(name, absl::TimeFromTimespec(st.st_mtim));
        }
      }
      out.push_back(std::move(folder));
    }
  }
  return out;
}

void CheckpointStore::RemoveEmptyBlobFolder(const std::string& tenant,
                                            const std::string& id) const {
  std::error_code ec;
  fs::remove(root_ / tenant / kBlobs / id, ec);  // fails, harmlessly, unless empty
}

std::vector<std::pair<std::string, absl::StatusOr<CheckpointMeta>>> CheckpointStore::InspectAll(
    const std::string& tenant, const char* kind, std::vector<uint64_t>* sizes) const {
  std::vector<std::pair<std::string, absl::StatusOr<CheckpointMeta>>> out;
  Fd root(::open(root_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  Fd tenant_dir = root.ok() ? OpenSubdir(root.get(), tenant) : Fd();
  Fd dir = tenant_dir.ok() ? OpenSubdir(tenant_dir.get(), kind) : Fd();
  if (!dir.ok()) return out;
  for (std::string& id : IdsIn(dir.get())) {
    uint64_t size = 0;
    auto meta = Inspect(dir.get(), id + kExtension, Path(tenant, kind, id).string(), &size);
    if (sizes != nullptr) sizes->push_back(size);
    out.emplace_back(std::move(id), std::move(meta));
  }
  return out;
}

absl::Status CheckpointStore::WriteCheckpoint(const std::string& tenant, const std::string& id,
                                              const std::string& bytes) const {
  return WriteAtomically(Path(tenant, kCheckpoints, id), bytes);
}

absl::StatusOr<std::string> CheckpointStore::ReadCheckpoint(const std::string& tenant,
                                                            const std::string& id) const {
  auto bytes = ReadWhole(tenant, kCheckpoints, id);
  if (absl::IsNotFound(bytes.status())) return CheckpointNotFound(id);
  return bytes;
}

absl::Status CheckpointStore::DeleteCheckpoint(const std::string& tenant,
                                               const std::string& id) const {
  std::error_code ec;
  if (!fs::remove(Path(tenant, kCheckpoints, id), ec)) return CheckpointNotFound(id);
  return absl::OkStatus();
}

std::vector<CheckpointInfo> CheckpointStore::ListCheckpoints(const std::string& tenant) const {
  std::vector<CheckpointInfo> out;
  std::vector<uint64_t> sizes;
  auto all = InspectAll(tenant, kCheckpoints, &sizes);
  for (size_t i = 0; i < all.size(); ++i) {
    auto& [id, meta] = all[i];
    if (!meta.ok()) continue;  // not a regular file, or not a whole checkpoint: not offered
    CheckpointInfo info;
    info.id = id;
    info.size_bytes = static_cast<int64_t>(sizes[i]);
    info.session_id = meta->session_id;
    info.create_time_unix_ms = meta->created_unix_ms;
    info.model_fingerprint = meta->model_fingerprint;
    info.counters = meta->counters;
    info.options = meta->options;
    out.push_back(std::move(info));
  }
  return out;
}

absl::Status CheckpointStore::WriteSession(const std::string& tenant, const std::string& id,
                                           const std::string& bytes) const {
  return WriteAtomically(Path(tenant, kSessions, id), bytes);
}

absl::StatusOr<std::string> CheckpointStore::ReadSession(const std::string& tenant,
                                                         const std::string& id) const {
  return ReadWhole(tenant, kSessions, id);
}

void CheckpointStore::RemoveSession(const std::string& tenant, const std::string& id) const {
  std::error_code ec;
  fs::remove(Path(tenant, kSessions, id), ec);
}

absl::StatusOr<CheckpointMeta> CheckpointStore::InspectSession(const std::string& tenant,
                                                               const std::string& id) const {
  Fd root(::open(root_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  Fd tenant_dir = root.ok() ? OpenSubdir(root.get(), tenant) : Fd();
  Fd dir = tenant_dir.ok() ? OpenSubdir(tenant_dir.get(), kSessions) : Fd();
  if (!dir.ok()) return absl::NotFoundError(absl::StrCat("no session file for ", Quote(id)));
  uint64_t size = 0;
  return Inspect(dir.get(), id + kExtension, Path(tenant, kSessions, id).string(), &size);
}

bool CheckpointStore::HasSession(const std::string& tenant, const std::string& id) const {
  std::error_code ec;
  return fs::exists(fs::symlink_status(Path(tenant, kSessions, id), ec));
}

absl::Status CheckpointStore::MoveSessionToCheckpoints(const std::string& tenant,
                                                       const std::string& id) const {
  const fs::path to = Path(tenant, kCheckpoints, id);
  std::error_code ec;
  fs::create_directories(to.parent_path(), ec);
  if (fs::exists(fs::symlink_status(to, ec))) {
    return absl::AlreadyExistsError(absl::StrCat(to.string(), " exists"));
  }
  fs::rename(Path(tenant, kSessions, id), to, ec);
  if (ec) return absl::InternalError(absl::StrCat("moving to ", to.string(), ": ", ec.message()));
  return absl::OkStatus();
}

std::vector<CheckpointStore::PersistedSession> CheckpointStore::ListSessions(
    const std::string& model_fingerprint) const {
  std::vector<PersistedSession> out;
  std::error_code ec;
  for (const auto& tenant_dir : fs::directory_iterator(root_, ec)) {
    const std::string tenant = tenant_dir.path().filename().string();
    if (!ValidateName(tenant, "tenant", 64).ok()) continue;
    for (auto& [id, meta] : InspectAll(tenant, kSessions, nullptr)) {
      const std::string path = Path(tenant, kSessions, id).string();
      if (!meta.ok()) {
        util::LogWarning("session", absl::StrCat("skipping persisted session ", path, ": ",
                                                 meta.status().message()));
        continue;
      }
      if (meta->model_fingerprint != model_fingerprint) {
        util::LogWarning("session",
                         absl::StrCat("skipping persisted session ", path, ": another model's"));
        continue;
      }
      if (meta->session_id != id) continue;
      out.push_back({tenant, id, std::move(*meta)});
    }
  }
  return out;
}

}  // namespace ttt::session::internal
