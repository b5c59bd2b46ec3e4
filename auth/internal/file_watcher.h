// Watches one file for the reloadable configuration files (tokens, quotas): calls back when
// the file changes or a SIGHUP arrives. Polls stat() rather than inotify: a Kubernetes Secret
// or ConfigMap update swaps a symlink above the file, which a watch on the file would miss.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ttt::auth::internal {

// Installs a process-wide SIGHUP handler after which every TokenStore's watcher reloads its
// file at its next poll. Call once from main(); idempotent.
void InstallSighupReload();
// How many SIGHUPs arrived since InstallSighupReload (for the watchers; async-signal-safe).
uint64_t SighupCount();

// Device, inode, size, modification and change times ("missing" when stat fails): any rewrite
// or rename over the path changes it.
std::string FileIdentity(const std::string& path);

// The whole file; NOT_FOUND / PERMISSION_DENIED / FAILED_PRECONDITION say "cannot read the
// <what> <path>: <reason>".
absl::StatusOr<std::string> ReadConfigFile(const std::string& path, absl::string_view what);

// Thread-safety: construct and destroy on one thread; on_change runs on the watcher's thread.
class FileWatcher {
 public:
  // Starts polling every `poll_interval_ms` (> 0). `on_change` is called when FileIdentity(path)
  // differs from the last poll's (the first poll compares with the identity at construction)
  // or SighupCount() moved.
  FileWatcher(std::string path, int poll_interval_ms, std::function<void()> on_change);
  ~FileWatcher();  // stops and joins; on_change is not called afterwards

 private:
  void Loop();

  const std::string path_;
  const int poll_interval_ms_;
  const std::function<void()> on_change_;
  std::string identity_;  // watcher thread only (after construction)
  uint64_t sighups_ = 0;  // watcher thread only (after construction)
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;  // guarded by mu_
  std::thread thread_;
};

}  // namespace ttt::auth::internal
