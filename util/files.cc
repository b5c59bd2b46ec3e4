// WriteFileAtomically and the clean-up of its abandoned temporaries (see files.h).
#include "util/files.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <random>

#include "absl/strings/str_cat.h"

namespace ttt::util {
namespace {

// Writes all of `bytes` to `fd`, retrying short writes and EINTR.
absl::Status WriteAll(int fd, const std::string& bytes, const std::string& what) {
  const char* p = bytes.data();
  size_t left = bytes.size();
  while (left > 0) {
    ssize_t n = ::write(fd, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, absl::StrCat("writing ", what));
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

// A name no other writer (another process, or another thread of this one) will pick.
constexpr char kTempMarker[] = ".tmp.";
std::string TempSuffix() {
  static std::atomic<uint64_t> counter{0};
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return absl::StrCat(kTempMarker, ::getpid(), ".", absl::Hex(rng(), absl::kZeroPad16),
                      absl::Hex(counter.fetch_add(1)));
}

// Whether `name` is one of TempSuffix's: "<final name>.tmp.<pid>.<hex>".
bool IsTempName(const std::string& name) {
  const size_t marker = name.rfind(kTempMarker);
  if (marker == std::string::npos || marker == 0) return false;
  const size_t pid = marker + std::strlen(kTempMarker);
  const size_t dot = name.find('.', pid);
  if (dot == std::string::npos || dot == pid || dot + 1 == name.size()) return false;
  const auto all = [&](size_t from, size_t to, const char* set) {
    return name.find_first_not_of(set, from) >= to;
  };
  return all(pid, dot, "0123456789") &&
         name.find_first_not_of("0123456789abcdef", dot + 1) == std::string::npos;
}

}  // namespace

absl::Status WriteFileAtomically(const std::filesystem::path& path, const std::string& bytes) {
  if (path.filename().empty()) {
    return absl::InvalidArgumentError(absl::StrCat("not a file path: ", path.string()));
  }
  const std::filesystem::path dir = path.has_parent_path() ? path.parent_path() : ".";
  const std::string final_name = path.string();
  const std::string tmp_name = final_name + TempSuffix();

  const int fd = ::open(tmp_name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("creating ", tmp_name));
  // Locked until renamed or removed, so RemoveAbandonedTempFiles (another server starting on this
  // folder) tells this live writer's file from one whose writer died. A fresh file: no one else
  // holds it, and the kernel drops the lock if this process dies.
  ::flock(fd, LOCK_EX | LOCK_NB);
  absl::Status status = WriteAll(fd, bytes, tmp_name);
  // Data must be durable before the rename makes it visible under the final name.
  if (status.ok() && ::fsync(fd) != 0) {
    status = absl::ErrnoToStatus(errno, absl::StrCat("fsync ", tmp_name));
  }
  if (status.ok() && ::rename(tmp_name.c_str(), final_name.c_str()) != 0) {
    status = absl::ErrnoToStatus(errno, absl::StrCat("renaming ", tmp_name, " to ", final_name));
  }
  if (!status.ok()) ::unlink(tmp_name.c_str());
  if (::close(fd) != 0 && status.ok()) {  // after the rename: the lock covers it
    status = absl::ErrnoToStatus(errno, absl::StrCat("closing ", final_name));
  }
  if (!status.ok()) return status;
  // Make the rename itself durable.
  const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("opening ", dir.string()));
  if (::fsync(dir_fd) != 0) {
    const int err = errno;
    ::close(dir_fd);
    return absl::ErrnoToStatus(err, absl::StrCat("fsync ", dir.string()));
  }
  ::close(dir_fd);
  return absl::OkStatus();
}

int RemoveAbandonedTempFiles(const std::filesystem::path& dir) {
  const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (dir_fd < 0) return 0;
  DIR* d = ::fdopendir(dir_fd);
  if (d == nullptr) {
    ::close(dir_fd);
    return 0;
  }
  int removed = 0;
  while (const dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (!IsTempName(name)) continue;
    // Not following links, and not blocking on a FIFO: only regular files are temporaries.
    const int fd = ::openat(dir_fd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) continue;
    struct stat st;
    // A lock we can take means no live writer holds the file; then remove it unless it was
    // renamed (into place) or replaced meanwhile.
    if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && ::flock(fd, LOCK_EX | LOCK_NB) == 0) {
      struct stat now;
      if (::fstatat(dir_fd, name.c_str(), &now, AT_SYMLINK_NOFOLLOW) == 0 &&
          now.st_ino == st.st_ino && now.st_dev == st.st_dev &&
          ::unlinkat(dir_fd, name.c_str(), 0) == 0) {
        ++removed;
      }
    }
    ::close(fd);
  }
  ::closedir(d);  // closes dir_fd
  return removed;
}

}  // namespace ttt::util
