// KeptLease: the face of a lease kept alive by internal::KeepAliveLoop.
#include <utility>

#include "absl/strings/str_cat.h"
#include "coord/etcd_client.h"
#include "coord/internal/endpoints.h"
#include "coord/internal/keep_alive.h"

namespace ttt::coord {

KeptLease::KeptLease(int64_t id, absl::Duration ttl, std::shared_ptr<internal::Endpoints> endpoints,
                     std::unique_ptr<internal::KeepAliveLoop> loop)
    : id_(id), ttl_(ttl), endpoints_(std::move(endpoints)), loop_(std::move(loop)) {}

KeptLease::~KeptLease() = default;

bool KeptLease::LeaseLive(absl::Duration margin) const { return CheckLive(margin).ok(); }

absl::Status KeptLease::CheckLive(absl::Duration margin) const {
  return loop_->CheckLive(absl::ToChronoNanoseconds(margin));
}

bool KeptLease::Lost() const { return !loop_->Gone().ok(); }

absl::Status KeptLease::Revoke() {
  loop_->Stop();
  loop_->MarkGone(
      absl::UnavailableError(absl::StrCat("etcd lease ", id_, " was revoked by this process")));
  const std::string what = absl::StrCat("etcd LeaseRevoke of lease ", id_);
  absl::Status status =
      endpoints_->Call(what, internal::Resend::kAlways,
                       [&](const internal::Endpoint& endpoint, grpc::ClientContext& context) {
                         etcdserverpb::LeaseRevokeRequest request;
                         request.set_id(id_);
                         etcdserverpb::LeaseRevokeResponse response;
                         return endpoint.lease->LeaseRevoke(&context, request, &response);
                       });
  // Already gone (expired, or an earlier attempt of this call revoked it): what was asked holds.
  if (absl::IsNotFound(status)) return absl::OkStatus();
  return status;
}

}  // namespace ttt::coord
