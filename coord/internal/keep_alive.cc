#include "coord/internal/keep_alive.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "util/fault_point.h"

namespace ttt::coord::internal {
namespace {

// After a keep-alive round that no endpoint answered: try again soon (the lease's time runs).
constexpr auto kRetryPause = std::chrono::milliseconds(100);

std::string Format(Clock::duration duration) {
  return absl::FormatDuration(absl::Trunc(absl::FromChrono(duration), absl::Milliseconds(1)));
}

}  // namespace

KeepAliveLoop::KeepAliveLoop(std::shared_ptr<const Endpoints> endpoints, int64_t lease_id,
                             Clock::duration ttl, Clock::time_point granted_sent_at)
    : endpoints_(std::move(endpoints)),
      lease_id_(lease_id),
      alive_since_(granted_sent_at),
      ttl_(ttl) {
  thread_ = std::thread([this] { Run(); });
}

KeepAliveLoop::~KeepAliveLoop() { Stop(); }

void KeepAliveLoop::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void KeepAliveLoop::MarkGone(absl::Status why) {
  std::lock_guard<std::mutex> lock(mu_);
  if (gone_.ok()) gone_ = std::move(why);
}

absl::Status KeepAliveLoop::CheckLive(Clock::duration margin) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (!gone_.ok()) return gone_;
  const Clock::duration since = Clock::now() - alive_since_;
  if (since < ttl_ - margin) return absl::OkStatus();
  return absl::UnavailableError(absl::StrCat(
      "etcd lease ", lease_id_, " may have expired: the last keep-alive etcd answered was sent ",
      Format(since), " ago (ttl ", Format(ttl_), ", safety margin ", Format(margin), ")"));
}

absl::Status KeepAliveLoop::Gone() const {
  std::lock_guard<std::mutex> lock(mu_);
  return gone_;
}

void KeepAliveLoop::Run() {
  for (;;) {
    const bool answered = KeepAliveOnce();
    std::unique_lock<std::mutex> lock(mu_);
    if (!gone_.ok()) return;  // nothing left to keep alive
    // etcd's own client asks every third of the TTL: two more tries before the lease runs out.
    const Clock::duration pause = answered ? ttl_ / 3 : Clock::duration(kRetryPause);
    if (wake_.wait_for(lock, pause, [this] { return stopping_; })) return;
  }
}

bool KeepAliveLoop::KeepAliveOnce() {
  Clock::duration ttl;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ttl = ttl_;
  }
  // One round, failover included, within a third of the TTL, so that a stalled endpoint costs at
  // most one of the three keep-alives a TTL allows.
  const CallLimits limits{ttl / 3, std::min(endpoints_->default_limits().attempt, ttl / 6)};
  Clock::time_point sent_at;
  etcdserverpb::LeaseKeepAliveResponse response;
  TTT_FAULT_POINT("keepalive_before_send");
  const absl::Status status = endpoints_->Call(
      "etcd LeaseKeepAlive", Resend::kAlways, limits,
      [&](const Endpoint& endpoint, grpc::ClientContext& context) {
        auto stream = endpoint.lease->LeaseKeepAlive(&context);
        etcdserverpb::LeaseKeepAliveRequest request;
        request.set_id(lease_id_);
        sent_at = Clock::now();
        if (!stream->Write(request)) return stream->Finish();
        const bool read = stream->Read(&response);
        stream->WritesDone();
        grpc::Status finished = stream->Finish();
        if (finished.ok() && !read) {
          return grpc::Status(grpc::StatusCode::UNAVAILABLE, "keep-alive stream closed unanswered");
        }
        return finished;
      });
  if (!status.ok()) return false;
  TTT_FAULT_POINT("keepalive_after_answer");  // answered, alive_since_ not yet moved
  std::lock_guard<std::mutex> lock(mu_);
  if (response.ttl() <= 0) {
    // etcd answers TTL 0 for a lease it does not know: expired (or revoked elsewhere).
    if (gone_.ok()) {
      gone_ = absl::UnavailableError(absl::StrCat(
          "etcd lease ", lease_id_,
          " is gone: etcd expired or revoked it (keep-alive answered ttl ", response.ttl(), ")"));
    }
    return true;
  }
  alive_since_ = std::max(alive_since_, sent_at);
  ttl_ = std::chrono::seconds(response.ttl());
  return true;
}

}  // namespace ttt::coord::internal
