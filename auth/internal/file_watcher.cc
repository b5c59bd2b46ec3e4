// See file_watcher.h.
#include "auth/internal/file_watcher.h"

#include <sys/stat.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace ttt::auth::internal {

namespace {

std::atomic<uint64_t> g_sighups{0};

void OnSighup(int) { g_sighups.fetch_add(1, std::memory_order_relaxed); }

}  // namespace

void InstallSighupReload() {
  struct sigaction sa;
  std::memset(&sa, 0, sizeof(sa));
  sa.sa_handler = OnSighup;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGHUP, &sa, nullptr);
}

uint64_t SighupCount() { return g_sighups.load(std::memory_order_relaxed); }

std::string FileIdentity(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return "missing";
  return absl::StrCat(st.st_dev, ":", st.st_ino, ":", st.st_size, ":", st.st_mtim.tv_sec, ".",
                      st.st_mtim.tv_nsec, ":", st.st_ctim.tv_sec, ".", st.st_ctim.tv_nsec);
}

absl::StatusOr<std::string> ReadConfigFile(const std::string& path, absl::string_view what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int err = errno;
    const std::string why =
        absl::StrCat("cannot read the ", what, " ", path, ": ", std::strerror(err));
    if (err == ENOENT) return absl::NotFoundError(why);
    if (err == EACCES) return absl::PermissionDeniedError(why);
    return absl::FailedPreconditionError(why);
  }
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

FileWatcher::FileWatcher(std::string path, int poll_interval_ms, std::function<void()> on_change)
    : path_(std::move(path)),
      poll_interval_ms_(poll_interval_ms),
      on_change_(std::move(on_change)),
      identity_(FileIdentity(path_)),
      sighups_(SighupCount()) {
  thread_ = std::thread([this] { Loop(); });
}

FileWatcher::~FileWatcher() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void FileWatcher::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    cv_.wait_for(lock, std::chrono::milliseconds(poll_interval_ms_));
    if (stop_) break;
    lock.unlock();
    const uint64_t sighups = SighupCount();
    std::string identity = FileIdentity(path_);
    if (sighups != sighups_ || identity != identity_) {
      sighups_ = sighups;
      identity_ = std::move(identity);
      on_change_();
    }
    lock.lock();
  }
}

}  // namespace ttt::auth::internal
