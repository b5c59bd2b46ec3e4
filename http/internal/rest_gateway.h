// HTTP/JSON transcoding of every tttserve.v1 RPC (issue 25 item 1): a REST route per RPC,
// following Google's HTTP/JSON conventions (resources under /v1, custom methods as ":verb"),
// each translated into the same gRPC call over the server's in-process channel, so that every
// rule (authentication, tenants, quotas, validation, metrics) stays the gRPC path's. Bodies are
// the RPCs' messages in protobuf's JSON mapping (rest_json.h). docs/contract.md, "HTTP/JSON
// routes", is the user's contract.
//
// Streaming RPCs: Ingest takes newline-delimited JSON messages (or a text/plain body) and
// answers newline-delimited JSON; Generate answers server-sent events; ExportSession and
// ImportSession carry the checkpoint bytes as application/octet-stream. A failure after the
// first response ends the body with {"error": google.rpc.Status} (events and lines) or cuts the
// connection (bytes); one before it is the reply's HTTP status.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "http/internal/call_gate.h"
#include "http/internal/http_call.h"
#include "http/internal/rest_json.h"
#include "tttserve/v1/ttt_service.grpc.pb.h"

namespace ttt::http::internal {

class ImportUpload;

struct RestRequest {
  std::string method;
  std::string path;          // decoded, without the query
  std::string content_type;  // "" when absent
  std::string body;
  QueryParams query;
  Forwarded headers;
  ImportUpload* upload = nullptr;  // POST /v1/sessions:import: its body, fed as it arrived
};

// ImportSession fed from an HTTP body as it arrives, in pieces of 1 MiB: the body is not
// bounded by --http_max_body_bytes (checkpoints outgrow it) but by the service's own import
// limits, checked as the bytes arrive. Used by one connection thread.
class ImportUpload {
 public:
  ~ImportUpload();
  // Takes the next bytes of the body. False once the call has ended (refused, or never
  // started): the rest of the body is not wanted, Finish() answers why.
  bool Append(const char* data, size_t size);
  // Sends what is buffered, ends the call, and answers: the new Session, or the refusal.
  Reply Finish();
  // The call could not start (a bad query, shutting down): Finish() answers why.
  bool refused() const { return refused_.has_value(); }

 private:
  friend class RestGateway;
  ImportUpload() = default;
  bool WritePending();

  std::optional<Reply> refused_;  // the call could not start
  grpc::ClientContext ctx_;
  tttserve::v1::Session session_;
  std::unique_ptr<grpc::ClientWriter<tttserve::v1::ImportSessionRequest>> writer_;
  tttserve::v1::ImportSessionRequest pending_;  // the first carries the query's fields
  bool ended_ = false;                          // a Write failed: Finish says why
  bool finished_ = false;
};

// Thread-safe: requests are handled on their connections' threads at once.
class RestGateway {
 public:
  // REQUIRES: `stub` and `gate` outlive the gateway; every call starts through `gate`.
  RestGateway(tttserve::v1::TttService::Stub* stub, CallGate* gate);

  // The reply, or nullopt when no route's path matches (a matching path with another method
  // gets 405).
  std::optional<Reply> Handle(RestRequest request) const;

  // True for the route whose body streams into its call (ImportUpload).
  static bool IsUpload(const std::string& method, const std::string& path);
  // Starts ImportSession for a request's head (its query: session_id, options.*).
  std::unique_ptr<ImportUpload> StartImport(const Forwarded& headers,
                                            const QueryParams& query) const;

  // "GET /v1/sessions, POST /v1/sessions, ...": for a refusal that lists them.
  std::string RouteList() const;

 private:
  using Handler = std::function<Reply(RestRequest&, const std::string& path_value)>;
  struct Route {
    const char* method;
    const char* pattern;
    Handler handle;
  };

  template <typename Req, typename Resp>
  using UnaryRpc = grpc::Status (tttserve::v1::TttService::Stub::*)(grpc::ClientContext*,
                                                                    const Req&, Resp*);
  // A route whose path variable (if any) goes into `path_field` of a unary call's request.
  template <typename Req, typename Resp>
  void AddUnary(const char* method, const char* pattern, const char* path_field,
                UnaryRpc<Req, Resp> rpc);
  template <typename Req, typename Resp>
  Reply Unary(RestRequest& request, const char* path_field, const std::string& path_value,
              UnaryRpc<Req, Resp> rpc) const;
  Reply Ingest(RestRequest& request, const std::string& session_id) const;
  Reply Generate(RestRequest& request, const std::string& session_id) const;
  Reply Export(RestRequest& request, const char* field, const std::string& id) const;
  Reply Import(RestRequest& request) const;

  tttserve::v1::TttService::Stub* const stub_;
  CallGate* const gate_;
  std::vector<Route> routes_;  // fixed at construction
};

// The reply for a failed call: google.rpc.Status JSON, the HTTP status of its code.
Reply ErrorReply(const grpc::Status& status, std::optional<int64_t> retry_after_ms = {});

}  // namespace ttt::http::internal
