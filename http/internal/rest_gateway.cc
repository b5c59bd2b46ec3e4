// HTTP/JSON transcoding of every RPC (see rest_gateway.h): the route table and the calls.
#include "http/internal/rest_gateway.h"

#include <algorithm>
#include <thread>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "http/internal/openai.h"

namespace ttt::http::internal {
namespace {

namespace pb = tttserve::v1;
using Stub = pb::TttService::Stub;
using Step = ChunkSource::Step;

constexpr char kNdJson[] = "application/x-ndjson";
constexpr size_t kImportPieceBytes = size_t{1} << 20;  // as ExportSession sends them
constexpr char kImportPath[] = "/v1/sessions:import";
constexpr char kIngestPattern[] = "/v1/sessions/{session_id}:ingest";

Reply JsonReply(std::string json) {
  Reply reply;
  reply.body = std::move(json) + "\n";
  return reply;
}

std::string ErrorLine(const grpc::Status& status) {
  return absl::StrCat("{\"error\":", StatusJson(status), "}");
}

// The request message of a route: the JSON body, then the query parameters, then the path's
// variable into `path_field` (nullptr: the route has none).
absl::Status BuildRequest(const RestRequest& request, const char* path_field,
                          const std::string& path_value, google::protobuf::Message* message) {
  absl::Status st = ParseJsonBody(request.body, message);
  if (st.ok()) st = ApplyQuery(request.query, message);
  if (st.ok() && path_field != nullptr) st = BindPathField(path_field, path_value, message);
  return st;
}

// Generate's responses as server-sent events, `data: <GenerateResponse JSON>` each.
class GenerateEvents : public ChunkSource {
 public:
  explicit GenerateEvents(const Forwarded& headers) { headers.AttachTo(&ctx_); }

  // Cancels a Generate still running (the client went away).
  ~GenerateEvents() override {
    if (reader_ != nullptr && !finished_) CancelStream(&ctx_, reader_.get());
  }

  // Starts Generate and reads its first response, so that a refused call is answered with its
  // HTTP status before any event.
  std::optional<Failure> Begin(Stub* stub, CallGate* gate, const pb::GenerateRequest& request) {
    {
      CallGate::Ticket ticket(gate);
      if (!ticket.admitted()) return Failure{ShuttingDown(), std::nullopt};
      reader_ = stub->Generate(&ctx_, request);
    }
    have_first_ = reader_->Read(&first_);
    if (have_first_) return std::nullopt;
    finished_ = true;
    grpc::Status st = reader_->Finish();
    if (!st.ok()) return Failure{st, RetryAfterMs(ctx_)};
    return std::nullopt;
  }

  Step Next(std::string* out) override {
    pb::GenerateResponse response;
    if (have_first_) {
      have_first_ = false;
      response = std::move(first_);
    } else if (finished_) {
      return Step::kEnd;
    } else if (!reader_->Read(&response)) {
      finished_ = true;
      grpc::Status st = reader_->Finish();
      if (st.ok()) return Step::kEnd;
      *out = absl::StrCat("data: ", ErrorLine(st), "\n\n");
      return Step::kData;
    }
    *out = absl::StrCat("data: ", ToJson(response), "\n\n");
    return Step::kData;
  }

 private:
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReader<pb::GenerateResponse>> reader_;
  pb::GenerateResponse first_;
  bool have_first_ = false;
  bool finished_ = false;  // Finish was called
};

// ExportSession's bytes as they arrive; a failure after the first piece cuts the connection.
class ExportBytes : public ChunkSource {
 public:
  explicit ExportBytes(const Forwarded& headers) { headers.AttachTo(&ctx_); }

  ~ExportBytes() override {
    if (reader_ != nullptr && !finished_) CancelStream(&ctx_, reader_.get());
  }

  // Starts the export and reads its first piece (which carries the total size).
  std::optional<Failure> Begin(Stub* stub, CallGate* gate, const pb::ExportSessionRequest& req) {
    {
      CallGate::Ticket ticket(gate);
      if (!ticket.admitted()) return Failure{ShuttingDown(), std::nullopt};
      reader_ = stub->ExportSession(&ctx_, req);
    }
    pb::ExportSessionResponse first;
    if (reader_->Read(&first)) {
      total_size_ = first.total_size();
      pending_ = std::move(*first.mutable_data());
      return std::nullopt;
    }
    finished_ = true;
    grpc::Status st = reader_->Finish();
    if (!st.ok()) return Failure{st, RetryAfterMs(ctx_)};
    return std::nullopt;
  }

  uint64_t total_size() const { return static_cast<uint64_t>(std::max<int64_t>(0, total_size_)); }

  Step Next(std::string* out) override {
    while (pending_.empty()) {
      if (finished_) return Step::kEnd;
      pb::ExportSessionResponse piece;
      if (!reader_->Read(&piece)) {
        finished_ = true;
        return reader_->Finish().ok() ? Step::kEnd : Step::kAbort;
      }
      pending_ = std::move(*piece.mutable_data());
    }
    *out = std::move(pending_);
    pending_.clear();
    return Step::kData;
  }

 private:
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReader<pb::ExportSessionResponse>> reader_;
  int64_t total_size_ = 0;
  std::string pending_;
  bool finished_ = false;
};

// The messages of an Ingest body: one JSON IngestRequest per line, or (text/plain) the body as
// one message's text with flush. Query parameters set fields of the first.
absl::StatusOr<std::vector<pb::IngestRequest>> IngestMessages(const RestRequest& request,
                                                              const std::string& session_id) {
  std::vector<pb::IngestRequest> messages;
  if (absl::StartsWith(request.content_type, "text/plain")) {
    messages.emplace_back();
    messages.back().set_text(request.body);
    messages.back().set_flush(true);
  } else {
    int line_number = 0;
    for (absl::string_view line : absl::StrSplit(request.body, '\n')) {
      ++line_number;
      if (absl::StripAsciiWhitespace(line).empty()) continue;
      messages.emplace_back();
      absl::Status parsed =
          ParseJsonBody(std::string_view(line.data(), line.size()), &messages.back(),
                        absl::StrCat("line ", line_number, " of the body"));
      if (!parsed.ok()) return parsed;
    }
    if (messages.empty()) {
      return absl::InvalidArgumentError(
          "the body holds no message: send one JSON tttserve.v1.IngestRequest per line, or "
          "text with Content-Type: text/plain");
    }
  }
  absl::Status st = ApplyQuery(request.query, &messages.front());
  for (pb::IngestRequest& message : messages) {
    if (st.ok()) st = BindPathField("session_id", session_id, &message);
  }
  if (!st.ok()) return st;
  return messages;
}

}  // namespace

Reply ErrorReply(const grpc::Status& status, std::optional<int64_t> retry_after_ms) {
  Reply reply = JsonReply(StatusJson(status));
  reply.status = static_cast<unsigned>(HttpStatusOf(status.error_code()));
  reply.retry_after_ms = retry_after_ms;
  return reply;
}

template <typename Req, typename Resp>
void RestGateway::AddUnary(const char* method, const char* pattern, const char* path_field,
                           UnaryRpc<Req, Resp> rpc) {
  routes_.push_back(
      {method, pattern, [this, path_field, rpc](RestRequest& request, const std::string& value) {
         return Unary(request, path_field, value, rpc);
       }});
}

template <typename Req, typename Resp>
Reply RestGateway::Unary(RestRequest& request, const char* path_field,
                         const std::string& path_value, UnaryRpc<Req, Resp> rpc) const {
  Req req;
  absl::Status built = BuildRequest(request, path_field, path_value, &req);
  if (!built.ok()) return ErrorReply(ToGrpc(built));
  grpc::ClientContext ctx;
  request.headers.AttachTo(&ctx);
  Resp resp;
  CallGate::Ticket ticket(gate_);
  if (!ticket.admitted()) return ErrorReply(ShuttingDown());
  grpc::Status st = (stub_->*rpc)(&ctx, req, &resp);
  if (!st.ok()) return ErrorReply(st, RetryAfterMs(ctx));
  return JsonReply(ToJson(resp));
}

RestGateway::RestGateway(Stub* stub, CallGate* gate) : stub_(stub), gate_(gate) {
  AddUnary("GET", "/v1/serverInfo", nullptr, &Stub::GetServerInfo);
  AddUnary("POST", "/v1/sessions", nullptr, &Stub::CreateSession);
  AddUnary("GET", "/v1/sessions", nullptr, &Stub::ListSessions);
  AddUnary("GET", "/v1/sessions/{session_id}", "session_id", &Stub::GetSession);
  AddUnary("DELETE", "/v1/sessions/{session_id}", "session_id", &Stub::DeleteSession);
  routes_.push_back({"POST", kIngestPattern,
                     [this](RestRequest& r, const std::string& id) { return Ingest(r, id); }});
  routes_.push_back({"POST", "/v1/sessions/{session_id}:generate",
                     [this](RestRequest& r, const std::string& id) { return Generate(r, id); }});
  AddUnary("POST", "/v1/sessions/{session_id}:score", "session_id", &Stub::Score);
  AddUnary("POST", "/v1/sessions/{session_id}:checkpoint", "session_id", &Stub::Checkpoint);
  AddUnary("POST", "/v1/sessions/{session_id}:restore", "session_id", &Stub::Restore);
  AddUnary("POST", "/v1/sessions/{session_id}:reset", "session_id", &Stub::Reset);
  AddUnary("POST", "/v1/sessions/{session_id}:fork", "session_id", &Stub::Fork);
  routes_.push_back(
      {"GET", "/v1/sessions/{session_id}:export",
       [this](RestRequest& r, const std::string& id) { return Export(r, "session_id", id); }});
  routes_.push_back(
      {"POST", kImportPath, [this](RestRequest& r, const std::string&) { return Import(r); }});
  AddUnary("GET", "/v1/checkpoints", nullptr, &Stub::ListCheckpoints);
  AddUnary("DELETE", "/v1/checkpoints/{checkpoint_id}", "checkpoint_id", &Stub::DeleteCheckpoint);
  AddUnary("POST", "/v1/checkpoints/{checkpoint_id}:restore", "checkpoint_id", &Stub::Restore);
  routes_.push_back(
      {"GET", "/v1/checkpoints/{checkpoint_id}:export",
       [this](RestRequest& r, const std::string& id) { return Export(r, "checkpoint_id", id); }});
  AddUnary("POST", "/v1/tokenize", nullptr, &Stub::Tokenize);
  AddUnary("POST", "/v1/detokenize", nullptr, &Stub::Detokenize);
}

std::optional<Reply> RestGateway::Handle(RestRequest request) const {
  std::vector<std::string> allowed;
  for (const Route& route : routes_) {
    std::optional<std::string> value = MatchPath(route.pattern, request.path);
    if (!value) continue;
    if (request.method == route.method) return route.handle(request, *value);
    allowed.push_back(route.method);
  }
  if (allowed.empty()) return std::nullopt;
  Reply reply =
      ErrorReply(grpc::Status(grpc::StatusCode::UNIMPLEMENTED,
                              absl::StrCat(request.path, " takes ", absl::StrJoin(allowed, " or "),
                                           ", not ", request.method)));
  reply.status = 405;
  return reply;
}

std::string RestGateway::RouteList() const {
  std::vector<std::string> routes;
  for (const Route& route : routes_)
    routes.push_back(absl::StrCat(route.method, " ", route.pattern));
  return absl::StrJoin(routes, ", ");
}

Reply RestGateway::Ingest(RestRequest& request, const std::string& session_id) const {
  if (request.upload != nullptr) return request.upload->Finish();  // NDJSON, streamed
  absl::StatusOr<std::vector<pb::IngestRequest>> messages = IngestMessages(request, session_id);
  if (!messages.ok()) return ErrorReply(ToGrpc(messages.status()));
  grpc::ClientContext ctx;
  request.headers.AttachTo(&ctx);
  std::unique_ptr<grpc::ClientReaderWriter<pb::IngestRequest, pb::IngestResponse>> stream;
  {
    CallGate::Ticket ticket(gate_);
    if (!ticket.admitted()) return ErrorReply(ShuttingDown());
    stream = stub_->Ingest(&ctx);
  }
  // Responses are read while the messages are written: the service answers each message once it
  // is applied and stops reading when its answers are not taken.
  std::vector<pb::IngestResponse> responses;
  std::thread reader([&stream, &responses] {
    pb::IngestResponse response;
    while (stream->Read(&response)) responses.push_back(response);
  });
  for (const pb::IngestRequest& message : *messages) {
    if (!stream->Write(message)) break;  // the call ended: Finish says why
  }
  stream->WritesDone();
  reader.join();
  grpc::Status st = stream->Finish();
  if (!st.ok() && responses.empty()) return ErrorReply(st, RetryAfterMs(ctx));
  Reply reply;
  reply.content_type = kNdJson;
  for (const pb::IngestResponse& response : responses) {
    absl::StrAppend(&reply.body, ToJson(response), "\n");
  }
  if (!st.ok()) absl::StrAppend(&reply.body, ErrorLine(st), "\n");
  return reply;
}

Reply RestGateway::Generate(RestRequest& request, const std::string& session_id) const {
  pb::GenerateRequest req;
  absl::Status built = BuildRequest(request, "session_id", session_id, &req);
  if (!built.ok()) return ErrorReply(ToGrpc(built));
  auto events = std::make_unique<GenerateEvents>(request.headers);
  if (std::optional<Failure> failed = events->Begin(stub_, gate_, req)) {
    return ErrorReply(failed->status, failed->retry_after_ms);
  }
  Reply reply;
  reply.content_type = "text/event-stream";
  reply.stream = std::move(events);
  return reply;
}

Reply RestGateway::Export(RestRequest& request, const char* field, const std::string& id) const {
  pb::ExportSessionRequest req;
  absl::Status built = BuildRequest(request, field, id, &req);
  if (!built.ok()) return ErrorReply(ToGrpc(built));
  auto bytes = std::make_unique<ExportBytes>(request.headers);
  if (std::optional<Failure> failed = bytes->Begin(stub_, gate_, req)) {
    return ErrorReply(failed->status, failed->retry_after_ms);
  }
  Reply reply;
  reply.content_type = "application/octet-stream";
  reply.content_length = bytes->total_size();
  reply.stream = std::move(bytes);
  return reply;
}

Reply RestGateway::Import(RestRequest& request) const {
  if (request.upload == nullptr) {  // not expected: the gateway streams every import body
    return ErrorReply(grpc::Status(grpc::StatusCode::INTERNAL, "the import body was not streamed"));
  }
  return request.upload->Finish();
}

bool RestGateway::IsUpload(const std::string& method, const std::string& path,
                           const std::string& content_type) {
  if (method != "POST") return false;
  if (path == kImportPath) return true;
  // A text/plain ingest is one message's text: read whole, as any other body.
  return MatchPath(kIngestPattern, path).has_value() &&
         !absl::StartsWith(content_type, "text/plain");
}

std::unique_ptr<BodyUpload> RestGateway::StartUpload(const std::string& path,
                                                     const Forwarded& headers,
                                                     const QueryParams& query,
                                                     int64_t max_line_bytes) const {
  if (std::optional<std::string> session_id = MatchPath(kIngestPattern, path)) {
    return std::unique_ptr<BodyUpload>(
        new IngestUpload(stub_, gate_, headers, query, std::move(*session_id), max_line_bytes));
  }
  return StartImport(headers, query);
}

std::unique_ptr<BodyUpload> RestGateway::StartImport(const Forwarded& headers,
                                                     const QueryParams& query) const {
  std::unique_ptr<ImportUpload> upload(new ImportUpload());
  absl::Status built = ApplyQuery(query, &upload->pending_);
  if (!built.ok()) {
    upload->refused_ = ErrorReply(ToGrpc(built));
    return upload;
  }
  headers.AttachTo(&upload->ctx_);
  CallGate::Ticket ticket(gate_);
  if (!ticket.admitted()) {
    upload->refused_ = ErrorReply(ShuttingDown());
    return upload;
  }
  upload->writer_ = stub_->ImportSession(&upload->ctx_, &upload->session_);
  return upload;
}

IngestUpload::IngestUpload(Stub* stub, CallGate* gate, const Forwarded& headers, QueryParams query,
                           std::string session_id, int64_t max_bytes)
    : stub_(stub),
      gate_(gate),
      query_(std::move(query)),
      session_id_(std::move(session_id)),
      max_line_bytes_(static_cast<size_t>(max_bytes)),
      max_answer_bytes_(static_cast<size_t>(max_bytes)) {
  headers.AttachTo(&ctx_);
}

IngestUpload::~IngestUpload() {
  if (stream_ == nullptr || finished_) return;
  ctx_.TryCancel();  // the client went away: its answers have nobody to go to
  if (reader_.joinable()) reader_.join();
  stream_->Finish();
}

bool IngestUpload::Start() {
  CallGate::Ticket ticket(gate_);
  if (!ticket.admitted()) {
    refused_ = ErrorReply(ShuttingDown());
    return false;
  }
  stream_ = stub_->Ingest(&ctx_);
  // The service answers each message once it is applied and stops reading when its answers
  // are not taken: they are taken here while the body is still arriving.
  reader_ = std::thread([this] {
    pb::IngestResponse response;
    while (stream_->Read(&response)) KeepAnswer(ToJson(response) + "\n");
  });
  return true;
}

Reply IngestUpload::FailureReply(const grpc::Status& failure) const {
  Reply reply = ErrorReply(failure);
  if (line_too_long_) reply.status = 413;  // as any body over the limit
  return reply;
}

void IngestUpload::KeepAnswer(std::string line) {
  std::lock_guard<std::mutex> lock(mu_);
  if (latest_.empty() && answers_.size() + line.size() <= max_answer_bytes_) {
    answers_ += line;
  } else {
    latest_ = std::move(line);
  }
}

bool IngestUpload::TakeLine() {
  ++line_number_;
  if (absl::StripAsciiWhitespace(line_).empty()) {
    line_.clear();
    return true;
  }
  pb::IngestRequest message;
  absl::Status st =
      ParseJsonBody(line_, &message, absl::StrCat("line ", line_number_, " of the body"));
  line_.clear();
  if (st.ok() && messages_ == 0) st = ApplyQuery(query_, &message);
  if (st.ok()) st = BindPathField("session_id", session_id_, &message);
  if (!st.ok()) {
    failure_ = ToGrpc(st);
    return false;
  }
  if (stream_ == nullptr && !Start()) return false;
  if (!stream_->Write(message)) {
    ended_ = true;  // the call ended: Finish says why
    return false;
  }
  ++messages_;
  return true;
}

bool IngestUpload::Append(const char* data, size_t size) {
  if (refused_ || failure_ || ended_) return false;
  std::string_view rest(data, size);
  while (!rest.empty()) {
    const size_t end = rest.find('\n');
    const size_t n = end == std::string_view::npos ? rest.size() : end;
    if (line_.size() + n > max_line_bytes_) {
      line_too_long_ = true;
      failure_ = LayerStatus(
          grpc::StatusCode::RESOURCE_EXHAUSTED,
          absl::StrCat("line ", line_number_ + 1, " of the body is longer than ", max_line_bytes_,
                       " bytes (--http_max_body_bytes, the limit of one message); split it into "
                       "several messages"),
          "REQUEST_TOO_LARGE");
      return false;
    }
    line_.append(rest.data(), n);
    if (end == std::string_view::npos) break;
    rest.remove_prefix(end + 1);
    if (!TakeLine()) return false;
  }
  return true;
}

Reply IngestUpload::Finish() {
  if (refused_) return *std::move(refused_);
  if (finished_) {
    return ErrorReply(grpc::Status(grpc::StatusCode::INTERNAL, "the ingest was answered"));
  }
  if (!failure_ && !ended_ && !line_.empty()) TakeLine();  // the last line had no '\n'
  if (refused_) return *std::move(refused_);
  if (stream_ == nullptr) {
    finished_ = true;
    if (failure_) return FailureReply(*failure_);
    return ErrorReply(grpc::Status(
        grpc::StatusCode::INVALID_ARGUMENT,
        "the body holds no message: send one JSON tttserve.v1.IngestRequest per line, or text "
        "with Content-Type: text/plain"));
  }
  stream_->WritesDone();  // what was written is applied and answered
  reader_.join();
  finished_ = true;
  grpc::Status st = stream_->Finish();
  std::lock_guard<std::mutex> lock(mu_);
  if (st.ok() && failure_) {
    if (answers_.empty()) return FailureReply(*failure_);
    st = *failure_;
  }
  if (!st.ok() && answers_.empty()) return ErrorReply(st, RetryAfterMs(ctx_));
  Reply reply;
  reply.content_type = kNdJson;
  reply.body = std::move(answers_) + latest_;
  if (!st.ok()) absl::StrAppend(&reply.body, ErrorLine(st), "\n");
  return reply;
}

ImportUpload::~ImportUpload() {
  if (writer_ == nullptr || finished_) return;
  ctx_.TryCancel();  // the client went away: no session is left behind
  writer_->Finish();
}

bool ImportUpload::WritePending() {
  if (!writer_->Write(pending_)) {
    ended_ = true;
    return false;
  }
  pending_.Clear();
  return true;
}

bool ImportUpload::Append(const char* data, size_t size) {
  if (refused_ || ended_) return false;
  while (size > 0) {
    const size_t n = std::min(size, kImportPieceBytes - pending_.data().size());
    pending_.mutable_data()->append(data, n);
    data += n;
    size -= n;
    if (pending_.data().size() == kImportPieceBytes && !WritePending()) return false;
  }
  return true;
}

Reply ImportUpload::Finish() {
  if (refused_) return *std::move(refused_);
  if (finished_) {
    return ErrorReply(grpc::Status(grpc::StatusCode::INTERNAL, "the import was answered"));
  }
  if (!ended_ && pending_.ByteSizeLong() > 0) WritePending();
  if (!ended_) writer_->WritesDone();
  finished_ = true;
  grpc::Status st = writer_->Finish();
  if (!st.ok()) return ErrorReply(st, RetryAfterMs(ctx_));
  return JsonReply(ToJson(session_));
}

}  // namespace ttt::http::internal
