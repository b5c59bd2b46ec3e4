#include "coord/etcd_client.h"

#include <set>
#include <thread>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "coord/internal/endpoints.h"
#include "coord/internal/keep_alive.h"

namespace ttt::coord {
namespace {

using internal::Clock;
using internal::Endpoint;
using internal::Endpoints;
using internal::Resend;

// Keys per page of a List: bounds each response, whatever the prefix holds.
constexpr int64_t kListPageSize = 1000;
// How often Claim asks again while the key is held.
constexpr auto kClaimPoll = std::chrono::milliseconds(250);

std::string Quote(const std::string& key) {
  return absl::StrCat("\"", absl::CHexEscape(key), "\"");
}

absl::Status CheckKey(absl::string_view what, const std::string& key) {
  if (!key.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(what, ": the key is empty; name a key"));
}

KeyValue FromProto(const mvccpb::KeyValue& kv) {
  KeyValue result;
  result.key = kv.key();
  result.value = kv.value();
  result.create_revision = kv.create_revision();
  result.mod_revision = kv.mod_revision();
  result.version = kv.version();
  result.lease = kv.lease();
  return result;
}

// The end of the range of keys that start with `prefix` (etcd's clientv3.GetPrefixRangeEnd).
std::string PrefixEnd(const std::string& prefix) {
  std::string end = prefix;
  for (size_t i = end.size(); i-- > 0;) {
    if (static_cast<unsigned char>(end[i]) < 0xff) {
      end[i] = static_cast<char>(static_cast<unsigned char>(end[i]) + 1);
      end.resize(i + 1);
      return end;
    }
  }
  return std::string(1, '\0');  // all 0xff: every key from prefix on
}

etcdserverpb::Compare CreateRevisionIs(const std::string& key, int64_t revision) {
  etcdserverpb::Compare compare;
  compare.set_result(etcdserverpb::Compare::EQUAL);
  compare.set_target(etcdserverpb::Compare::CREATE);
  compare.set_key(key);
  compare.set_create_revision(revision);  // 0: the key does not exist
  return compare;
}

void AddRange(const std::string& key,
              google::protobuf::RepeatedPtrField<etcdserverpb::RequestOp>* ops) {
  ops->Add()->mutable_request_range()->set_key(key);
}

absl::StatusOr<etcdserverpb::TxnResponse> RunTxn(const Endpoints& endpoints, absl::string_view what,
                                                 const etcdserverpb::TxnRequest& request) {
  etcdserverpb::TxnResponse response;
  absl::Status status = endpoints.Call(what, Resend::kOnlyIfNotApplied,
                                       [&](const Endpoint& endpoint, grpc::ClientContext& context) {
                                         return endpoint.kv->Txn(&context, request, &response);
                                       });
  if (!status.ok()) return status;
  return response;
}

// The first key of the failure branch's range (the key a comparison looked at), if any.
const mvccpb::KeyValue* RangedKey(const etcdserverpb::TxnResponse& response) {
  if (response.responses_size() == 0 || !response.responses(0).has_response_range()) {
    return nullptr;
  }
  const etcdserverpb::RangeResponse& range = response.responses(0).response_range();
  return range.kvs_size() > 0 ? &range.kvs(0) : nullptr;
}

// FAILED_PRECONDITION for an owner comparison that failed: what the owner key holds instead.
absl::Status Fenced(absl::string_view what, const std::string& owner_key, int64_t revision,
                    const etcdserverpb::TxnResponse& response) {
  const mvccpb::KeyValue* owner = RangedKey(response);
  const std::string found =
      owner == nullptr ? "is absent (its lease expired, or it was deleted)"
                       : absl::StrCat("was created again at revision ", owner->create_revision(),
                                      " (lease ", owner->lease(), ")");
  return absl::FailedPreconditionError(absl::StrCat(what, ": fenced: owner key ", Quote(owner_key),
                                                    " ", found, "; this owner's revision ",
                                                    revision, " no longer holds it"));
}

// Runs `op` on `key` only if `owner_key` was created at `owner_create_revision`; returns the
// revision after it. `operation` names it in errors.
absl::StatusOr<int64_t> IfOwner(const Endpoints& endpoints, absl::string_view operation,
                                const std::string& owner_key, int64_t owner_create_revision,
                                const std::string& key, etcdserverpb::RequestOp op) {
  const std::string what = absl::StrCat(operation, " under owner ", Quote(owner_key));
  if (absl::Status valid = CheckKey(what, key); !valid.ok()) return valid;
  if (absl::Status valid = CheckKey(what, owner_key); !valid.ok()) return valid;
  if (owner_create_revision <= 0) {
    // 0 would compare equal to an absent owner key: anyone would pass the fence.
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": owner create revision ", owner_create_revision,
                     " must be > 0 (the revision CreateIfAbsent returned)"));
  }
  etcdserverpb::TxnRequest request;
  *request.add_compare() = CreateRevisionIs(owner_key, owner_create_revision);
  *request.add_success() = std::move(op);
  AddRange(owner_key, request.mutable_failure());
  absl::StatusOr<etcdserverpb::TxnResponse> response = RunTxn(endpoints, what, request);
  if (!response.ok()) return response.status();
  if (!response->succeeded()) return Fenced(what, owner_key, owner_create_revision, *response);
  return response->header().revision();
}

absl::Status CheckTransaction(absl::string_view what, const std::vector<Condition>& conditions,
                              const std::vector<Operation>& operations) {
  if (operations.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": no operation; give at least one"));
  }
  for (const Condition& condition : conditions) {
    if (absl::Status valid = CheckKey(what, condition.key); !valid.ok()) return valid;
    if (condition.revision < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": condition on ", Quote(condition.key), " has revision ",
                       condition.revision, "; revisions are >= 0 (0: the key is absent)"));
    }
  }
  std::set<std::string> touched;
  for (const Operation& operation : operations) {
    if (absl::Status valid = CheckKey(what, operation.key); !valid.ok()) return valid;
    if (!touched.insert(operation.key).second) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": two operations on ", Quote(operation.key), "; etcd allows one per key"));
    }
  }
  return absl::OkStatus();
}

etcdserverpb::Compare ToCompare(const Condition& condition) {
  if (condition.target == Condition::Revision::kCreate) {
    return CreateRevisionIs(condition.key, condition.revision);
  }
  etcdserverpb::Compare compare;
  compare.set_result(etcdserverpb::Compare::EQUAL);
  compare.set_target(etcdserverpb::Compare::MOD);
  compare.set_key(condition.key);
  compare.set_mod_revision(condition.revision);
  return compare;
}

etcdserverpb::RequestOp ToRequestOp(const Operation& operation) {
  etcdserverpb::RequestOp op;
  if (operation.kind == Operation::Kind::kDelete) {
    op.mutable_request_delete_range()->set_key(operation.key);
    return op;
  }
  etcdserverpb::PutRequest* put = op.mutable_request_put();
  put->set_key(operation.key);
  put->set_value(operation.value);
  put->set_lease(operation.lease);
  return op;
}

// FAILED_PRECONDITION for a transaction whose comparisons failed: each failed one, with what its
// key holds (the failure branch read every condition's key, in order).
absl::Status ConditionsFailed(absl::string_view what, const std::vector<Condition>& conditions,
                              const etcdserverpb::TxnResponse& response) {
  std::vector<std::string> failed;
  for (size_t i = 0; i < conditions.size(); ++i) {
    const Condition& condition = conditions[i];
    const etcdserverpb::RangeResponse* range = i < static_cast<size_t>(response.responses_size()) &&
                                                       response.responses(i).has_response_range()
                                                   ? &response.responses(i).response_range()
                                                   : nullptr;
    const mvccpb::KeyValue* kv =
        range != nullptr && range->kvs_size() > 0 ? &range->kvs(0) : nullptr;
    const bool create = condition.target == Condition::Revision::kCreate;
    const int64_t actual =
        kv == nullptr ? 0 : (create ? kv->create_revision() : kv->mod_revision());
    if (actual == condition.revision) continue;  // this one held
    const std::string wanted =
        condition.revision == 0
            ? "absent"
            : absl::StrCat(create ? "created" : "modified", " at revision ", condition.revision);
    const std::string found = kv == nullptr ? "is absent"
                                            : absl::StrCat("was ", create ? "created" : "modified",
                                                           " at revision ", actual);
    failed.push_back(absl::StrCat(Quote(condition.key), " ", found, ", not ", wanted));
  }
  if (failed.empty()) failed.push_back("its key changed again after the transaction");
  return absl::FailedPreconditionError(
      absl::StrCat(what, ": condition failed: ", absl::StrJoin(failed, "; ")));
}

struct Grant {
  int64_t id = 0;
  Clock::duration ttl;
  Clock::time_point sent_at;  // the lease lives at least until sent_at + ttl
};

absl::StatusOr<Grant> GrantLease(const Endpoints& endpoints, absl::Duration ttl) {
  const int64_t seconds = absl::ToInt64Seconds(ttl);
  if (seconds < 1 || absl::Seconds(seconds) != ttl) {
    return absl::InvalidArgumentError(
        absl::StrCat("etcd LeaseGrant: ttl ", absl::FormatDuration(ttl),
                     " must be a whole number of seconds >= 1 (etcd's leases count seconds)"));
  }
  Grant grant;
  etcdserverpb::LeaseGrantResponse response;
  // Resent freely: a grant whose answer was lost leaves a lease nobody knows, bound to no key,
  // which etcd expires after its TTL.
  absl::Status status =
      endpoints.Call("etcd LeaseGrant", Resend::kAlways,
                     [&](const Endpoint& endpoint, grpc::ClientContext& context) {
                       etcdserverpb::LeaseGrantRequest request;
                       request.set_ttl(seconds);
                       grant.sent_at = Clock::now();
                       return endpoint.lease->LeaseGrant(&context, request, &response);
                     });
  if (!status.ok()) return status;
  if (!response.error().empty()) {
    return absl::UnavailableError(absl::StrCat("etcd LeaseGrant: ", response.error()));
  }
  grant.id = response.id();
  grant.ttl = std::chrono::seconds(response.ttl());
  return grant;
}

}  // namespace

absl::StatusOr<std::unique_ptr<EtcdClient>> EtcdClient::Create(EtcdClientOptions options) {
  if (options.call_timeout <= absl::ZeroDuration() ||
      options.attempt_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("etcd call timeout (", absl::FormatDuration(options.call_timeout),
                     ") and attempt timeout (", absl::FormatDuration(options.attempt_timeout),
                     ") must be positive"));
  }
  const internal::CallLimits limits{absl::ToChronoNanoseconds(options.call_timeout),
                                    absl::ToChronoNanoseconds(options.attempt_timeout)};
  if (options.tls_refresh_interval < absl::Seconds(1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("etcd TLS refresh interval must be at least 1s, got ",
                     absl::FormatDuration(options.tls_refresh_interval)));
  }
  const internal::TlsFiles tls{options.tls_ca_file, options.tls_cert_file, options.tls_key_file,
                               options.tls_refresh_interval};
  absl::StatusOr<std::shared_ptr<Endpoints>> endpoints =
      Endpoints::Create(options.endpoints, limits, tls);
  if (!endpoints.ok()) return endpoints.status();
  return std::unique_ptr<EtcdClient>(new EtcdClient(*std::move(endpoints)));
}

EtcdClient::EtcdClient(std::shared_ptr<Endpoints> endpoints) : endpoints_(std::move(endpoints)) {}

EtcdClient::~EtcdClient() = default;

absl::StatusOr<int64_t> EtcdClient::Grant(absl::Duration ttl) {
  absl::StatusOr<struct Grant> grant = GrantLease(*endpoints_, ttl);
  if (!grant.ok()) return grant.status();
  return grant->id;
}

absl::StatusOr<std::unique_ptr<KeptLease>> EtcdClient::GrantKept(absl::Duration ttl) {
  absl::StatusOr<struct Grant> grant = GrantLease(*endpoints_, ttl);
  if (!grant.ok()) return grant.status();
  auto loop =
      std::make_unique<internal::KeepAliveLoop>(endpoints_, grant->id, grant->ttl, grant->sent_at);
  return std::unique_ptr<KeptLease>(
      new KeptLease(grant->id, absl::FromChrono(grant->ttl), endpoints_, std::move(loop)));
}

absl::Status EtcdClient::Revoke(int64_t lease) {
  return endpoints_->Call(absl::StrCat("etcd LeaseRevoke of lease ", lease), Resend::kAlways,
                          [&](const Endpoint& endpoint, grpc::ClientContext& context) {
                            etcdserverpb::LeaseRevokeRequest request;
                            request.set_id(lease);
                            etcdserverpb::LeaseRevokeResponse response;
                            return endpoint.lease->LeaseRevoke(&context, request, &response);
                          });
}

absl::StatusOr<KeyValue> EtcdClient::Get(const std::string& key) {
  const std::string what = absl::StrCat("etcd Get of ", Quote(key));
  if (absl::Status valid = CheckKey(what, key); !valid.ok()) return valid;
  etcdserverpb::RangeResponse response;
  absl::Status status = endpoints_->Call(
      what, Resend::kAlways, [&](const Endpoint& endpoint, grpc::ClientContext& context) {
        etcdserverpb::RangeRequest request;
        request.set_key(key);
        return endpoint.kv->Range(&context, request, &response);
      });
  if (!status.ok()) return status;
  if (response.kvs_size() == 0) return absl::NotFoundError(absl::StrCat(what, ": no such key"));
  return FromProto(response.kvs(0));
}

absl::StatusOr<std::vector<KeyValue>> EtcdClient::List(const std::string& prefix) {
  const std::string what = absl::StrCat("etcd List of prefix ", Quote(prefix));
  if (prefix.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": the prefix is empty; name one"));
  }
  std::vector<KeyValue> result;
  const std::string end = PrefixEnd(prefix);
  std::string from = prefix;
  int64_t revision = 0;  // the first page's: every page reads the same snapshot
  for (;;) {
    etcdserverpb::RangeResponse response;
    absl::Status status = endpoints_->Call(
        what, Resend::kAlways, [&](const Endpoint& endpoint, grpc::ClientContext& context) {
          etcdserverpb::RangeRequest request;
          request.set_key(from);
          request.set_range_end(end);
          request.set_limit(kListPageSize);
          request.set_revision(revision);
          return endpoint.kv->Range(&context, request, &response);
        });
    if (!status.ok()) return status;
    if (revision == 0) revision = response.header().revision();
    for (const mvccpb::KeyValue& kv : response.kvs()) result.push_back(FromProto(kv));
    if (!response.more() || response.kvs_size() == 0) return result;
    from = response.kvs(response.kvs_size() - 1).key() + '\0';  // the next key after the page
  }
}

absl::StatusOr<int64_t> EtcdClient::CreateIfAbsent(const std::string& key, const std::string& value,
                                                   int64_t lease) {
  const std::string what = absl::StrCat("etcd CreateIfAbsent of ", Quote(key));
  if (absl::Status valid = CheckKey(what, key); !valid.ok()) return valid;
  etcdserverpb::TxnRequest request;
  *request.add_compare() = CreateRevisionIs(key, 0);
  etcdserverpb::PutRequest* put = request.add_success()->mutable_request_put();
  put->set_key(key);
  put->set_value(value);
  put->set_lease(lease);
  AddRange(key, request.mutable_failure());
  absl::StatusOr<etcdserverpb::TxnResponse> response = RunTxn(*endpoints_, what, request);
  if (!response.ok()) return response.status();
  if (response->succeeded()) return response->header().revision();
  const mvccpb::KeyValue* existing = RangedKey(*response);
  return absl::FailedPreconditionError(absl::StrCat(
      what, ": the key already exists",
      existing == nullptr ? std::string()
                          : absl::StrCat(" (created at revision ", existing->create_revision(),
                                         ", lease ", existing->lease(), ")")));
}

absl::StatusOr<int64_t> EtcdClient::Claim(const std::string& key, const std::string& value,
                                          int64_t lease, absl::Duration wait) {
  const Clock::time_point give_up = Clock::now() + absl::ToChronoNanoseconds(wait);
  for (;;) {
    absl::StatusOr<int64_t> created = CreateIfAbsent(key, value, lease);
    if (absl::IsUnavailable(created.status()) && lease != 0) {
      // Perhaps applied ("outcome unknown"): the key bound to this very lease is this claim's.
      absl::StatusOr<KeyValue> held = Get(key);
      if (held.ok() && held->lease == lease && held->value == value) return held->create_revision;
    }
    if (!absl::IsFailedPrecondition(created.status())) return created;
    if (Clock::now() >= give_up) break;
    std::this_thread::sleep_for(kClaimPoll);
  }
  const std::string what = absl::StrCat("etcd Claim of ", Quote(key));
  absl::StatusOr<KeyValue> holder = Get(key);
  if (!holder.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, ": held by another live holder for over ", absl::FormatDuration(wait)));
  }
  return absl::FailedPreconditionError(
      absl::StrCat(what, ": held by another live holder for over ", absl::FormatDuration(wait),
                   " (value \"", absl::CHexEscape(holder->value), "\", lease ", holder->lease,
                   ", since revision ", holder->create_revision, ")"));
}

absl::StatusOr<int64_t> EtcdClient::PutIfOwner(const std::string& owner_key,
                                               int64_t owner_create_revision,
                                               const std::string& key, const std::string& value) {
  etcdserverpb::RequestOp put;
  put.mutable_request_put()->set_key(key);
  put.mutable_request_put()->set_value(value);
  return IfOwner(*endpoints_, absl::StrCat("etcd PutIfOwner of ", Quote(key)), owner_key,
                 owner_create_revision, key, std::move(put));
}

absl::Status EtcdClient::DeleteIfOwner(const std::string& owner_key, int64_t owner_create_revision,
                                       const std::string& key) {
  etcdserverpb::RequestOp remove;
  remove.mutable_request_delete_range()->set_key(key);
  return IfOwner(*endpoints_, absl::StrCat("etcd DeleteIfOwner of ", Quote(key)), owner_key,
                 owner_create_revision, key, std::move(remove))
      .status();
}

absl::StatusOr<int64_t> EtcdClient::Transact(const std::vector<Condition>& conditions,
                                             const std::vector<Operation>& operations) {
  const std::string what = "etcd Transact";
  if (absl::Status valid = CheckTransaction(what, conditions, operations); !valid.ok()) {
    return valid;
  }
  etcdserverpb::TxnRequest request;
  for (const Condition& condition : conditions) {
    *request.add_compare() = ToCompare(condition);
    AddRange(condition.key, request.mutable_failure());  // to say which failed, and why
  }
  for (const Operation& operation : operations) *request.add_success() = ToRequestOp(operation);
  absl::StatusOr<etcdserverpb::TxnResponse> response = RunTxn(*endpoints_, what, request);
  if (!response.ok()) return response.status();
  if (!response->succeeded()) return ConditionsFailed(what, conditions, *response);
  return response->header().revision();
}

absl::StatusOr<MemberStatus> EtcdClient::Status(const std::string& endpoint) {
  etcdserverpb::StatusResponse response;
  absl::Status status = endpoints_->CallAt(
      endpoint, absl::StrCat("etcd Status of ", endpoint),
      [&](const Endpoint& at, grpc::ClientContext& context) {
        return at.maintenance->Status(&context, etcdserverpb::StatusRequest(), &response);
      });
  if (!status.ok()) return status;
  MemberStatus result;
  result.member_id = response.header().member_id();
  result.leader_id = response.leader();
  result.raft_term = response.raftterm();
  result.version = response.version();
  return result;
}

}  // namespace ttt::coord
