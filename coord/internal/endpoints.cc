#include "coord/internal/endpoints.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "grpcpp/security/tls_certificate_provider.h"
#include "grpcpp/security/tls_credentials_options.h"
#include "util/status_macros.h"

namespace ttt::coord::internal {
namespace {

// Pause between two passes over the endpoints in which none answered, so that their channels
// can reconnect (their reconnect backoff is capped at a second below).
constexpr auto kPassPause = std::chrono::milliseconds(50);

// One endpoint as given: whether it asks for TLS, and its gRPC target ("host:port").
struct Parsed {
  bool tls = false;
  std::string target;
};

absl::StatusOr<Parsed> Parse(const std::string& address) {
  Parsed parsed;
  absl::string_view rest = address;
  if (absl::ConsumePrefix(&rest, "https://")) {
    parsed.tls = true;
  } else {
    absl::ConsumePrefix(&rest, "http://");
  }
  absl::ConsumeSuffix(&rest, "/");
  const size_t colon = rest.rfind(':');
  int port = 0;
  const bool valid = colon != absl::string_view::npos && colon > 0 &&
                     rest.find('/') == absl::string_view::npos &&
                     absl::SimpleAtoi(rest.substr(colon + 1), &port) && port > 0 && port < 65536;
  if (!valid) {
    return absl::InvalidArgumentError(absl::StrCat(
        "etcd endpoint \"", address,
        "\" is not host:port, http://host:port or https://host:port with a port in 1..65535"));
  }
  parsed.target = std::string(rest);
  return parsed;
}

// A whole PEM file (at most kMaxPemBytes). INVALID_ARGUMENT naming `what` and the path.
absl::StatusOr<std::string> ReadPem(const std::string& path, absl::string_view what) {
  constexpr std::uintmax_t kMaxPemBytes = 1 << 20;
  std::error_code error;
  const bool regular = std::filesystem::is_regular_file(path, error);
  const std::uintmax_t size = regular ? std::filesystem::file_size(path, error) : 0;
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  if (regular && !error && size <= kMaxPemBytes && in) text << in.rdbuf();
  if (!regular || error || size > kMaxPemBytes || !in || text.str().empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("etcd TLS ", what, " file \"", path,
                     "\" cannot be read (a regular PEM file of at most ", kMaxPemBytes, " bytes)"));
  }
  return text.str();
}

// The channel credentials for endpoints that all ask for TLS (`tls`) or none do.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> Credentials(bool tls,
                                                                      const TlsFiles& files) {
  const bool any_file =
      !files.ca_file.empty() || !files.cert_file.empty() || !files.key_file.empty();
  if (!tls) {
    if (any_file) {
      return absl::InvalidArgumentError(
          "etcd TLS files are given but the endpoints are not https://; use https:// endpoints");
    }
    return grpc::InsecureChannelCredentials();
  }
  if (files.cert_file.empty() != files.key_file.empty()) {
    return absl::InvalidArgumentError(
        "etcd TLS client certificate and key go together: give both files or neither");
  }
  // Read once here for a clear error at start; gRPC's provider then reads them again every
  // refresh interval (a key that does not match its certificate is not taken).
  const bool roots = !files.ca_file.empty();
  const bool identity = !files.cert_file.empty();
  if (roots) RETURN_IF_ERROR(ReadPem(files.ca_file, "CA").status());
  if (identity) {
    RETURN_IF_ERROR(ReadPem(files.cert_file, "client certificate").status());
    RETURN_IF_ERROR(ReadPem(files.key_file, "client key").status());
  }
  if (!roots && !identity) return grpc::SslCredentials({});  // the system's roots, no identity
  const auto refresh = static_cast<unsigned>(absl::ToInt64Seconds(files.refresh_interval));
  std::shared_ptr<grpc::experimental::CertificateProviderInterface> provider;
  if (roots && identity) {
    provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
        files.key_file, files.cert_file, files.ca_file, refresh);
  } else if (roots) {
    provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(files.ca_file,
                                                                                    refresh);
  } else {
    provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
        files.key_file, files.cert_file, refresh);
  }
  // Without watched roots gRPC uses the system's; the server's name is checked either way.
  grpc::experimental::TlsChannelCredentialsOptions options;
  options.set_certificate_provider(std::move(provider));
  if (roots) options.watch_root_certs();
  if (identity) options.watch_identity_key_cert_pairs();
  return grpc::experimental::TlsCredentials(options);
}

std::shared_ptr<grpc::Channel> MakeChannel(
    const std::string& target, const std::shared_ptr<grpc::ChannelCredentials>& credentials) {
  grpc::ChannelArguments args;
  // Each client its own connections: two clients in one process (tests, or two roles) must not
  // share a connection's fate.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  // A member that comes back is reconnected to within a second, not after minutes of backoff.
  // (Not GRPC_ARG_MIN_RECONNECT_BACKOFF_MS: it also cuts the connect timeout to that value.)
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  // etcd bounds requests (1.5 MiB by default), not responses: a List may be large.
  args.SetMaxReceiveMessageSize(256 << 20);
  return grpc::CreateCustomChannel(target, credentials, args);
}

// Waits until `channel` is connected. False when it failed to connect (refused, reset: nothing
// was sent on it) or `deadline` passed first.
bool WaitConnected(grpc::Channel& channel, Clock::time_point deadline) {
  bool retried = false;
  grpc_connectivity_state state = channel.GetState(/*try_to_connect=*/true);
  while (state != GRPC_CHANNEL_READY) {
    if (state == GRPC_CHANNEL_SHUTDOWN) return false;
    if (state == GRPC_CHANNEL_TRANSIENT_FAILURE) {
      if (retried) return false;
      // gRPC waits before reconnecting, 1 s growing 1.6-fold (a member back after a restart
      // stayed unused for 15 s). A call reaches this endpoint only when those before it failed,
      // so connecting now costs little.
      grpc::experimental::ChannelResetConnectionBackoff(&channel);
      retried = true;
    }
    if (!channel.WaitForStateChange(state, GrpcDeadline(deadline))) return false;
    state = channel.GetState(/*try_to_connect=*/true);
  }
  return true;
}

// Whether the failure is the endpoint's (down, partitioned, stalled, no leader) rather than an
// answer about the request.
bool EndpointFailed(const grpc::Status& status) {
  return status.error_code() == grpc::StatusCode::UNAVAILABLE ||
         status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
}

// etcd refuses a request that requires a leader while its member has none, before proposing it
// (rpctypes.ErrGRPCNoLeader), so the request was not applied.
bool RefusedBeforeProposal(const grpc::Status& status) {
  return status.error_code() == grpc::StatusCode::UNAVAILABLE &&
         absl::StrContains(status.error_message(), "etcdserver: no leader");
}

std::string Describe(const grpc::Status& status) {
  return absl::StrCat(status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED
                          ? "no answer in time"
                          : "unavailable",
                      status.error_message().empty() ? "" : ": ", status.error_message());
}

// One attempt at `endpoint` until `deadline`; nullopt when it could not be connected to (nothing
// was sent).
std::optional<grpc::Status> TryAt(const Endpoint& endpoint, Clock::time_point deadline,
                                  const Endpoints::Attempt& attempt) {
  if (!WaitConnected(*endpoint.channel, deadline)) return std::nullopt;
  grpc::ClientContext context;
  context.set_deadline(GrpcDeadline(deadline));
  // A member without a leader refuses at once instead of queueing the request until its
  // proposal times out (clientv3's WithRequireLeader).
  context.AddMetadata("hasleader", "true");
  return attempt(endpoint, context);
}

absl::Status Unanswered(absl::string_view what, const CallLimits& limits,
                        const std::vector<Endpoint>& endpoints,
                        const std::vector<std::string>& failures) {
  std::vector<std::string> lines;
  for (size_t i = 0; i < endpoints.size(); ++i) {
    lines.push_back(absl::StrCat(endpoints[i].address, ": ", failures[i]));
  }
  return absl::UnavailableError(absl::StrCat(what, ": no etcd endpoint answered within ",
                                             absl::FormatDuration(absl::FromChrono(limits.call)),
                                             " (", absl::StrJoin(lines, "; "), ")"));
}

}  // namespace

gpr_timespec GrpcDeadline(Clock::time_point deadline) {
  const auto remaining = std::max(Clock::duration::zero(), deadline - Clock::now());
  return gpr_time_add(
      gpr_now(GPR_CLOCK_MONOTONIC),
      gpr_time_from_nanos(std::chrono::nanoseconds(remaining).count(), GPR_TIMESPAN));
}

absl::Status FromGrpc(absl::string_view what, const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      absl::StrCat(what, ": ", status.error_message()));
}

absl::StatusOr<std::shared_ptr<Endpoints>> Endpoints::Create(
    const std::vector<std::string>& addresses, CallLimits limits, const TlsFiles& tls) {
  if (addresses.empty()) {
    return absl::InvalidArgumentError("no etcd endpoint given; pass at least one host:port");
  }
  if (limits.call <= Clock::duration::zero() || limits.attempt <= Clock::duration::zero()) {
    return absl::InvalidArgumentError("etcd call and attempt timeouts must be positive");
  }
  std::vector<Parsed> parsed;
  for (const std::string& address : addresses) {
    absl::StatusOr<Parsed> one = Parse(address);
    if (!one.ok()) return one.status();
    if (!parsed.empty() && one->tls != parsed.front().tls) {
      return absl::InvalidArgumentError(
          absl::StrCat("etcd endpoints mix https:// and plain ones (\"", addresses.front(),
                       "\", \"", address, "\"); the members of one cluster share one scheme"));
    }
    parsed.push_back(*std::move(one));
  }
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
      Credentials(parsed.front().tls, tls);
  if (!credentials.ok()) return credentials.status();
  std::vector<Endpoint> endpoints;
  for (size_t i = 0; i < addresses.size(); ++i) {
    Endpoint endpoint;
    endpoint.address = addresses[i];
    endpoint.channel = MakeChannel(parsed[i].target, *credentials);
    endpoint.kv = etcdserverpb::KV::NewStub(endpoint.channel);
    endpoint.lease = etcdserverpb::Lease::NewStub(endpoint.channel);
    endpoint.maintenance = etcdserverpb::Maintenance::NewStub(endpoint.channel);
    endpoints.push_back(std::move(endpoint));
  }
  return std::shared_ptr<Endpoints>(new Endpoints(std::move(endpoints), limits));
}

Endpoints::Endpoints(std::vector<Endpoint> endpoints, CallLimits limits)
    : endpoints_(std::move(endpoints)), limits_(limits) {}

absl::Status Endpoints::CallAt(const std::string& address, absl::string_view what,
                               const Attempt& attempt) const {
  for (const Endpoint& endpoint : endpoints_) {
    if (endpoint.address != address) continue;
    std::optional<grpc::Status> status = TryAt(endpoint, Clock::now() + limits_.attempt, attempt);
    if (!status.has_value()) return absl::UnavailableError(absl::StrCat(what, ": not connected"));
    return FromGrpc(what, *status);
  }
  return absl::InvalidArgumentError(
      absl::StrCat(what, ": not one of this client's endpoints (give it exactly as configured)"));
}

absl::Status Endpoints::Call(absl::string_view what, Resend resend, const Attempt& attempt) const {
  return Call(what, resend, limits_, attempt);
}

absl::Status Endpoints::Call(absl::string_view what, Resend resend, const CallLimits& limits,
                             const Attempt& attempt) const {
  const size_t count = endpoints_.size();
  const Clock::time_point deadline = Clock::now() + limits.call;
  std::vector<std::string> failures(count, "not tried");  // the latest per endpoint
  const size_t first = preferred_.load();
  for (;;) {
    for (size_t i = 0; i < count; ++i) {
      const size_t index = (first + i) % count;
      const Endpoint& endpoint = endpoints_[index];
      const Clock::time_point now = Clock::now();
      if (now >= deadline) break;
      const std::optional<grpc::Status> answer =
          TryAt(endpoint, std::min(deadline, now + limits.attempt), attempt);
      if (!answer.has_value()) {
        failures[index] = "not connected";
        continue;
      }
      const grpc::Status& status = *answer;
      if (status.ok() || !EndpointFailed(status)) {
        preferred_.store(index);
        return FromGrpc(what, status);
      }
      preferred_.store((index + 1) % count);  // the next call starts elsewhere
      if (resend == Resend::kOnlyIfNotApplied && !RefusedBeforeProposal(status)) {
        return absl::UnavailableError(absl::StrCat(
            what, ": outcome unknown: sent to etcd at ", endpoint.address, ", which failed (",
            Describe(status), "); it may or may not have been applied: read before retrying"));
      }
      failures[index] = Describe(status);
    }
    const Clock::time_point now = Clock::now();
    if (now >= deadline) break;
    std::this_thread::sleep_until(std::min(deadline, now + kPassPause));
  }
  return Unanswered(what, limits, endpoints_, failures);
}

}  // namespace ttt::coord::internal
