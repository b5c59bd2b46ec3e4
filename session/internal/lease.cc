// Session ownership leases (see lease.h).
#include "session/internal/lease.h"

#include <chrono>
#include <fstream>
#include <sstream>
#include <system_error>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "session/internal/names.h"
#include "util/files.h"

namespace ttt::session::internal {

namespace fs = std::filesystem;

namespace {

int64_t SystemNowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

LeaseStore::LeaseStore(fs::path root, std::string replica_id, int64_t lease_ms,
                       std::function<int64_t()> now)
    : root_(std::move(root)), replica_id_(std::move(replica_id)), lease_ms_(lease_ms),
      now_(now ? std::move(now) : std::function<int64_t()>(SystemNowMs)) {}

int64_t LeaseStore::Now() const { return now_(); }

fs::path LeaseStore::Path(const std::string& tenant, const std::string& id) const {
  return root_ / tenant / "leases" / (id + ".lease");
}

fs::path LeaseStore::WantPath(const std::string& tenant, const std::string& id) const {
  return root_ / tenant / "leases" / (id + ".want");
}

absl::StatusOr<LeaseRecord> LeaseStore::Read(const std::string& tenant,
                                             const std::string& id) const {
  std::ifstream in(Path(tenant, id), std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("no lease on session ", Quote(id)));
  std::stringstream text;
  text << in.rdbuf();
  const auto j = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("owner") || !j["owner"].is_string() ||
      !j.contains("generation") || !j["generation"].is_number_integer() ||
      !j.contains("expires_unix_ms") || !j["expires_unix_ms"].is_number_integer()) {
    return absl::DataLossError(
        absl::StrCat("lease file ", Path(tenant, id).string(), " does not parse"));
  }
  LeaseRecord r;
  r.owner = j["owner"].get<std::string>();
  r.generation = j["generation"].get<int64_t>();
  r.expires_unix_ms = j["expires_unix_ms"].get<int64_t>();
  return r;
}

absl::Status LeaseStore::Write(const std::string& tenant, const std::string& id,
                               const LeaseRecord& record) const {
  const fs::path path = Path(tenant, id);
  std::error_code ec;
  fs::create_directories(path.parent_path(), ec);
  const nlohmann::json j = {{"owner", record.owner},
                            {"generation", record.generation},
                            {"expires_unix_ms", record.expires_unix_ms}};
  return util::WriteFileAtomically(path, j.dump());
}

absl::StatusOr<int64_t> LeaseStore::Acquire(const std::string& tenant,
                                            const std::string& id) const {
  const int64_t now = Now();
  auto current = Read(tenant, id);
  LeaseRecord next{replica_id_, 1, now + lease_ms_};
  if (current.ok()) {
    const bool mine = current->owner == replica_id_;
    if (!mine && current->expires_unix_ms > now) {
      return absl::UnavailableError(absl::StrCat(
          "session ", Quote(id), " is owned by replica ", Quote(current->owner), " for another ",
          current->expires_unix_ms - now,
          " ms (its lease); retry: the proxy routes the session to its owner, and another "
          "replica takes it over once that lease expires"));
    }
    // Our own live lease keeps its generation; a takeover (or our own expired lease, which
    // someone may have taken and given up meanwhile) starts a new one.
    next.generation =
        mine && current->expires_unix_ms > now ? current->generation : current->generation + 1;
  }
  if (absl::Status w = Write(tenant, id, next); !w.ok()) {
    return absl::UnavailableError(
        absl::StrCat("cannot write the lease of session ", Quote(id), ": ", w.message()));
  }
  // Read back: a replica taking over at the same instant may have renamed its record over ours.
  auto back = Read(tenant, id);
  if (!back.ok() || back->owner != replica_id_ || back->generation != next.generation) {
    return absl::UnavailableError(absl::StrCat(
        "session ", Quote(id), " was taken over by replica ",
        back.ok() ? Quote(back->owner) : std::string("(unknown)"), " at the same time; retry"));
  }
  return next.generation;
}

absl::Status LeaseStore::CheckFence(const std::string& tenant, const std::string& id,
                                    int64_t generation) const {
  auto current = Read(tenant, id);
  if (!current.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "stale generation ", generation, " for session ", Quote(id),
        ": this replica's lease is gone (", current.status().message(), "); the write is refused"));
  }
  if (current->owner != replica_id_ || current->generation != generation) {
    return absl::FailedPreconditionError(absl::StrCat(
        "stale generation ", generation, " for session ", Quote(id), ": replica ",
        Quote(current->owner), " holds it at generation ", current->generation,
        "; the write is refused"));
  }
  if (current->expires_unix_ms <= Now()) {
    return absl::FailedPreconditionError(
        absl::StrCat("stale generation ", generation, " for session ", Quote(id),
                     ": this replica's lease expired; the write is refused"));
  }
  return absl::OkStatus();
}

absl::Status LeaseStore::Renew(const std::string& tenant, const std::string& id,
                               int64_t generation) const {
  auto current = Read(tenant, id);
  if (!current.ok() || current->owner != replica_id_ || current->generation != generation) {
    return absl::FailedPreconditionError(absl::StrCat(
        "lease on session ", Quote(id), " at generation ", generation,
        " is no longer this replica's (", current.ok() ? "taken over" : "gone", ")"));
  }
  return Write(tenant, id, LeaseRecord{replica_id_, generation, Now() + lease_ms_});
}

void LeaseStore::Release(const std::string& tenant, const std::string& id,
                         int64_t generation) const {
  auto current = Read(tenant, id);
  if (!current.ok() || current->owner != replica_id_ || current->generation != generation) return;
  std::error_code ec;
  fs::remove(Path(tenant, id), ec);
}

bool LeaseStore::HeldElsewhere(const std::string& tenant, const std::string& id) const {
  auto current = Read(tenant, id);
  return current.ok() && current->owner != replica_id_ && current->expires_unix_ms > Now();
}

void LeaseStore::RequestHandover(const std::string& tenant, const std::string& id) const {
  std::error_code ec;
  fs::create_directories(WantPath(tenant, id).parent_path(), ec);
  // Best effort: a lost request is asked again by the client's retry.
  (void)util::WriteFileAtomically(WantPath(tenant, id), replica_id_);
}

bool LeaseStore::HandoverRequested(const std::string& tenant, const std::string& id) const {
  std::ifstream in(WantPath(tenant, id), std::ios::binary);
  if (!in) return false;
  std::stringstream who;
  who << in.rdbuf();
  return who.str() != replica_id_;
}

void LeaseStore::ClearHandover(const std::string& tenant, const std::string& id) const {
  std::error_code ec;
  fs::remove(WantPath(tenant, id), ec);
}

}  // namespace ttt::session::internal
