// The TLS files of the gRPC port kept current without ever applying a broken set: the server's
// certificate chain and key, the client CA bundle and the certificate revocation list (CRL).
//
// gRPC's file-watching certificate provider reads whatever the files hold, so a garbage CA file,
// or a certificate replaced before its key, would fail every new handshake. Here the operator's
// files are read, checked (PEM that parses, a key that matches the certificate, a CRL signed by
// a CA of the bundle) and only then copied into a private staging folder, which is what gRPC's
// provider watches. A set that fails the checks is logged and counted (on_reload(false)); the
// last good one keeps serving. Files are re-read when they change (polled, as a Kubernetes
// Secret update swaps a symlink) and on SIGHUP.
//
// The CRL (PEM, one or more `X509 CRL` blocks) is also the RevocationCheck the authorizer asks
// on every call, so a revoked certificate is refused on its next call, on new and established
// connections alike.
//
// Thread-safety: thread-safe; IsRevoked may run on any thread while a reload happens.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "auth/authorizer.h"
#include "auth/internal/file_watcher.h"

namespace ttt::auth {

struct TlsMaterialOptions {
  std::string cert_file;        // PEM certificate chain (required)
  std::string key_file;         // PEM private key (required)
  std::string client_ca_file;   // PEM CA bundle; empty: no mutual TLS
  std::string crl_file;         // PEM CRLs of the client CAs; empty: nothing revoked
  int poll_interval_ms = 1000;  // how often the files are looked at (0: no watcher, tests)
  // Called after each reload attempt (not the first load) with its result; for metrics.
  std::function<void(bool ok)> on_reload;
};

class TlsMaterial final : public RevocationCheck {
 public:
  // Reads and checks the files and stages them. INVALID_ARGUMENT naming the flag and what is
  // wrong (unreadable, not PEM, key does not match the certificate, CRL without its CA or with
  // a bad signature, a CRL without a client CA): the start fails.
  static absl::StatusOr<std::unique_ptr<TlsMaterial>> Open(TlsMaterialOptions options);
  ~TlsMaterial() override;  // stops the watchers, removes the staging folder

  // Re-reads the operator's files now: applies them when they pass the checks, else keeps the
  // last good set, logs one line and returns the error.
  absl::Status Reload();

  // The staged copies gRPC's certificate provider watches.
  std::string staged_cert_file() const { return staging_dir_ + "/tls.crt"; }
  std::string staged_key_file() const { return staging_dir_ + "/tls.key"; }
  std::string staged_client_ca_file() const;  // empty without a client CA
  bool mutual() const { return !options_.client_ca_file.empty(); }

  bool IsRevoked(absl::string_view issuer_der, absl::string_view serial_hex) const override;

  uint64_t failed_reloads() const { return failed_reloads_.load(); }
  size_t revoked_count() const;

 private:
  using Revoked = std::set<std::pair<std::string, std::string>>;  // (issuer DER, serial hex)
  explicit TlsMaterial(TlsMaterialOptions options) : options_(std::move(options)) {}
  absl::Status Load();

  const TlsMaterialOptions options_;
  std::string staging_dir_;
  std::mutex load_mu_;  // one Load at a time (the watchers and Reload)
  mutable std::mutex mu_;
  std::shared_ptr<const Revoked> revoked_;  // guarded by mu_
  std::atomic<uint64_t> failed_reloads_{0};
  std::vector<std::unique_ptr<internal::FileWatcher>> watchers_;  // last: stop first
};

}  // namespace ttt::auth
