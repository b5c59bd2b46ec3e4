// Shared pieces of the ttt subcommands (see client.h).
#include "cli/client.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>

#include <google/protobuf/util/json_util.h>

#include "absl/flags/flag.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "auth/client_credentials.h"
#include "cli/flags.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "util/error_reason.h"

namespace ttt::cli {

namespace pb = tttserve::v1;

std::string Arg(int argc, char** argv, int i) { return i < argc ? argv[i] : ""; }

// The channel's credentials from --tls, --ca_file, --cert_file/--key_file and --token or
// TTT_TOKEN (auth/client_credentials.h). A file that cannot be read is a usage error (exit 2).
// A flag's value, else the environment variable's, else `fallback`.
std::string FlagOrEnvironment(const std::string& flag, const char* variable,
                              const std::string& fallback = "") {
  if (!flag.empty()) return flag;
  const char* value = std::getenv(variable);
  return value != nullptr && *value != '\0' ? value : fallback;
}

// --ca_file, else TTT_CA_FILE.
std::string CaFile() { return FlagOrEnvironment(absl::GetFlag(FLAGS_ca_file), "TTT_CA_FILE"); }

// Whether the channel speaks TLS (auth/client_credentials.h: --tls, implied by a CA or a
// client certificate).
bool UsesTls() {
  return absl::GetFlag(FLAGS_tls) || !CaFile().empty() || !absl::GetFlag(FLAGS_cert_file).empty();
}

std::shared_ptr<grpc::Channel> MakeChannel() {
  auth::ClientAuthOptions options;
  options.tls = absl::GetFlag(FLAGS_tls);
  options.ca_file = CaFile();
  options.cert_file = absl::GetFlag(FLAGS_cert_file);
  options.key_file = absl::GetFlag(FLAGS_key_file);
  options.token = auth::TokenFromFlagOrEnvironment(absl::GetFlag(FLAGS_token));
  auto channel = auth::CreateAuthChannel(Address(), options);
  if (!channel.ok()) {
    std::fprintf(stderr, "ttt: %s\n", std::string(channel.status().message()).c_str());
    std::exit(2);
  }
  return *channel;
}

std::string Address() {
  return FlagOrEnvironment(absl::GetFlag(FLAGS_address), "TTT_ADDRESS", "localhost:50051");
}

std::shared_ptr<grpc::Channel> Channel() {
  static const auto* channel = new std::shared_ptr<grpc::Channel>(MakeChannel());
  return *channel;
}

std::unique_ptr<pb::TttService::Stub> Stub() { return pb::TttService::NewStub(Channel()); }

std::unique_ptr<grpc::ClientContext> Context(const std::string& session_id) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(
      std::chrono::system_clock::now() +
      std::chrono::milliseconds(static_cast<int64_t>(absl::GetFlag(FLAGS_timeout_s) * 1000)));
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
  const int code = static_cast<int>(s.error_code());
  std::fflush(stdout);  // what was printed before comes first when both go to one pipe
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
  const std::string name = util::StatusCodeName(code, "?");
  // A reason that only repeats the code (the server's default) is left out unless a retry time
  // comes with it: "ttt: NOT_FOUND: ...".
  const bool says_more = !reason.empty() && (reason != name || !retry_in.empty());
  const std::string details = says_more ? absl::StrCat(" [", reason, retry_in, "]") : "";
  std::fprintf(stderr, "ttt: %s%s: %s\n", name.c_str(), details.c_str(), s.error_message().c_str());
  const std::string hint = ConnectionHint(s, UsesTls(), Address());
  if (!hint.empty()) std::fprintf(stderr, "ttt: hint: %s\n", hint.c_str());
  return 1;
}

std::string ConnectionHint(const grpc::Status& s, bool tls, const std::string& address) {
  if (s.error_code() != grpc::StatusCode::UNAVAILABLE) return "";
  const std::string& m = s.error_message();
  if (absl::StrContains(m, "failed to connect to all addresses") &&
      (absl::StrContains(m, "Connection refused") || absl::StrContains(m, "No route"))) {
    return "nothing answers at " + address +
           ": is ttt-serve running there? (--address or "
           "TTT_ADDRESS)";
  }
  if (!tls && (absl::StrContains(m, "Socket closed") || absl::StrContains(m, "Connection reset") ||
               absl::StrContains(m, "Broken pipe"))) {
    return "the server closed a plaintext connection: if " + address +
           " serves TLS, add --tls (and --ca_file, or TTT_CA_FILE, unless the system's roots "
           "signed its certificate)";
  }
  if (tls && (absl::StrContains(m, "andshake") || absl::StrContains(m, "WRONG_VERSION_NUMBER") ||
              absl::StrContains(m, "SSL"))) {
    return "the TLS handshake failed: check --ca_file (or TTT_CA_FILE) against the server's "
           "certificate, or drop --tls if " +
           address + " serves plaintext";
  }
  return "";
}

bool JsonOutput() { return absl::GetFlag(FLAGS_output) == "json"; }

bool ValidOutputFlag() {
  const std::string output = absl::GetFlag(FLAGS_output);
  return output == "text" || output == "json";
}

void PrintJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.always_print_primitive_fields = true;
  options.preserve_proto_field_names = true;
  std::string json;
  if (!google::protobuf::util::MessageToJsonString(message, &json, options).ok()) json = "{}";
  PrintJsonText(json);
}

void PrintJsonText(const std::string& json) {
  std::fwrite(json.data(), 1, json.size(), stdout);
  std::fputc('\n', stdout);
}

void PrintCreatedSession(const pb::Session& s) {
  if (JsonOutput()) return PrintJson(s);
  std::printf("%s\n", s.session_id().c_str());
}

void PrintSessionResult(const pb::Session& s) {
  if (JsonOutput()) return PrintJson(s);
  PrintSession(s);
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
  std::printf(
      "  tokens received %lld, applied %lld, pending %lld; chunks %lld; position %lld; "
      "documents %lld; generated %lld\n",
      static_cast<long long>(c.tokens_received()), static_cast<long long>(c.tokens_applied()),
      static_cast<long long>(c.tokens_pending()), static_cast<long long>(c.chunks_applied()),
      static_cast<long long>(c.position()), static_cast<long long>(c.documents_completed()),
      static_cast<long long>(c.tokens_generated()));
}

void PrintSession(const pb::Session& s) {
  std::printf("session %s (tenant %s)%s%s\n", s.session_id().c_str(), s.tenant().c_str(),
              s.residency() == pb::RESIDENCY_EVICTED   ? " [on disk]"
              : s.residency() == pb::RESIDENCY_COMPACT ? " [compact]"
                                                       : "",
              s.writer_active() ? " [writer active]" : "");
  PrintCounters(s.counters());
  std::printf(
      "  memory %lld bytes; reset_at_document_end %s; fade_at_document_end %g; "
      "idle_ttl_s %lld\n",
      static_cast<long long>(s.memory_bytes()),
      s.options().reset_at_document_end() ? "true" : "false", s.options().fade_at_document_end(),
      static_cast<long long>(s.options().idle_ttl_seconds()));
  for (const auto& d : s.deltas()) {
    std::printf("  layer %lld: |delta W_down| = %.6g\n", static_cast<long long>(d.layer()),
                d.delta_norm());
  }
  for (const auto& [k, v] : s.options().labels())
    std::printf("  label %s=%s\n", k.c_str(), v.c_str());
}

void PrintCheckpoint(const pb::CheckpointInfo& c) {
  std::printf("checkpoint %s: session %s, %lld bytes, position %lld, model %s\n",
              c.checkpoint_id().c_str(), c.session_id().c_str(),
              static_cast<long long>(c.size_bytes()),
              static_cast<long long>(c.counters().position()), c.model_fingerprint().c_str());
}

}  // namespace ttt::cli
