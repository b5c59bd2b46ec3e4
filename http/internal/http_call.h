// What the HTTP front door's handlers share: the caller's headers that travel as gRPC metadata,
// a failed call, and a reply whose body is either whole or produced piece by piece (a stream of
// server-sent events or bytes) as the gRPC responses arrive. No libmicrohttpd here:
// http_gateway.cc turns a Reply into its response.
#pragma once

#include <grpcpp/client_context.h>
#include <grpcpp/support/status.h>
#include <grpcpp/support/sync_stream.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>

namespace ttt::http::internal {

// The caller's headers that travel to the gRPC service as metadata.
struct Forwarded {
  std::optional<std::string> authorization;
  std::optional<std::string> tenant;
  std::optional<std::string> session;

  void AttachTo(grpc::ClientContext* ctx) const {
    if (authorization) ctx->AddMetadata("authorization", *authorization);
    if (tenant) ctx->AddMetadata("x-tenant-id", *tenant);
    if (session) ctx->AddMetadata("x-session-id", *session);
  }
};

// The service's retry hint for a refusal (server/status.h: `retry-after-ms`), if any.
inline std::optional<int64_t> RetryAfterMs(const grpc::ClientContext& ctx) {
  const auto& trailers = ctx.GetServerTrailingMetadata();
  auto it = trailers.find("retry-after-ms");
  if (it == trailers.end()) return std::nullopt;
  return std::strtoll(std::string(it->second.data(), it->second.size()).c_str(), nullptr, 10);
}

// Ends a server stream whose reader went away: cancels the call and drains it. REQUIRES: the
// stream's Finish was not called yet.
template <typename Response>
void CancelStream(grpc::ClientContext* ctx, grpc::ClientReader<Response>* reader) {
  ctx->TryCancel();
  Response ignored;
  while (reader->Read(&ignored)) {
  }
  reader->Finish();
}

// A failed call: its status and, for a rate refusal, when to retry.
struct Failure {
  grpc::Status status;
  std::optional<int64_t> retry_after_ms;
};

inline grpc::Status ShuttingDown() {
  return grpc::Status(grpc::StatusCode::UNAVAILABLE, "ttt-serve is shutting down");
}

// A response body produced piece by piece on the connection's thread. Destroyed when the
// response is done or the client went away: it ends its calls then.
class ChunkSource {
 public:
  enum class Step {
    kData,   // *out holds the next piece (non-empty)
    kEnd,    // the body is complete
    kAbort,  // the body cannot be completed: the connection is cut, so the client sees it short
  };
  virtual ~ChunkSource() = default;
  virtual Step Next(std::string* out) = 0;
};

// An answer to one request.
struct Reply {
  unsigned status = 200;
  std::string content_type = "application/json";
  std::string body;  // the whole body, unless `stream` is set
  std::optional<int64_t> retry_after_ms;
  std::unique_ptr<ChunkSource> stream;
  std::optional<uint64_t> content_length;  // of a stream, when known in advance
};

}  // namespace ttt::http::internal
