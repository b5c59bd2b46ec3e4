// The members of one etcd cluster as seen by the client: a channel and stubs per endpoint, and the
// failover policy every call goes through (coord/etcd_client.h states it for callers).
#pragma once

#include <grpc/support/time.h>
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "etcd/etcdserver/etcdserverpb/rpc.grpc.pb.h"

namespace ttt::coord::internal {

using Clock = std::chrono::steady_clock;

// One member's endpoint.
struct Endpoint {
  std::string address;  // as the caller gave it
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<etcdserverpb::KV::Stub> kv;
  std::unique_ptr<etcdserverpb::Lease::Stub> lease;
  std::unique_ptr<etcdserverpb::Maintenance::Stub> maintenance;
};

// Whether a call may be sent to another endpoint after it failed at one.
enum class Resend {
  // Reads, lease grants and keep-alives: sending twice does no harm.
  kAlways,
  // Transactions: only when the first copy provably was not applied (never sent, or refused
  // before it was proposed); otherwise the failure is UNAVAILABLE "outcome unknown".
  kOnlyIfNotApplied,
};

// Bounds on one call.
struct CallLimits {
  Clock::duration call;     // the whole call, failover included
  Clock::duration attempt;  // one endpoint, connecting included
};

// PEM files for https:// endpoints (EtcdClientOptions says what each is).
struct TlsFiles {
  std::string ca_file;
  std::string cert_file;
  std::string key_file;
  absl::Duration refresh_interval = absl::Seconds(60);  // how often they are read again
};

// Thread-safe: endpoints are fixed at construction; the preferred endpoint is atomic.
class Endpoints {
 public:
  // One attempt of a call at one endpoint, with `context`'s deadline set.
  using Attempt =
      std::function<grpc::Status(const Endpoint& endpoint, grpc::ClientContext& context)>;

  // Validates "host:port" / "http://host:port" / "https://host:port" addresses, one scheme for
  // all, and the TLS files (INVALID_ARGUMENT saying what to fix), and creates one channel per
  // address.
  static absl::StatusOr<std::shared_ptr<Endpoints>> Create(
      const std::vector<std::string>& addresses, CallLimits limits, const TlsFiles& tls);

  const CallLimits& default_limits() const { return limits_; }

  // Runs `attempt` at the endpoint that answered last, then at the others in turn (passes over
  // all of them until limits.call runs out) as `resend` allows. `what` names the operation in
  // error messages. Returns OK or the error of etcd's answer (gRPC code, etcd's message prefixed
  // by `what`), or UNAVAILABLE when no endpoint answered.
  absl::Status Call(absl::string_view what, Resend resend, const Attempt& attempt) const;
  absl::Status Call(absl::string_view what, Resend resend, const CallLimits& limits,
                    const Attempt& attempt) const;

  // Runs `attempt` at the endpoint named `address` exactly as given at Create, without failover,
  // within the default attempt bound. INVALID_ARGUMENT when no endpoint has that name;
  // UNAVAILABLE when it cannot be connected to.
  absl::Status CallAt(const std::string& address, absl::string_view what,
                      const Attempt& attempt) const;

 private:
  Endpoints(std::vector<Endpoint> endpoints, CallLimits limits);

  const std::vector<Endpoint> endpoints_;
  const CallLimits limits_;
  // Index of the endpoint that answered last: where the next call starts.
  mutable std::atomic<size_t> preferred_{0};
};

// `deadline` on gRPC's monotonic clock (gRPC's own time points are the wall clock's).
gpr_timespec GrpcDeadline(Clock::time_point deadline);

// etcd's answer as an absl::Status with `what` in front of its message.
absl::Status FromGrpc(absl::string_view what, const grpc::Status& status);

}  // namespace ttt::coord::internal
