// The access log interceptor and gRPC's log routing (see access_log.h).
#include "server/access_log.h"

#include <cstring>
#include <mutex>
#include <random>
#include <string>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>
#include <grpc/support/log.h>
#include <grpcpp/grpcpp.h>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "server/internal/reactors.h"
#include "server/metrics.h"
#include "server/status.h"
#include "tttserve/v1/ttt_service.pb.h"
#include "util/log.h"

namespace ttt::server {
namespace {

namespace pb = tttserve::v1;
using google::protobuf::Descriptor;
using google::protobuf::Message;
using grpc::experimental::InterceptionHookPoints;
using internal::Clock;

// gRPC hands an interceptor its messages as void*; each TttService method's entry turns them back
// into their real types (then protobuf reflection reads them), so nothing is cast blindly.
using MessageCast = const Message* (*)(const void*);
template <typename T>
const Message* As(const void* message) {
  return static_cast<const T*>(message);
}

struct MethodTypes {
  MessageCast request;
  MessageCast response;
  const Descriptor* request_type;
  const Descriptor* response_type;
};

template <typename Request, typename Response>
MethodTypes Types() {
  return {&As<Request>, &As<Response>, Request::descriptor(), Response::descriptor()};
}

const absl::flat_hash_map<std::string, MethodTypes>& TttMethods() {
  static const auto* table = new absl::flat_hash_map<std::string, MethodTypes>{
      {"GetServerInfo", Types<pb::GetServerInfoRequest, pb::ServerInfo>()},
      {"CreateSession", Types<pb::CreateSessionRequest, pb::Session>()},
      {"GetSession", Types<pb::GetSessionRequest, pb::Session>()},
      {"ListSessions", Types<pb::ListSessionsRequest, pb::ListSessionsResponse>()},
      {"DeleteSession", Types<pb::DeleteSessionRequest, pb::DeleteSessionResponse>()},
      {"Ingest", Types<pb::IngestRequest, pb::IngestResponse>()},
      {"Generate", Types<pb::GenerateRequest, pb::GenerateResponse>()},
      {"Score", Types<pb::ScoreRequest, pb::ScoreResponse>()},
      {"Checkpoint", Types<pb::CheckpointRequest, pb::CheckpointInfo>()},
      {"Restore", Types<pb::RestoreRequest, pb::Session>()},
      {"Reset", Types<pb::ResetRequest, pb::Session>()},
      {"Fork", Types<pb::ForkRequest, pb::Session>()},
      {"ListCheckpoints", Types<pb::ListCheckpointsRequest, pb::ListCheckpointsResponse>()},
      {"DeleteCheckpoint", Types<pb::DeleteCheckpointRequest, pb::DeleteCheckpointResponse>()},
      {"ExportSession", Types<pb::ExportSessionRequest, pb::ExportSessionResponse>()},
      {"ImportSession", Types<pb::ImportSessionRequest, pb::Session>()},
      {"Tokenize", Types<pb::TokenizeRequest, pb::TokenizeResponse>()},
      {"Detokenize", Types<pb::DetokenizeRequest, pb::DetokenizeResponse>()},
  };
  return *table;
}

constexpr absl::string_view kTttPrefix = "/tttserve.v1.TttService/";
constexpr absl::string_view kHealthCheck = "grpc.health.v1.Health/Check";
constexpr const char* kOtherMethods[] = {
    "grpc.health.v1.Health/Check", "grpc.health.v1.Health/Watch",
    "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "grpc.reflection.v1.ServerReflection/ServerReflectionInfo"};

// The message's `session_id` field ("" when it has none or it is empty).
std::string SessionIdOf(const Message& message) {
  const auto* field = message.GetDescriptor()->FindFieldByName("session_id");
  if (field == nullptr || field->type() != google::protobuf::FieldDescriptor::TYPE_STRING ||
      field->is_repeated()) {
    return "";
  }
  return message.GetReflection()->GetString(message, field);
}

// A client's request id is kept only when it is short and plain (it is echoed and logged).
bool IsPlainRequestId(absl::string_view id) {
  if (id.empty() || id.size() > 128) return false;
  for (const char c : id) {
    if (!absl::ascii_isalnum(c) && c != '.' && c != '_' && c != ':' && c != '-') return false;
  }
  return true;
}

std::string NewRequestId() {
  thread_local std::mt19937_64 random{std::random_device{}()};
  return absl::StrFormat("%016x%016x", random(), random());
}

// The tenants handlers authorized calls as, by call, while the call's interceptor lives.
class TenantNotes {
 public:
  static TenantNotes& Get() {
    static auto* notes = new TenantNotes;  // never destroyed: calls may end during exit
    return *notes;
  }
  void Open(const grpc::ServerContextBase* ctx) {
    std::lock_guard<std::mutex> lock(mu_);
    tenants_[ctx];
  }
  void Note(const grpc::ServerContextBase* ctx, absl::string_view tenant) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = tenants_.find(ctx);
    if (it != tenants_.end()) it->second = std::string(tenant);
  }
  std::string Read(const grpc::ServerContextBase* ctx) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = tenants_.find(ctx);
    return it == tenants_.end() ? "" : it->second;
  }
  void Close(const grpc::ServerContextBase* ctx) {
    std::lock_guard<std::mutex> lock(mu_);
    tenants_.erase(ctx);
  }

 private:
  std::mutex mu_;
  absl::flat_hash_map<const grpc::ServerContextBase*, std::string> tenants_;  // guarded by mu_
};

// One call's interceptor: counts what passes, writes the access line when the status is sent
// (before it leaves, so a client that saw the status can read the line), and holds the call's
// place in the in-flight gauge until gRPC destroys the call. Thread-safety: a call's batches may
// be intercepted on several threads at once (a read and a write of a stream): state is guarded.
class AccessLogInterceptor final : public grpc::experimental::Interceptor {
 public:
  AccessLogInterceptor(grpc::experimental::ServerRpcInfo* info, Metrics* metrics)
      : ctx_(info->server_context()),
        method_(MethodLabel(info->method() == nullptr ? "" : info->method())),
        start_(Clock::now()),
        in_flight_(metrics->RequestsInFlight(method_)) {
    auto it = TttMethods().find(method_);
    types_ = it == TttMethods().end() ? nullptr : &it->second;
    in_flight_->Increment();
    TenantNotes::Get().Open(ctx_);
  }
  ~AccessLogInterceptor() override {
    // A call that ended without a status sent still gets its line (WriteLine writes one line
    // per call). The call is being torn down: its context is not asked for its peer any more.
    WriteLine(grpc::StatusCode::CANCELLED, /*peer=*/"-");
    TenantNotes::Get().Close(ctx_);
    in_flight_->Decrement();
  }

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_INITIAL_METADATA)) {
      OnInitialMetadata(*methods->GetRecvInitialMetadata());
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_MESSAGE)) {
      const void* message = methods->GetRecvMessage();
      if (message != nullptr) OnMessage(message, /*received=*/true);
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_MESSAGE)) {
      const void* message = methods->GetSendMessage();
      if (message != nullptr) OnMessage(message, /*received=*/false);
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      std::string id;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (request_id_.empty()) request_id_ = NewRequestId();
        id = request_id_;
      }
      methods->GetSendTrailingMetadata()->emplace(kRequestIdHeader, id);
      WriteLine(internal::RecordedCode(*ctx_, methods->GetSendStatus()), ctx_->peer());
    }
    methods->Proceed();
  }

 private:
  void OnInitialMetadata(const std::multimap<grpc::string_ref, grpc::string_ref>& metadata) {
    auto it = metadata.find(kRequestIdHeader);
    std::lock_guard<std::mutex> lock(mu_);
    if (it != metadata.end()) {
      const absl::string_view id(it->second.data(), it->second.size());
      if (IsPlainRequestId(id)) request_id_ = std::string(id);
    }
  }

  void OnMessage(const void* raw, bool received) {
    if (types_ == nullptr) {
      std::lock_guard<std::mutex> lock(mu_);
      ++(received ? messages_in_ : messages_out_);
      return;
    }
    const Message* message = received ? types_->request(raw) : types_->response(raw);
    const auto bytes = static_cast<int64_t>(message->ByteSizeLong());
    std::lock_guard<std::mutex> lock(mu_);
    if (received) {
      ++messages_in_;
      bytes_in_ += bytes;
      if (session_.empty()) session_ = SessionIdOf(*message);
    } else {
      ++messages_out_;
      bytes_out_ += bytes;
      if (created_.empty() && message->GetDescriptor() == pb::Session::descriptor()) {
        const std::string id = SessionIdOf(*message);
        if (id != session_) created_ = id;  // a new session (Create, Fork, Restore, Import)
      }
    }
  }

  void WriteLine(grpc::StatusCode code, const std::string& peer) {
    const std::string tenant = TenantNotes::Get().Read(ctx_);
    std::lock_guard<std::mutex> lock(mu_);
    if (logged_) return;
    logged_ = true;
    const util::LogLevel level =
        method_ == kHealthCheck ? util::LogLevel::kDebug : util::LogLevel::kInfo;
    if (!util::LogEnabled(level)) return;
    const double ms = std::chrono::duration<double, std::milli>(Clock::now() - start_).count();
    util::Log(level, "access", "call",
              {{"method", method_},
               {"tenant", tenant.empty() ? "-" : tenant},
               {"session", session_.empty() ? "-" : session_},
               {"created", created_.empty() ? "-" : created_},
               {"code", GrpcCodeName(code)},
               {"duration_ms", static_cast<double>(static_cast<int64_t>(ms * 1000)) / 1000},
               {"messages_in", messages_in_},
               {"bytes_in", bytes_in_},
               {"messages_out", messages_out_},
               {"bytes_out", bytes_out_},
               {"peer", peer.empty() ? "-" : peer},
               {"request_id", request_id_.empty() ? "-" : request_id_}});
  }

  grpc::ServerContextBase* const ctx_;
  const std::string method_;
  const Clock::time_point start_;
  prometheus::Gauge* const in_flight_;
  const MethodTypes* types_;  // null: not a TttService method (no message types known)

  std::mutex mu_;
  std::string request_id_;  // guarded by mu_
  std::string session_;     // guarded by mu_; the first request message's session_id
  std::string created_;     // guarded by mu_; the session a response named, when new
  int64_t messages_in_ = 0, bytes_in_ = 0, messages_out_ = 0, bytes_out_ = 0;  // guarded by mu_
  bool logged_ = false;                                                        // guarded by mu_
};

class AccessLogFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit AccessLogFactory(Metrics* metrics) : metrics_(metrics) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new AccessLogInterceptor(info, metrics_);  // gRPC owns it
  }

 private:
  Metrics* metrics_;
};

void GrpcLogToLog(gpr_log_func_args* args) {
  util::LogLevel level = util::LogLevel::kDebug;
  if (args->severity == GPR_LOG_SEVERITY_ERROR) level = util::LogLevel::kError;
  if (args->severity == GPR_LOG_SEVERITY_INFO) level = util::LogLevel::kInfo;
  const char* slash = std::strrchr(args->file, '/');
  util::Log(level, "grpc", args->message,
            {{"file", slash == nullptr ? args->file : slash + 1}, {"line", args->line}});
}

}  // namespace

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> NewAccessLogFactory(
    Metrics* metrics) {
  for (const auto& method : TttMethods()) metrics->RequestsInFlight(method.first);  // 0 at start
  return std::make_unique<AccessLogFactory>(metrics);
}

void NoteCallTenant(const grpc::ServerContextBase& ctx, absl::string_view tenant) {
  TenantNotes::Get().Note(&ctx, tenant);
}

std::string MethodLabel(absl::string_view full_method) {
  if (absl::ConsumePrefix(&full_method, kTttPrefix)) {
    return TttMethods().contains(full_method) ? std::string(full_method) : "unknown";
  }
  absl::ConsumePrefix(&full_method, "/");
  for (const char* known : kOtherMethods) {
    if (full_method == known) return known;
  }
  return "unknown";
}

void RouteGrpcLogsToLog() { gpr_set_log_function(GrpcLogToLog); }

namespace internal {
absl::Status CheckAccessLogMethodTable() {
  const auto* service = google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(
      "tttserve.v1.TttService");
  if (service == nullptr) return absl::NotFoundError("no tttserve.v1.TttService descriptor");
  if (service->method_count() != static_cast<int>(TttMethods().size())) {
    return absl::FailedPreconditionError(absl::StrCat("the service has ", service->method_count(),
                                                      " methods, the table ", TttMethods().size()));
  }
  for (int i = 0; i < service->method_count(); ++i) {
    const auto* method = service->method(i);
    auto it = TttMethods().find(method->name());
    if (it == TttMethods().end()) {
      return absl::FailedPreconditionError(absl::StrCat("no table entry for ", method->name()));
    }
    if (it->second.request_type != method->input_type() ||
        it->second.response_type != method->output_type()) {
      return absl::FailedPreconditionError(
          absl::StrCat("the table's message types of ", method->name(), " are wrong"));
    }
  }
  return absl::OkStatus();
}
}  // namespace internal

}  // namespace ttt::server
