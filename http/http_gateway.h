// The HTTP front door of ttt-serve (--http_listen): OpenAI-compatible POST /v1/completions and
// GET /v1/models, an HTTP/JSON route for every RPC (internal/rest_gateway.h), and GET /healthz
// and /readyz. Every request becomes calls of the server's own
// tttserve.v1 gRPC service over an in-process channel, with the caller's `Authorization` (and
// `x-tenant-id`, `x-session-id`) headers passed through as gRPC metadata: authentication,
// tenants, quotas, metrics and every validation are the gRPC path's, with no second copy here.
// docs/contract.md, "HTTP and OpenAI-compatible API", is the user's contract.
//
// Server: libmicrohttpd (already linked for /metrics) with a thread per connection, at most
// max_connections of them: each request makes blocking gRPC calls on its connection's thread
// and a stream writes its server-sent events as Generate's responses arrive. Simple and
// bounded. HTTP/1.1 only: docs/contract.md ("HTTP/2") says why no HTTP/2 here.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include <grpcpp/channel.h>

#include "absl/status/statusor.h"

namespace ttt::http {

struct HttpGatewayOptions {
  std::string listen;                         // "host:port"; port 0 picks a free one (see port())
  std::string model_id;                       // the name /v1/models lists and `model` must match
  int64_t max_body_bytes = int64_t{8} << 20;  // larger bodies get 413 (an import streams)
  unsigned max_connections = 64;              // each holds a thread while open
  unsigned idle_timeout_s = 60;               // a connection idle this long is closed
  // PEM certificate chain and key: serve HTTPS (both or neither; read once at start).
  std::string tls_cert_pem;
  std::string tls_key_pem;
  // Tokens of a text prompt, for usage.prompt_tokens (the tokenizer Generate uses); null or an
  // error: counted as 0. Called on connection threads.
  std::function<absl::StatusOr<int64_t>(std::string_view)> count_prompt_tokens;
};

// Thread-safety: created and destroyed by one thread; serves on its own threads.
class HttpGateway {
 public:
  // Binds options.listen and starts serving; `channel` reaches the TttService and the
  // grpc.health.v1 service (the server's InProcessChannel) and must stay usable until the
  // gateway is destroyed (calls after the server's shutdown fail, answering 503).
  // FAILED_PRECONDITION naming the address when it cannot be bound or the server cannot start;
  // INVALID_ARGUMENT for a certificate and key libmicrohttpd refuses.
  static absl::StatusOr<std::unique_ptr<HttpGateway>> Start(HttpGatewayOptions options,
                                                            std::shared_ptr<grpc::Channel> channel);
  // No new gRPC call starts from here on (requests get 503); returns once those being started
  // have started. REQUIRES: before the gRPC server's Shutdown (gRPC cannot start a call on an
  // in-process channel whose server is shutting down). Idempotent.
  void StopCalls();
  // Stops calls, stops accepting, closes every connection, waits for their threads.
  ~HttpGateway();

  int port() const { return port_; }

 private:
  struct State;  // libmicrohttpd's daemon, the stubs, the options
  HttpGateway() = default;
  std::unique_ptr<State> state_;
  int port_ = 0;
};

}  // namespace ttt::http
