#include "session/internal/cluster_store.h"

#include <algorithm>

#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "session/internal/names.h"
#include "util/error_reason.h"
#include "util/fault_point.h"
#include "util/status_macros.h"

namespace ttt::session::internal {

using coord::Condition;
using coord::Operation;

namespace {
// A create or delete whose transaction found the tenant's count moved (another create or delete
// of the tenant in between) reads it again; this many times at most.
constexpr int kCountAttempts = 16;
}  // namespace

ClusterStore::ClusterStore(std::shared_ptr<coord::EtcdClient> etcd,
                           std::shared_ptr<const coord::KeptLease> lease, std::string prefix,
                           std::string replica_id, absl::Duration margin,
                           std::shared_ptr<const CheckpointStore> files, AdmitSession admit)
    : etcd_(std::move(etcd)),
      lease_(std::move(lease)),
      prefix_(std::move(prefix)),
      replica_id_(std::move(replica_id)),
      margin_(margin),
      files_(std::move(files)),
      admit_(std::move(admit)) {}

std::string ClusterStore::SessionKey(const std::string& tenant, const std::string& id,
                                     const char* which) const {
  return absl::StrCat(prefix_, "sessions/", tenant, "/", id, "/", which);
}

std::string ClusterStore::WantKey(const std::string& tenant, const std::string& id) const {
  return absl::StrCat(prefix_, "wants/", tenant, "/", id);
}

std::string ClusterStore::CountKey(const std::string& tenant) const {
  return absl::StrCat(prefix_, "tenants/", tenant, "/sessions");
}

absl::StatusOr<ClusterStore::Count> ClusterStore::ReadCount(const std::string& tenant) {
  const std::string key = CountKey(tenant);
  auto kv = etcd_->Get(key);
  if (kv.ok()) {
    int64_t sessions = 0;
    if (!absl::SimpleAtoi(kv->value, &sessions) || sessions < 0) {
      return absl::DataLossError(absl::StrCat("etcd key ", key, " does not hold a session count"));
    }
    return Count{sessions, Condition::ModifiedAt(key, kv->mod_revision)};
  }
  if (!absl::IsNotFound(kv.status())) return kv.status();
  ASSIGN_OR_RETURN(std::vector<Head> heads, ListHeads(tenant));
  return Count{static_cast<int64_t>(heads.size()), Condition::Absent(key)};
}

absl::StatusOr<bool> ClusterStore::Exists(const std::string& key) {
  auto kv = etcd_->Get(key);
  if (absl::IsNotFound(kv.status())) return false;
  if (!kv.ok()) return kv.status();
  return true;
}

std::string ClusterStore::EncodeHead(const Head& head) const {
  nlohmann::json j = {{"blob", head.blob},
                      {"fence", head.fence},
                      {"replica", replica_id_},
                      {"meta", MetaEntries(head.meta)}};
  return j.dump();
}

absl::StatusOr<Head> ClusterStore::DecodeHead(const std::string& value,
                                              const std::string& key) const {
  const nlohmann::json j = nlohmann::json::parse(value, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("blob") || !j["blob"].is_string() || !j.contains("meta") ||
      !j["meta"].is_object()) {
    return absl::DataLossError(absl::StrCat("etcd key ", key, " is not a session head"));
  }
  Head head;
  head.blob = j["blob"].get<std::string>();
  head.fence = j.value("fence", int64_t{0});
  std::map<std::string, std::string> entries;
  for (const auto& [k, v] : j["meta"].items()) {
    if (v.is_string()) entries[k] = v.get<std::string>();
  }
  ASSIGN_OR_RETURN(head.meta, ParseMeta(entries, absl::StrCat("etcd key ", key)));
  if (!head.blob.empty() && !ValidateName(head.blob, "blob", 128).ok()) {
    return absl::DataLossError(absl::StrCat("etcd key ", key, " names a malformed blob"));
  }
  return head;
}

absl::Status ClusterStore::CheckOwned(int64_t fence) {
  // Revision 0 would compare as "the owner key is absent", which anyone can satisfy.
  if (fence > 0) return absl::OkStatus();
  return absl::FailedPreconditionError("fenced: this process does not own the session any more");
}

absl::Status ClusterStore::CheckServing() const {
  absl::Status live = lease_->CheckLive(margin_);
  if (live.ok()) return live;
  return absl::UnavailableError(
      absl::StrCat("this replica (", replica_id_,
                   ") lost contact with etcd and stopped serving its sessions "
                   "(",
                   live.message(),
                   "); retry: another replica takes them over once etcd expires its "
                   "lease"));
}

absl::StatusOr<Owned> ClusterStore::Create(const std::string& tenant, const std::string& id,
                                           const std::string& state_bytes,
                                           const CheckpointMeta& meta) {
  RETURN_IF_ERROR(CheckServing());
  Head head;
  head.meta = meta;
  if (!state_bytes.empty()) {
    // Named by the process lease (unique on the cluster) before the fence exists.
    head.blob = absl::StrCat("c", lease_->id(), "-", absl::ToUnixMicros(absl::Now()));
    RETURN_IF_ERROR(files_->WriteBlob(tenant, id, head.blob, state_bytes));
  }
  absl::StatusOr<int64_t> created = CreateKeys(tenant, id, head);
  if (!created.ok()) {
    if (!head.blob.empty()) files_->DeleteBlob(tenant, id, head.blob);
    return created.status();
  }
  head.fence = *created;
  return Owned{*created, std::move(head)};
}

absl::StatusOr<int64_t> ClusterStore::CreateKeys(const std::string& tenant, const std::string& id,
                                                 const Head& head) {
  const std::string owner = SessionKey(tenant, id, "owner");
  const std::string head_key = SessionKey(tenant, id, "head");
  for (int attempt = 1;; ++attempt) {
    ASSIGN_OR_RETURN(Count count, ReadCount(tenant));
    if (admit_) RETURN_IF_ERROR(admit_(tenant, count.sessions));
    auto created =
        etcd_->Transact({Condition::Absent(owner), Condition::Absent(head_key), count.unchanged},
                        {Operation::Put(owner, replica_id_, lease_->id()),
                         Operation::Put(head_key, EncodeHead(head)),
                         Operation::Put(CountKey(tenant), absl::StrCat(count.sessions + 1))});
    if (created.ok() || !absl::IsFailedPrecondition(created.status())) return created;
    ASSIGN_OR_RETURN(const bool owned, Exists(owner));
    ASSIGN_OR_RETURN(const bool headed, Exists(head_key));
    if (owned || headed) {
      return absl::AlreadyExistsError(
          absl::StrCat("session ", Quote(id), " already exists for tenant ", Quote(tenant),
                       " on this cluster; choose another id, or use the existing session"));
    }
    if (attempt == kCountAttempts) return CountKeptMoving(tenant);
  }
}

absl::Status ClusterStore::CountKeptMoving(const std::string& tenant) {
  return absl::UnavailableError(absl::StrCat(
      "tenant ", Quote(tenant), "'s sessions were created or deleted on other replicas during ",
      kCountAttempts, " tries of this change; retry"));
}

absl::StatusOr<Owned> ClusterStore::TakeOver(const std::string& tenant, const std::string& id) {
  RETURN_IF_ERROR(CheckServing());
  const std::string owner = SessionKey(tenant, id, "owner");
  const std::string head_key = SessionKey(tenant, id, "head");
  auto current = etcd_->Get(head_key);
  if (absl::IsNotFound(current.status())) {
    return absl::NotFoundError(absl::StrCat("session ", Quote(id), " has no committed state"));
  }
  if (!current.ok()) return current.status();
  ASSIGN_OR_RETURN(Head head, DecodeHead(current->value, head_key));
  auto taken = etcd_->Transact(
      {Condition::Absent(owner), Condition::ModifiedAt(head_key, current->mod_revision)},
      {Operation::Put(owner, replica_id_, lease_->id())});
  if (taken.ok()) {
    ClearWant(tenant, id);
    return Owned{*taken, std::move(head)};
  }
  if (!absl::IsFailedPrecondition(taken.status())) return taken.status();
  auto holder = etcd_->Get(owner);
  if (!holder.ok()) {
    // Not owned, yet the head moved or went (a commit or a delete between the read and the
    // transaction): the caller retries and reads it again.
    return absl::UnavailableError(
        absl::StrCat("session ", Quote(id), " changed while this replica took it over; retry"));
  }
  if (holder->lease == lease_->id()) {
    return absl::FailedPreconditionError(
        absl::StrCat("session ", Quote(id), " is already owned by this process"));
  }
  // Ask the owner to hand it over once idle (the proxy routes its calls here now).
  (void)etcd_->Transact({}, {Operation::Put(WantKey(tenant, id), replica_id_, lease_->id())});
  return util::WithReason(
      absl::UnavailableError(absl::StrCat(
          "session ", Quote(id), " is owned by replica ", Quote(holder->value),
          "; asked it to hand the session over, retry (or send the call to that replica)")),
      util::kReasonSessionOwnedElsewhere);
}

absl::StatusOr<Head> ClusterStore::Commit(const std::string& tenant, const std::string& id,
                                          int64_t fence, int64_t sequence,
                                          const std::string& state_bytes,
                                          const CheckpointMeta& meta,
                                          const std::string& previous_blob) {
  RETURN_IF_ERROR(CheckOwned(fence));
  Head head;
  head.blob = absl::StrCat(fence, "-", sequence);
  head.meta = meta;
  head.fence = fence;
  TTT_FAULT_POINT("commit_before_blob");
  if (absl::Status written = files_->WriteBlob(tenant, id, head.blob, state_bytes); !written.ok()) {
    // Never FAILED_PRECONDITION (errno's ENOTDIR maps to it): that code means "fenced" here.
    return absl::UnavailableError(absl::StrCat("cannot write the state blob: ", written.message()));
  }
  const std::string owner = SessionKey(tenant, id, "owner");
  const std::string head_key = SessionKey(tenant, id, "head");
  TTT_FAULT_POINT("commit_before_txn");
  auto put = etcd_->PutIfOwner(owner, fence, head_key, EncodeHead(head));
  if (!put.ok() && absl::IsUnavailable(put.status())) {
    // Outcome unknown: the head says whether the transaction happened.
    auto now = etcd_->Get(head_key);
    auto decoded = now.ok() ? DecodeHead(now->value, head_key) : now.status();
    if (decoded.ok() && decoded->blob == head.blob) put = now->mod_revision;
  }
  if (!put.ok()) {
    files_->DeleteBlob(tenant, id, head.blob);  // referenced by no head
    return put.status();
  }
  if (!previous_blob.empty() && previous_blob != head.blob) {
    files_->DeleteBlob(tenant, id, previous_blob);
  }
  TTT_FAULT_POINT("commit_after_txn");  // committed, not yet acknowledged
  return head;
}

absl::StatusOr<std::string> ClusterStore::ReadBlob(const std::string& tenant, const std::string& id,
                                                   const std::string& blob) const {
  return files_->ReadBlob(tenant, id, blob);
}

absl::Status ClusterStore::Delete(const std::string& tenant, const std::string& id, int64_t fence,
                                  const std::string& head_blob) {
  RETURN_IF_ERROR(CheckOwned(fence));
  const std::string owner = SessionKey(tenant, id, "owner");
  for (int attempt = 1;; ++attempt) {
    ASSIGN_OR_RETURN(Count count, ReadCount(tenant));
    auto deleted = etcd_->Transact(
        {Condition::CreatedAt(owner, fence), count.unchanged},
        {Operation::Delete(SessionKey(tenant, id, "head")), Operation::Delete(owner),
         Operation::Put(CountKey(tenant), absl::StrCat(std::max<int64_t>(0, count.sessions - 1)))});
    if (deleted.ok()) break;
    if (!absl::IsFailedPrecondition(deleted.status())) return deleted.status();
    auto holder = etcd_->Get(owner);
    if (absl::IsNotFound(holder.status()) || (holder.ok() && holder->create_revision != fence)) {
      return deleted.status();  // fenced: another process owns it, or nobody does
    }
    if (!holder.ok()) return holder.status();
    if (attempt == kCountAttempts) return CountKeptMoving(tenant);
  }
  if (!head_blob.empty()) files_->DeleteBlob(tenant, id, head_blob);
  return absl::OkStatus();
}

void ClusterStore::Release(const std::string& tenant, const std::string& id, int64_t fence) {
  if (!CheckOwned(fence).ok()) return;
  const std::string owner = SessionKey(tenant, id, "owner");
  (void)etcd_->DeleteIfOwner(owner, fence, owner);
}

bool ClusterStore::AwaitRelease(const std::string& tenant, const std::string& id,
                                absl::Duration wait, absl::Duration poll) {
  const std::string owner = SessionKey(tenant, id, "owner");
  const absl::Time until = absl::Now() + wait;
  while (true) {
    auto holder = etcd_->Get(owner);
    if (absl::IsNotFound(holder.status())) return true;
    // etcd unreachable: the lease check refuses the takeover anyway.
    if (!holder.ok() || absl::Now() + poll > until) return false;
    absl::SleepFor(poll);
  }
}

absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ClusterStore::Wanted() {
  const std::string wants = absl::StrCat(prefix_, "wants/");
  ASSIGN_OR_RETURN(std::vector<coord::KeyValue> keys, etcd_->List(wants));
  std::vector<std::pair<std::string, std::string>> out;
  for (const coord::KeyValue& kv : keys) {
    if (kv.lease == lease_->id()) continue;  // this process's own request
    std::vector<std::string> parts = absl::StrSplit(kv.key.substr(wants.size()), '/');
    if (parts.size() == 2) out.emplace_back(std::move(parts[0]), std::move(parts[1]));
  }
  return out;
}

void ClusterStore::ClearWant(const std::string& tenant, const std::string& id) {
  (void)etcd_->Transact({}, {Operation::Delete(WantKey(tenant, id))});
}

absl::StatusOr<std::vector<Head>> ClusterStore::ListHeads(const std::string& tenant) {
  ASSIGN_OR_RETURN(std::vector<coord::KeyValue> keys,
                   etcd_->List(absl::StrCat(prefix_, "sessions/", tenant, "/")));
  std::vector<Head> out;
  for (const coord::KeyValue& kv : keys) {
    if (!absl::EndsWith(kv.key, "/head")) continue;
    auto head = DecodeHead(kv.value, kv.key);
    if (head.ok()) out.push_back(std::move(*head));
  }
  return out;
}

}  // namespace ttt::session::internal

namespace ttt::session::internal {

absl::StatusOr<std::set<std::string>> ClusterStore::NamedBlobs() {
  const std::string sessions = absl::StrCat(prefix_, "sessions/");
  ASSIGN_OR_RETURN(std::vector<coord::KeyValue> keys, etcd_->List(sessions));
  std::set<std::string> named;
  for (const coord::KeyValue& kv : keys) {
    if (!absl::EndsWith(kv.key, "/head")) continue;
    // <tenant>/<id>/head
    const std::string path = kv.key.substr(sessions.size(), kv.key.size() - sessions.size() - 4);
    auto head = DecodeHead(kv.value, kv.key);
    if (!head.ok()) {
      // A head that cannot be read may still name a blob: sweep nothing rather than guess.
      return absl::DataLossError(absl::StrCat("garbage sweep stopped: ", head.status().message()));
    }
    if (!head->blob.empty()) named.insert(absl::StrCat(path, head->blob));
  }
  return named;
}

absl::StatusOr<int64_t> ClusterStore::SweepGarbage(absl::Duration grace) {
  RETURN_IF_ERROR(CheckServing());
  const std::string gc_key = absl::StrCat(prefix_, "gc");
  absl::StatusOr<int64_t> claimed = etcd_->CreateIfAbsent(gc_key, replica_id_, lease_->id());
  if (absl::IsFailedPrecondition(claimed.status())) {
    // Ours still when an earlier release did not reach etcd.
    auto holder = etcd_->Get(gc_key);
    if (holder.ok() && holder->lease == lease_->id()) claimed = holder->create_revision;
  }
  if (!claimed.ok()) return claimed.status();
  // The folders first, then the heads: a blob written after the listing of heads is young, and
  // one a head named when the folders were listed may only have been superseded since.
  const std::vector<CheckpointStore::BlobFolder> folders = files_->ListBlobFolders();
  const absl::Time written_before = absl::Now() - grace;
  absl::StatusOr<std::set<std::string>> named = NamedBlobs();
  int64_t deleted = 0;
  for (const CheckpointStore::BlobFolder& folder : folders) {
    if (!named.ok()) break;
    const std::string path = absl::StrCat(folder.tenant, "/", folder.id, "/");
    bool headless = true;
    for (const auto& [name, modified] : folder.blobs) {
      const bool referenced = named->count(path + name) > 0;
      headless = headless && !referenced;
      if (!referenced && modified < written_before) {
        files_->DeleteBlob(folder.tenant, folder.id, name);
        ++deleted;
      }
    }
    if (headless) files_->RemoveEmptyBlobFolder(folder.tenant, folder.id);
  }
  (void)etcd_->DeleteIfOwner(gc_key, *claimed, gc_key);
  if (!named.ok()) return named.status();
  return deleted;
}

}  // namespace ttt::session::internal
