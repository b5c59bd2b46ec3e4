// The credentials of the server: the credentials file (--auth_tokens_file, format in
// internal/tokens_file.h: bearer-token hashes and client-certificate identities) held in memory
// and kept current. It re-reads the file when it changes (polled by a watcher thread:
// a Kubernetes Secret update swaps a symlink, which inotify on the file would miss) and on
// SIGHUP. A file that fails to parse leaves the last good credentials in force and says so on
// stderr: a typo while rotating must not lock every client out, nor let anyone in.
//
// Thread-safety: thread-safe; Lookup may run on any thread while a reload happens.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "auth/internal/file_watcher.h"
#include "auth/internal/tokens_file.h"
#include "auth/scopes.h"

namespace ttt::auth {

using internal::TenantValidator;

// Whom a token or a certificate identity names.
struct TokenPrincipal {
  std::string tenant;
  ScopeSet scopes = ScopeSet::Of(Scope::kWrite);
};

struct TokenStoreOptions {
  std::string path;
  TenantValidator validate_tenant;  // null: any name without whitespace
  int poll_interval_ms = 1000;      // how often the watcher looks at the file (0: no watcher)
  // Called after each reload attempt (not the first load) with its result; for metrics.
  std::function<void(bool ok)> on_reload;
};

class TokenStore {
 public:
  // Loads the file; its errors (NOT_FOUND, PERMISSION_DENIED, INVALID_ARGUMENT with the line)
  // fail the start. Starts the watcher when poll_interval_ms > 0.
  static absl::StatusOr<std::unique_ptr<TokenStore>> Open(TokenStoreOptions options);
  ~TokenStore() = default;  // stops the watcher first (declared last)

  // The tenant and scope of a presented token, or nullopt. Hashes the token and compares it
  // with every entry in constant time (no early exit). The token is neither kept nor logged.
  std::optional<TokenPrincipal> Lookup(absl::string_view token) const;
  // The tenant and scopes of a client-certificate identity ("cn:alice", "uri:spiffe://..."; see
  // internal/x509_identity.h), or nullopt when the file has no line for it. Exact match.
  std::optional<TokenPrincipal> LookupCertificate(absl::string_view identity) const;

  // Re-reads the file now. On error keeps the current credentials, logs one line and returns
  // the error.
  absl::Status Reload();

  // Lines in force (tokens and certificate identities).
  size_t credential_count() const;
  // Successful loads so far (1 after Open).
  uint64_t generation() const { return generation_.load(); }
  uint64_t failed_reloads() const { return failed_reloads_.load(); }
  const std::string& path() const { return options_.path; }

 private:
  explicit TokenStore(TokenStoreOptions options) : options_(std::move(options)) {}
  absl::Status Load();

  const TokenStoreOptions options_;
  mutable std::mutex mu_;
  std::shared_ptr<const internal::CredentialsFile> entries_;  // guarded by mu_
  std::atomic<uint64_t> generation_{0};
  std::atomic<uint64_t> failed_reloads_{0};
  std::unique_ptr<internal::FileWatcher> watcher_;  // last: stops before the rest goes
};

// SIGHUP makes every watched file reload (see internal/file_watcher.h); main() installs it.
using internal::InstallSighupReload;

}  // namespace ttt::auth
