// The HTTP front door: libmicrohttpd in front of the in-process gRPC channel (see
// http_gateway.h). Routing and the libmicrohttpd plumbing live here; the OpenAI protocol's
// translations in internal/openai.h.
#include "http/http_gateway.h"

#include <microhttpd.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "http/internal/call_gate.h"
#include "http/internal/http_call.h"
#include "http/internal/openai.h"
#include "http/internal/rest_gateway.h"
#include "tttserve/v1/ttt_service.grpc.pb.h"
#include "util/listen_socket.h"

namespace ttt::http {
namespace {

namespace pb = tttserve::v1;
using internal::CallGate;
using internal::ChunkSource;
using internal::CompletionBuilder;
using internal::CompletionCall;
using internal::Dump;
using internal::Failure;
using internal::Forwarded;
using internal::Reply;
using internal::RetryAfterMs;
using internal::ShuttingDown;
using Json = nlohmann::json;

constexpr char kHealthService[] = "tttserve.v1.TttService";

// One request's body, read in pieces before the request is answered (or streamed into its
// call as it arrives: an import, an NDJSON ingest).
struct Request {
  std::string body;
  std::unique_ptr<internal::BodyUpload> upload;
  int64_t discarded = 0;  // bytes of an upload's body that arrived after it was refused
};

// A header's value, or INVALID_ARGUMENT when gRPC metadata cannot carry it (printable ASCII).
absl::Status ReadHeader(MHD_Connection* c, const char* name, std::optional<std::string>* out) {
  const char* value = MHD_lookup_connection_value(c, MHD_HEADER_KIND, name);
  if (value == nullptr) return absl::OkStatus();
  for (const char* p = value; *p != '\0'; ++p) {
    if (*p < 0x20 || *p > 0x7e) {
      return absl::InvalidArgumentError(
          absl::StrCat("the ", name, " header must be printable ASCII"));
    }
  }
  *out = value;
  return absl::OkStatus();
}

absl::StatusOr<Forwarded> ForwardedHeaders(MHD_Connection* c) {
  Forwarded f;
  absl::Status st = ReadHeader(c, MHD_HTTP_HEADER_AUTHORIZATION, &f.authorization);
  if (st.ok()) st = ReadHeader(c, "x-tenant-id", &f.tenant);
  if (st.ok()) st = ReadHeader(c, "x-session-id", &f.session);
  if (!st.ok()) return st;
  return f;
}

// A streamed body: owns its source and feeds libmicrohttpd as the source produces pieces.
struct BodyStream {
  std::unique_ptr<ChunkSource> source;
  std::string pending;
  size_t sent = 0;

  static ssize_t Read(void* cls, uint64_t, char* buf, size_t max) {
    auto* s = static_cast<BodyStream*>(cls);
    try {  // nothing may unwind through libmicrohttpd's C frames
      if (s->sent == s->pending.size()) {
        s->pending.clear();
        s->sent = 0;
        switch (s->source->Next(&s->pending)) {
          case ChunkSource::Step::kData:
            break;
          case ChunkSource::Step::kEnd:
            return MHD_CONTENT_READER_END_OF_STREAM;
          case ChunkSource::Step::kAbort:
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
      }
      const size_t n = std::min(max, s->pending.size() - s->sent);
      std::memcpy(buf, s->pending.data() + s->sent, n);
      s->sent += n;
      return static_cast<ssize_t>(n);
    } catch (const std::exception&) {
      return MHD_CONTENT_READER_END_WITH_ERROR;
    }
  }
  // Called when the response is done or the client went away: ends the calls.
  static void Free(void* cls) { delete static_cast<BodyStream*>(cls); }
};

MHD_Result Send(MHD_Connection* c, Reply reply) {
  MHD_Response* response = nullptr;
  if (reply.stream != nullptr) {
    auto* body = new BodyStream{std::move(reply.stream), "", 0};
    response =
        MHD_create_response_from_callback(reply.content_length.value_or(MHD_SIZE_UNKNOWN),
                                          16 * 1024, &BodyStream::Read, body, &BodyStream::Free);
    if (response == nullptr) delete body;
  } else {
    response = MHD_create_response_from_buffer(
        reply.body.size(), const_cast<char*>(reply.body.data()), MHD_RESPMEM_MUST_COPY);
  }
  if (response == nullptr) return MHD_NO;  // out of memory: libmicrohttpd closes the connection
  MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, reply.content_type.c_str());
  if (reply.content_type == "text/event-stream") {
    MHD_add_response_header(response, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
  }
  if (reply.status == MHD_HTTP_UNAUTHORIZED) {
    MHD_add_response_header(response, MHD_HTTP_HEADER_WWW_AUTHENTICATE,
                            "Bearer realm=\"ttt-serve\"");
  }
  if (reply.retry_after_ms) {
    const std::string seconds =
        std::to_string(std::max<int64_t>(1, (*reply.retry_after_ms + 999) / 1000));
    MHD_add_response_header(response, MHD_HTTP_HEADER_RETRY_AFTER, seconds.c_str());
  }
  const MHD_Result queued = MHD_queue_response(c, reply.status, response);
  MHD_destroy_response(response);
  return queued;
}

// The query parameters, in order (a repeated one as often as it is given).
internal::QueryParams QueryOf(MHD_Connection* c) {
  internal::QueryParams query;
  MHD_get_connection_values(
      c, MHD_GET_ARGUMENT_KIND,
      [](void* out, MHD_ValueKind, const char* key, const char* value) {
        static_cast<internal::QueryParams*>(out)->emplace_back(key, value ? value : "");
        return MHD_YES;
      },
      &query);
  return query;
}

MHD_Result Respond(MHD_Connection* c, unsigned code, std::string body,
                   std::optional<int64_t> retry_after_ms = std::nullopt) {
  Reply reply;
  reply.status = code;
  reply.body = std::move(body);
  reply.retry_after_ms = retry_after_ms;
  return Send(c, std::move(reply));
}

MHD_Result RespondJson(MHD_Connection* c, unsigned code, const Json& body) {
  return Respond(c, code, Dump(body) + "\n");
}

MHD_Result RespondError(MHD_Connection* c, const Failure& failure) {
  return Respond(c, internal::HttpStatusOf(failure.status.error_code()),
                 Dump(internal::ErrorJson(failure.status)) + "\n", failure.retry_after_ms);
}

MHD_Result RespondError(MHD_Connection* c, const absl::Status& status) {
  return RespondError(c, Failure{internal::ToGrpc(status), std::nullopt});
}

// An error of HTTP itself (no gRPC code): 404 route, 405 method, 413 body.
MHD_Result RespondHttpError(MHD_Connection* c, unsigned code, const char* name,
                            const std::string& message) {
  return RespondJson(
      c, code,
      {{"error", {{"message", message}, {"type", "invalid_request_error"}, {"code", name}}}});
}

// A body over the limit: 413, in the error shape of the route's protocol (OpenAI's, or
// google.rpc.Status with reason REQUEST_TOO_LARGE).
MHD_Result RespondTooLarge(MHD_Connection* c, const std::string& path, const std::string& message) {
  if (path == "/v1/completions" || path == "/v1/models" || !absl::StartsWith(path, "/v1/")) {
    return RespondHttpError(c, MHD_HTTP_CONTENT_TOO_LARGE, "REQUEST_TOO_LARGE", message);
  }
  Reply reply = internal::ErrorReply(
      internal::LayerStatus(grpc::StatusCode::RESOURCE_EXHAUSTED, message, "REQUEST_TOO_LARGE"));
  reply.status = MHD_HTTP_CONTENT_TOO_LARGE;
  return Send(c, std::move(reply));
}

int64_t UnixSeconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

struct HttpGateway::State {
  HttpGatewayOptions options;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<pb::TttService::Stub> stub;
  std::unique_ptr<grpc::health::v1::Health::Stub> health;
  CallGate gate;                                // every call on `channel` starts through it
  std::unique_ptr<internal::RestGateway> rest;  // the HTTP/JSON routes of every RPC
  MHD_Daemon* daemon = nullptr;

  // Route, with a last-resort catch.
  MHD_Result Dispatch(MHD_Connection* c, const std::string& path, const std::string& method,
                      Request* request);
  MHD_Result Route(MHD_Connection* c, const std::string& path, const std::string& method,
                   Request* request);
  MHD_Result Models(MHD_Connection* c);
  MHD_Result Ready(MHD_Connection* c);
  MHD_Result Completions(MHD_Connection* c, const std::string& body);
  MHD_Result Rest(MHD_Connection* c, const std::string& path, const std::string& method,
                  Request* request);

  static MHD_Result Answer(void* cls, MHD_Connection* c, const char* url, const char* method,
                           const char* version, const char* upload_data, size_t* upload_data_size,
                           void** request_context);
  static void Completed(void* cls, MHD_Connection* c, void** request_context,
                        MHD_RequestTerminationCode code) {
    delete static_cast<Request*>(*request_context);
    *request_context = nullptr;
  }
};

namespace {

// One completion's gRPC calls: the session (named, or temporary: created first and deleted
// last), the prompt's ingest when commit_prompt, the Generate stream. Used by one thread at a
// time (the request's, then the stream's reader callbacks on the same connection thread).
class CompletionRun : public ChunkSource {
 public:
  // REQUIRES: `stub`, `gate` and `options` outlive the run.
  CompletionRun(pb::TttService::Stub* stub, CallGate* gate, const HttpGatewayOptions& options,
                Forwarded headers, CompletionCall call)
      : stub_(stub),
        gate_(gate),
        options_(options),
        headers_(std::move(headers)),
        call_(std::move(call)),
        builder_(internal::NewCompletionId(), UnixSeconds(), options.model_id, call_.logprobs) {}

  // Cancels a Generate still running (the client went away) and deletes a temporary session.
  ~CompletionRun() override {
    if (reader_ != nullptr && !finished_) {
      internal::CancelStream(generate_ctx_.get(), reader_.get());
    }
    CallGate::Ticket ticket(gate_);
    if (!temporary_session_.empty() && ticket.admitted()) {
      grpc::ClientContext ctx;
      headers_.AttachTo(&ctx);
      pb::DeleteSessionRequest req;
      req.set_session_id(temporary_session_);
      pb::DeleteSessionResponse resp;
      stub_->DeleteSession(&ctx, req, &resp);  // best effort; its idle TTL backs it up
    }
  }

  // Opens the session, commits the prompt when asked, starts Generate and reads its first
  // response, so that a refused call is answered with its HTTP status before any event.
  std::optional<Failure> Begin() {
    std::optional<Failure> failed = OpenSession();
    if (!failed && call_.commit_prompt) failed = CommitPrompt();
    if (failed) return failed;
    call_.generate.set_session_id(session_id_);
    generate_ctx_ = std::make_unique<grpc::ClientContext>();
    headers_.AttachTo(generate_ctx_.get());
    {
      CallGate::Ticket ticket(gate_);
      if (!ticket.admitted()) return Failure{ShuttingDown(), std::nullopt};
      reader_ = stub_->Generate(generate_ctx_.get(), call_.generate);
    }
    if (reader_->Read(&first_)) {
      have_first_ = true;
    } else {
      finished_ = true;
      grpc::Status st = reader_->Finish();
      if (!st.ok()) return Failure{st, RetryAfterMs(*generate_ctx_)};
    }
    CountPromptTokens();
    return std::nullopt;
  }

  // Non-streaming: the rest of the stream, then the completion object (or the failure).
  std::optional<Failure> ReadAll(Json* completion) {
    pb::GenerateResponse r;
    while (NextResponse(&r)) builder_.Add(r);
    if (!status_.ok()) return Failure{status_, RetryAfterMs(*generate_ctx_)};
    *completion = builder_.Completion(prompt_tokens_);
    return std::nullopt;
  }

  // Streaming: the next server-sent events ("data: {...}\n\n"), [DONE] last. A failure after
  // the first event is sent as an error event.
  Step Next(std::string* out) override {
    if (done_) return Step::kEnd;
    pb::GenerateResponse r;
    while (out->empty()) {
      if (!NextResponse(&r)) {
        if (!status_.ok()) {
          AppendEvent(Dump(internal::ErrorJson(status_)), out);
        } else if (call_.include_usage) {
          AppendEvent(Dump(builder_.UsageChunk(prompt_tokens_)), out);
        }
        AppendEvent("[DONE]", out);
        done_ = true;
        return Step::kData;
      }
      if (std::optional<Json> chunk = builder_.Add(r)) AppendEvent(Dump(*chunk), out);
    }
    return Step::kData;
  }

 private:
  static void AppendEvent(const std::string& data, std::string* out) {
    absl::StrAppend(out, "data: ", data, "\n\n");
  }

  bool NextResponse(pb::GenerateResponse* r) {
    if (have_first_) {
      have_first_ = false;
      *r = std::move(first_);
      return true;
    }
    if (finished_) return false;
    if (reader_->Read(r)) return true;
    finished_ = true;
    status_ = reader_->Finish();
    return false;
  }

  std::optional<Failure> OpenSession() {
    const std::string header = headers_.session.value_or("");
    if (!header.empty() && !call_.session_id.empty() && header != call_.session_id) {
      return Failure{grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                  absl::StrCat("the x-session-id header ('", header,
                                               "') and the body's session_id ('", call_.session_id,
                                               "') differ")),
                     std::nullopt};
    }
    session_id_ = header.empty() ? call_.session_id : header;
    if (!session_id_.empty()) return std::nullopt;
    grpc::ClientContext ctx;
    headers_.AttachTo(&ctx);
    pb::CreateSessionRequest req;
    // A temporary session left behind (the server stopped mid-completion) expires soon.
    req.mutable_options()->set_idle_ttl_seconds(kTemporarySessionTtlS);
    pb::Session session;
    CallGate::Ticket ticket(gate_);
    if (!ticket.admitted()) return Failure{ShuttingDown(), std::nullopt};
    grpc::Status st = stub_->CreateSession(&ctx, req, &session);
    if (!st.ok()) return Failure{st, RetryAfterMs(ctx)};
    session_id_ = temporary_session_ = session.session_id();
    return std::nullopt;
  }

  // Ingests the prompt (then Generate runs from the session without one).
  std::optional<Failure> CommitPrompt() {
    pb::GenerateRequest& g = call_.generate;
    if (g.prompt_text().empty() && g.prompt_token_ids().empty()) return std::nullopt;
    grpc::ClientContext ctx;
    headers_.AttachTo(&ctx);
    std::unique_ptr<grpc::ClientReaderWriter<pb::IngestRequest, pb::IngestResponse>> stream;
    {
      CallGate::Ticket ticket(gate_);
      if (!ticket.admitted()) return Failure{ShuttingDown(), std::nullopt};
      stream = stub_->Ingest(&ctx);
    }
    pb::IngestRequest req;
    req.set_session_id(session_id_);
    req.set_text(g.prompt_text());
    *req.mutable_token_ids() = g.prompt_token_ids();
    req.set_flush(true);
    pb::IngestResponse resp;
    if (stream->Write(req) && stream->Read(&resp)) prompt_tokens_ = resp.stream_tokens();
    stream->WritesDone();
    while (stream->Read(&resp)) {
    }
    grpc::Status st = stream->Finish();
    if (!st.ok()) return Failure{st, RetryAfterMs(ctx)};
    g.clear_prompt_text();
    g.clear_prompt_token_ids();
    return std::nullopt;
  }

  void CountPromptTokens() {
    if (prompt_tokens_ > 0 || call_.commit_prompt) return;
    const pb::GenerateRequest& g = call_.generate;
    prompt_tokens_ = g.prompt_token_ids_size();
    if (!g.prompt_text().empty() && options_.count_prompt_tokens) {
      absl::StatusOr<int64_t> n = options_.count_prompt_tokens(g.prompt_text());
      prompt_tokens_ = n.ok() ? *n : 0;
    }
  }

  static constexpr int64_t kTemporarySessionTtlS = 600;

  pb::TttService::Stub* const stub_;
  CallGate* const gate_;
  const HttpGatewayOptions& options_;
  const Forwarded headers_;
  CompletionCall call_;
  CompletionBuilder builder_;
  std::string session_id_;
  std::string temporary_session_;  // non-empty: created here, deleted by the destructor
  int64_t prompt_tokens_ = 0;
  std::unique_ptr<grpc::ClientContext> generate_ctx_;
  std::unique_ptr<grpc::ClientReader<pb::GenerateResponse>> reader_;
  pb::GenerateResponse first_;
  bool have_first_ = false;
  bool finished_ = false;  // the Generate stream's Finish was called
  grpc::Status status_;    // its status
  bool done_ = false;      // streaming: [DONE] sent
};

}  // namespace

MHD_Result HttpGateway::State::Completions(MHD_Connection* c, const std::string& body) {
  absl::StatusOr<Forwarded> headers = ForwardedHeaders(c);
  if (!headers.ok()) return RespondError(c, headers.status());
  absl::StatusOr<CompletionCall> call = internal::ParseCompletion(body, options.model_id);
  if (!call.ok()) return RespondError(c, call.status());
  const bool stream = call->stream;
  auto run = std::make_unique<CompletionRun>(stub.get(), &gate, options, std::move(*headers),
                                             std::move(*call));
  if (std::optional<Failure> failed = run->Begin()) return RespondError(c, *failed);
  if (!stream) {
    Json completion;
    if (std::optional<Failure> failed = run->ReadAll(&completion)) {
      return RespondError(c, *failed);
    }
    return RespondJson(c, MHD_HTTP_OK, completion);
  }
  Reply reply;
  reply.content_type = "text/event-stream";
  reply.stream = std::move(run);
  return Send(c, std::move(reply));
}

MHD_Result HttpGateway::State::Models(MHD_Connection* c) {
  absl::StatusOr<Forwarded> headers = ForwardedHeaders(c);
  if (!headers.ok()) return RespondError(c, headers.status());
  grpc::ClientContext ctx;
  headers->AttachTo(&ctx);
  pb::ServerInfo info;
  CallGate::Ticket ticket(&gate);
  if (!ticket.admitted()) return RespondError(c, Failure{ShuttingDown(), std::nullopt});
  grpc::Status st = stub->GetServerInfo(&ctx, pb::GetServerInfoRequest(), &info);
  if (!st.ok()) return RespondError(c, Failure{st, RetryAfterMs(ctx)});
  Json model = {{"id", options.model_id},
                {"object", "model"},
                {"created", 0},
                {"owned_by", "ttt-serve"},
                {"model_fingerprint", info.model_fingerprint()},
                {"vocab_size", info.vocab_size()},
                {"max_generate_tokens", info.max_generate_tokens()}};
  return RespondJson(c, MHD_HTTP_OK, {{"object", "list"}, {"data", Json::array({model})}});
}

// Ready when the gRPC service's own health says SERVING (it turns NOT_SERVING at shutdown).
MHD_Result HttpGateway::State::Ready(MHD_Connection* c) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  grpc::health::v1::HealthCheckRequest req;
  req.set_service(kHealthService);
  grpc::health::v1::HealthCheckResponse resp;
  CallGate::Ticket ticket(&gate);
  grpc::Status st = ticket.admitted() ? health->Check(&ctx, req, &resp) : ShuttingDown();
  if (st.ok() && resp.status() == grpc::health::v1::HealthCheckResponse::SERVING) {
    return RespondJson(c, MHD_HTTP_OK, {{"status", "serving"}});
  }
  return RespondJson(
      c, MHD_HTTP_SERVICE_UNAVAILABLE,
      {{"status", "not serving"},
       {"reason", st.ok() ? "the gRPC health service says NOT_SERVING" : st.error_message()}});
}

MHD_Result HttpGateway::State::Route(MHD_Connection* c, const std::string& path,
                                     const std::string& method, Request* request) {
  struct Route {
    const char* path;
    const char* method;
  };
  static const Route kRoutes[] = {{"/healthz", MHD_HTTP_METHOD_GET},
                                  {"/readyz", MHD_HTTP_METHOD_GET},
                                  {"/v1/models", MHD_HTTP_METHOD_GET},
                                  {"/v1/completions", MHD_HTTP_METHOD_POST}};
  for (const Route& route : kRoutes) {
    if (path != route.path) continue;
    if (method != route.method) {
      return RespondHttpError(c, MHD_HTTP_METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED",
                              absl::StrCat(path, " takes ", route.method));
    }
    if (path == "/healthz") return RespondJson(c, MHD_HTTP_OK, {{"status", "alive"}});
    if (path == "/readyz") return Ready(c);
    if (path == "/v1/models") return Models(c);
    return Completions(c, request->body);
  }
  return Rest(c, path, method, request);
}

MHD_Result HttpGateway::State::Rest(MHD_Connection* c, const std::string& path,
                                    const std::string& method, Request* request) {
  internal::RestRequest rest_request;
  absl::StatusOr<Forwarded> headers = ForwardedHeaders(c);
  if (!headers.ok()) return Send(c, internal::ErrorReply(internal::ToGrpc(headers.status())));
  rest_request.headers = std::move(*headers);
  rest_request.method = method;
  rest_request.path = path;
  const char* type = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
  rest_request.content_type = type == nullptr ? "" : type;
  rest_request.body = std::move(request->body);
  rest_request.query = QueryOf(c);
  rest_request.upload = request->upload.get();
  std::optional<Reply> reply = rest->Handle(std::move(rest_request));
  if (reply) return Send(c, std::move(*reply));
  return RespondHttpError(c, MHD_HTTP_NOT_FOUND, "NOT_FOUND",
                          absl::StrCat("no route ", method, " ", path,
                                       " (routes: POST /v1/completions, GET /v1/models, "
                                       "/healthz, /readyz, ",
                                       rest->RouteList(), ")"));
}

// libmicrohttpd calls this once when a request's header is in, then with the body's pieces,
// then once more with none left, when the request is answered.
MHD_Result HttpGateway::State::Answer(void* cls, MHD_Connection* c, const char* url,
                                      const char* method, const char*, const char* upload_data,
                                      size_t* upload_data_size, void** request_context) {
  auto* s = static_cast<State*>(cls);
  const int64_t limit = s->options.max_body_bytes;
  auto* request = static_cast<Request*>(*request_context);
  if (request == nullptr) {
    request = new Request();
    *request_context = request;
    const char* type =
        MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    if (internal::RestGateway::IsUpload(method, url, type == nullptr ? "" : type)) {
      absl::StatusOr<Forwarded> headers = ForwardedHeaders(c);
      // A bad header: the body is read as any other and Rest() answers the refusal.
      if (headers.ok()) request->upload = s->rest->StartUpload(url, *headers, QueryOf(c), limit);
      if (request->upload != nullptr && request->upload->refused()) {
        return s->Dispatch(c, url, method, request);  // before the body is read
      }
      if (request->upload != nullptr) return MHD_YES;
    }
    // A declared oversized body is refused before it is read (and before "100 Continue").
    const char* length =
        MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (length != nullptr && std::strtoull(length, nullptr, 10) > static_cast<uint64_t>(limit)) {
      return RespondTooLarge(c, url,
                             absl::StrCat("the request body is ", length, " bytes; at most ", limit,
                                          " are accepted (--http_max_body_bytes)"));
    }
    return MHD_YES;
  }
  if (*upload_data_size != 0 && request->upload != nullptr) {
    const size_t size = std::exchange(*upload_data_size, 0);
    if (request->upload->Append(upload_data, size)) return MHD_YES;
    // Refused mid-body: libmicrohttpd answers only once the body is in, so the rest is read
    // and dropped, up to the body limit; past that the connection is closed.
    request->discarded += static_cast<int64_t>(size);
    return request->discarded > limit ? MHD_NO : MHD_YES;
  }
  if (*upload_data_size != 0) {
    // A chunked body growing past the limit has no Content-Length to refuse it by: the
    // connection is closed.
    if (static_cast<int64_t>(request->body.size() + *upload_data_size) > limit) return MHD_NO;
    request->body.append(upload_data, *upload_data_size);
    *upload_data_size = 0;
    return MHD_YES;
  }
  return s->Dispatch(c, url, method, request);
}

MHD_Result HttpGateway::State::Dispatch(MHD_Connection* c, const std::string& path,
                                        const std::string& method, Request* request) {
  try {  // nothing may unwind through libmicrohttpd's C frames
    return Route(c, path, method, request);
  } catch (const std::exception& e) {
    return RespondError(c, absl::InternalError(absl::StrCat("request failed: ", e.what())));
  }
}

absl::StatusOr<std::unique_ptr<HttpGateway>> HttpGateway::Start(
    HttpGatewayOptions options, std::shared_ptr<grpc::Channel> channel) {
  const bool https = !options.tls_cert_pem.empty();
  if (https != !options.tls_key_pem.empty()) {
    return absl::InvalidArgumentError("the HTTP port's TLS needs both a certificate and a key");
  }
  if (https && MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES) {
    return absl::FailedPreconditionError(
        "the gRPC port serves TLS, so --http_listen would too, but this libmicrohttpd was "
        "built without TLS (GnuTLS)");
  }
  absl::StatusOr<int> fd = util::ListenOn(options.listen, "HTTP (--http_listen)");
  if (!fd.ok()) return fd.status();
  std::unique_ptr<HttpGateway> gateway(new HttpGateway());
  gateway->port_ = util::BoundPort(*fd);
  gateway->state_ = std::make_unique<State>();
  State* s = gateway->state_.get();
  s->options = std::move(options);
  s->channel = std::move(channel);
  s->stub = pb::TttService::NewStub(s->channel);
  s->health = grpc::health::v1::Health::NewStub(s->channel);
  s->rest = std::make_unique<internal::RestGateway>(s->stub.get(), &s->gate);
  // libmicrohttpd keeps pointers to the PEM strings: they live in s->options.
  MHD_OptionItem tls_options[] = {
      {https ? MHD_OPTION_HTTPS_MEM_CERT : MHD_OPTION_END, 0,
       const_cast<char*>(s->options.tls_cert_pem.c_str())},
      {MHD_OPTION_HTTPS_MEM_KEY, 0, const_cast<char*>(s->options.tls_key_pem.c_str())},
      {MHD_OPTION_END, 0, nullptr}};
  s->daemon = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                                   MHD_USE_POLL | (https ? MHD_USE_TLS : 0),
                               0, nullptr, nullptr, &State::Answer, s, MHD_OPTION_LISTEN_SOCKET,
                               *fd, MHD_OPTION_CONNECTION_LIMIT, s->options.max_connections,
                               MHD_OPTION_CONNECTION_TIMEOUT, s->options.idle_timeout_s,
                               MHD_OPTION_NOTIFY_COMPLETED, &State::Completed, s, MHD_OPTION_ARRAY,
                               tls_options, MHD_OPTION_END);
  if (s->daemon == nullptr) {
    close(*fd);
    if (https) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot serve HTTPS on ", s->options.listen,
                       ": libmicrohttpd refused the certificate and key"));
    }
    return absl::FailedPreconditionError(
        absl::StrCat("cannot serve HTTP on ", s->options.listen, ": libmicrohttpd did not start"));
  }
  return gateway;
}

void HttpGateway::StopCalls() {
  if (state_ != nullptr) state_->gate.Close();
}

HttpGateway::~HttpGateway() {
  StopCalls();
  if (state_ != nullptr && state_->daemon != nullptr) MHD_stop_daemon(state_->daemon);
}

}  // namespace ttt::http
