// The HTTP endpoint that serves /metrics: libmicrohttpd's event loop (epoll, one thread), so a
// slow or idle client costs a socket and a small buffer, never the thread that answers the
// scrape. Why not prometheus-cpp's own Exposer: Debian builds civetweb with a fixed 100 KiB
// thread stack (USE_STACK_SIZE=102400), and a process that links LibTorch carries ~110 KiB of
// static TLS (OpenBLAS 60 KiB, glog 30 KiB, libtorch_cpu 10 KiB), which glibc must fit into
// every thread's stack: pthread_create answers EINVAL and CivetServer does not start. Its
// thread-per-connection model would also let 20 idle connections hold every worker.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"

namespace ttt::server {

struct HttpExposerOptions {
  // Connections open at once. A new connection past it closes the connection idle longest (no
  // request in flight: connected and silent, or between requests), so idle clients cannot lock a
  // scraper out; with none idle the new connection is closed.
  unsigned max_connections = 128;
  // A connection that sends or reads nothing for this long is closed.
  unsigned idle_timeout_s = 15;
  // Whole-request deadline, from accept (or the previous request) until the request's header is
  // in and its response is sent: a client trickling one byte a second is cut off here.
  std::chrono::milliseconds request_deadline{std::chrono::seconds(30)};
  // Per-connection memory (request line, headers, response head); a larger header gets 431.
  size_t connection_memory_bytes = 32 * 1024;
  // When set, every GET's `Authorization` header value (nullopt: none) must pass: an
  // UNAUTHENTICATED status answers 401 with `WWW-Authenticate: Bearer`, any other error 403,
  // the status message as the body (--metrics_auth). Runs on the server's thread.
  std::function<absl::Status(const std::optional<std::string>&)> authorize;
  // When set, GET /readyz answers 200 "ready" while it returns true and 503 "not ready" otherwise
  // (the server loading its model, or draining after SIGTERM): a readiness check that needs the
  // server process itself to answer. Not behind `authorize` (probes and routers carry no token,
  // and it says nothing more than the gRPC health service). Runs on the server's thread.
  std::function<bool()> ready;
  // PEM certificate chain and key: serve HTTPS (--metrics_tls_cert_file/--metrics_tls_key_file).
  // Both or neither. Read once at start: rotating them needs a restart.
  std::string tls_cert_pem;
  std::string tls_key_pem;
};

// Serves GET/HEAD /metrics (and /) with the body `render` returns, /readyz when options.ready is
// set, 404 elsewhere, 405 for other methods. Thread-safety: `render` runs on the server's
// thread, concurrently with the caller's threads; the object itself is only created and
// destroyed.
class HttpExposer {
 public:
  using Render = std::function<std::string()>;

  // Binds `address` ("host:port", "[v6]:port" or ":port"; port 0 picks one) and starts serving.
  // FAILED_PRECONDITION naming the address when it cannot be bound or the server cannot start,
  // and when TLS is asked for but this libmicrohttpd has none; INVALID_ARGUMENT when only one
  // of the certificate and key is given, or they are not a usable pair.
  static absl::StatusOr<std::unique_ptr<HttpExposer>> Start(const std::string& address,
                                                            Render render,
                                                            const HttpExposerOptions& options = {});
  ~HttpExposer();  // stops serving and closes every connection

  int port() const { return port_; }

 private:
  struct State;  // libmicrohttpd's daemon, the connection table, the deadline thread
  HttpExposer() = default;
  std::unique_ptr<State> state_;
  int port_ = 0;
};

}  // namespace ttt::server
