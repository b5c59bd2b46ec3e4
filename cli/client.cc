// Shared pieces of the ttt subcommands (see client.h).
#include "cli/client.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "auth/client_credentials.h"
#include "cli/flags.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"

namespace ttt::cli {

namespace pb = tttserve::v1;

std::string Arg(int argc, char** argv, int i) { return i < argc ? argv[i] : ""; }

// The channel's credentials from --tls, --ca_file, --cert_file/--key_file and --token or
// TTT_TOKEN (auth/client_credentials.h). A file that cannot be read is a usage error (exit 2).
std::shared_ptr<grpc::Channel> MakeChannel() {
  auth::ClientAuthOptions options;
  options.tls = absl::GetFlag(FLAGS_tls);
  options.ca_file = absl::GetFlag(FLAGS_ca_file);
  options.cert_file = absl::GetFlag(FLAGS_cert_file);
  options.key_file = absl::GetFlag(FLAGS_key_file);
  options.token = auth::TokenFromFlagOrEnvironment(absl::GetFlag(FLAGS_token));
  auto channel = auth::CreateAuthChannel(absl::GetFlag(FLAGS_address), options);
  if (!channel.ok()) {
    std::fprintf(stderr, "ttt: %s\n", std::string(channel.status().message()).c_str());
    std::exit(2);
  }
  return *channel;
}

std::shared_ptr<grpc::Channel> Channel() {
  static const auto* channel = new std::shared_ptr<grpc::Channel>(MakeChannel());
  return *channel;
}

std::unique_ptr<pb::TttService::Stub> Stub() { return pb::TttService::NewStub(Channel()); }

std::unique_ptr<grpc::ClientContext> Context(const std::string& session_id) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::milliseconds(
                        static_cast<int64_t>(absl::GetFlag(FLAGS_timeout_s) * 1000)));
  if (!absl::GetFlag(FLAGS_tenant).empty()) {
    ctx->AddMetadata("x-tenant-id", absl::GetFlag(FLAGS_tenant));
  }
  if (!session_id.empty()) ctx->AddMetadata("x-session-id", session_id);
  return ctx;
}

bool TextOptionsFromFlags(pb::TextOptions* out) {
  out->set_parse_special_tokens(absl::GetFlag(FLAGS_parse_special_tokens));
  const std::string add_bos = absl::GetFlag(FLAGS_add_bos);
  if (add_bos == "true" || add_bos == "false") {
    out->set_add_bos(add_bos == "true");
  } else if (!add_bos.empty()) {
    return false;
  }
  return true;
}

int Fail(const grpc::Status& s) {
  static const char* kNames[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT",
                                 "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
                                 "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
                                 "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
                                 "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
  const int code = static_cast<int>(s.error_code());
  // The service's machine-readable details (docs/contract.md, "Error reasons"): the reason, and
  // when retrying helps, after how long: "ttt: ABORTED [SESSION_BUSY, retry in 1s]: ...".
  std::string reason, retry_in;
  google::rpc::Status status;
  if (!s.error_details().empty() && status.ParseFromString(s.error_details())) {
    for (const google::protobuf::Any& any : status.details()) {
      google::rpc::ErrorInfo info;
      google::rpc::RetryInfo retry;
      if (any.UnpackTo(&info)) reason = info.reason();
      if (any.UnpackTo(&retry)) {
        retry_in = absl::StrCat(
            ", retry in ", retry.retry_delay().seconds() + retry.retry_delay().nanos() / 1e9, "s");
      }
    }
  }
  const std::string details = reason.empty() ? "" : absl::StrCat(" [", reason, retry_in, "]");
  std::fprintf(stderr, "ttt: %s%s: %s\n", code >= 0 && code <= 16 ? kNames[code] : "?",
               details.c_str(), s.error_message().c_str());
  return 1;
}

bool ParseIds(const std::string& s, std::vector<int32_t>* out) {
  for (absl::string_view piece : absl::StrSplit(s, absl::ByAnyChar(" ,\n\t"), absl::SkipEmpty())) {
    int32_t v;
    if (!absl::SimpleAtoi(piece, &v)) return false;
    out->push_back(v);
  }
  return true;
}

std::map<std::string, std::string> ParseLabels(const std::string& s) {
  std::map<std::string, std::string> out;
  for (absl::string_view kv : absl::StrSplit(s, ',', absl::SkipEmpty())) {
    std::pair<std::string, std::string> p = absl::StrSplit(kv, absl::MaxSplits('=', 1));
    out[p.first] = p.second;
  }
  return out;
}

void PrintCounters(const pb::SessionCounters& c) {
  std::printf("  tokens received %lld, applied %lld, pending %lld; chunks %lld; position %lld; "
              "documents %lld; generated %lld\n",
              static_cast<long long>(c.tokens_received()), static_cast<long long>(c.tokens_applied()),
              static_cast<long long>(c.tokens_pending()), static_cast<long long>(c.chunks_applied()),
              static_cast<long long>(c.position()), static_cast<long long>(c.documents_completed()),
              static_cast<long long>(c.tokens_generated()));
}

void PrintSession(const pb::Session& s) {
  std::printf("session %s (tenant %s)%s%s\n", s.session_id().c_str(), s.tenant().c_str(),
              s.resident() ? "" : " [on disk]", s.writer_active() ? " [writer active]" : "");
  PrintCounters(s.counters());
  std::printf("  memory %lld bytes; reset_at_document_end %s; idle_ttl_s %lld\n",
              static_cast<long long>(s.memory_bytes()),
              s.options().reset_at_document_end() ? "true" : "false",
              static_cast<long long>(s.options().idle_ttl_seconds()));
  for (const auto& d : s.deltas()) {
    std::printf("  layer %lld: |delta W_down| = %.6g\n", static_cast<long long>(d.layer()),
                d.delta_norm());
  }
  for (const auto& [k, v] : s.options().labels()) std::printf("  label %s=%s\n", k.c_str(), v.c_str());
}

void PrintCheckpoint(const pb::CheckpointInfo& c) {
  std::printf("checkpoint %s: session %s, %lld bytes, position %lld, model %s\n",
              c.checkpoint_id().c_str(), c.session_id().c_str(),
              static_cast<long long>(c.size_bytes()),
              static_cast<long long>(c.counters().position()), c.model_fingerprint().c_str());
}

}  // namespace ttt::cli
