// HTTP/JSON transcoding of every tttserve.v1 RPC (issue 25 item 1): a REST route per RPC,
// following Google's HTTP/JSON conventions (resources under /v1, custom methods as ":verb"),
// each translated into the same gRPC call over the server's in-process channel, so that every
// rule (authentication, tenants, quotas, validation, metrics) stays the gRPC path's. Bodies are
// the RPCs' messages in protobuf's JSON mapping (rest_json.h). docs/contract.md, "HTTP/JSON
// routes", is the user's contract.
//
// Streaming RPCs: Ingest takes newline-delimited JSON messages, streamed into the call as they
// arrive (IngestUpload), or a text/plain body, and answers newline-delimited JSON; Generate answers
// server-sent events; ExportSession and ImportSession carry the checkpoint bytes as
// application/octet-stream. A failure after the first response ends the body with {"error":
// google.rpc.Status} (events and lines) or cuts the connection (bytes); one before it is the
// reply's HTTP status.
#pragma once

#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"

#include "http/internal/call_gate.h"
#include "http/internal/http_call.h"
#include "http/internal/rest_json.h"
#include "tttserve/v1/ttt_service.grpc.pb.h"

namespace ttt::http::internal {

class BodyUpload;

struct RestRequest {
  std::string method;
  std::string path;          // decoded, without the query
  std::string content_type;  // "" when absent
  std::string body;
  QueryParams query;
  Forwarded headers;
  BodyUpload* upload = nullptr;  // a body fed into its call as it arrived (IsUpload)
};

// A request body fed into its gRPC call piece by piece as it arrives, on the connection's
// thread, rather than read whole first: the body is not bounded by --http_max_body_bytes.
class BodyUpload {
 public:
  virtual ~BodyUpload() = default;
  // Takes the next bytes of the body. False once the call has ended (refused, failed, or never
  // started): the rest of the body is not wanted, Finish() answers why.
  virtual bool Append(const char* data, size_t size) = 0;
  // The body is complete (or was refused): ends the call and answers.
  virtual Reply Finish() = 0;
  // The call could not start (a bad query, shutting down): Finish() answers why.
  bool refused() const { return refused_.has_value(); }

 protected:
  std::optional<Reply> refused_;  // the call could not start
};

// ImportSession fed from an HTTP body as it arrives, in pieces of 1 MiB: bounded by the
// service's own import limits (checkpoints outgrow --http_max_body_bytes), checked as the bytes
// arrive. Used by one connection thread.
class ImportUpload : public BodyUpload {
 public:
  ~ImportUpload() override;
  bool Append(const char* data, size_t size) override;
  // Sends what is buffered, ends the call, and answers: the new Session, or the refusal.
  Reply Finish() override;

 private:
  friend class RestGateway;
  ImportUpload() = default;
  bool WritePending();

  grpc::ClientContext ctx_;
  tttserve::v1::Session session_;
  std::unique_ptr<grpc::ClientWriter<tttserve::v1::ImportSessionRequest>> writer_;
  tttserve::v1::ImportSessionRequest pending_;  // the first carries the query's fields
  bool ended_ = false;                          // a Write failed: Finish says why
  bool finished_ = false;
};

// Ingest fed from a newline-delimited JSON body as it arrives: each complete line is parsed and
// written to the Ingest stream at once, and the stream's flow control holds the body back while
// the engine is behind, so a document of any length goes in one request. Each line is one
// message, at most `max_line_bytes` (--http_max_body_bytes; a longer one is refused with 413
// REQUEST_TOO_LARGE). The answers are collected while the body arrives (libmicrohttpd answers
// once it is in), at most `max_answer_bytes` of them: past that only the latest is kept, so the
// last line still acknowledges everything applied (answers carry their message_index). A line
// that cannot be parsed ends the stream there: what came before is applied and acknowledged,
// the error is the last line (or the reply, when nothing was). Used by one connection thread,
// plus a thread of its own that reads the answers.
class IngestUpload : public BodyUpload {
 public:
  ~IngestUpload() override;
  bool Append(const char* data, size_t size) override;
  // The last line (without '\n') too, then ends the stream and answers: the lines, or the
  // refusal.
  Reply Finish() override;

 private:
  friend class RestGateway;
  IngestUpload(tttserve::v1::TttService::Stub* stub, CallGate* gate, const Forwarded& headers,
               QueryParams query, std::string session_id, int64_t max_bytes);
  // Parses the complete line in line_ and writes it; false (failure_ or ended_ set) to stop.
  bool TakeLine();
  bool Start();  // opens the stream, at the first message
  void KeepAnswer(std::string line);
  // The reply for a line refused here before anything was answered.
  Reply FailureReply(const grpc::Status& failure) const;

  tttserve::v1::TttService::Stub* const stub_;
  CallGate* const gate_;
  const QueryParams query_;       // fields of the first message
  const std::string session_id_;  // the path's
  const size_t max_line_bytes_;
  const size_t max_answer_bytes_;
  grpc::ClientContext ctx_;
  std::unique_ptr<
      grpc::ClientReaderWriter<tttserve::v1::IngestRequest, tttserve::v1::IngestResponse>>
      stream_;
  std::thread reader_;                   // reads the answers while the body is written
  std::string line_;                     // the line being received
  int64_t line_number_ = 0;              // of the body, from 1
  int64_t messages_ = 0;                 // written
  std::optional<grpc::Status> failure_;  // a line refused here
  bool line_too_long_ = false;           // that line was over max_line_bytes_
  bool ended_ = false;                   // a Write failed: Finish says why
  bool finished_ = false;

  std::mutex mu_;  // the answers, written by reader_
  std::string answers_ ABSL_GUARDED_BY(mu_);
  std::string latest_ ABSL_GUARDED_BY(mu_);  // the last answer past max_answer_bytes_
};

// Thread-safe: requests are handled on their connections' threads at once.
class RestGateway {
 public:
  // REQUIRES: `stub` and `gate` outlive the gateway; every call starts through `gate`.
  RestGateway(tttserve::v1::TttService::Stub* stub, CallGate* gate);

  // The reply, or nullopt when no route's path matches (a matching path with another method
  // gets 405).
  std::optional<Reply> Handle(RestRequest request) const;

  // True for the routes whose body streams into its call: an import, an NDJSON ingest.
  static bool IsUpload(const std::string& method, const std::string& path,
                       const std::string& content_type);
  // For a request's head that IsUpload: ImportSession (its query: session_id, options.*) or an
  // IngestUpload whose lines are at most `max_line_bytes`.
  std::unique_ptr<BodyUpload> StartUpload(const std::string& path, const Forwarded& headers,
                                          const QueryParams& query, int64_t max_line_bytes) const;

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
  std::unique_ptr<BodyUpload> StartImport(const Forwarded& headers, const QueryParams& query) const;

  tttserve::v1::TttService::Stub* const stub_;
  CallGate* const gate_;
  std::vector<Route> routes_;  // fixed at construction
};

// The reply for a failed call: google.rpc.Status JSON, the HTTP status of its code.
Reply ErrorReply(const grpc::Status& status, std::optional<int64_t> retry_after_ms = {});

}  // namespace ttt::http::internal
