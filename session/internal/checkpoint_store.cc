// The checkpoint directory (see checkpoint_store.h).
#include "session/internal/checkpoint_store.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "engine/safetensors.h"
#include "session/internal/names.h"

namespace ttt::session::internal {

namespace fs = std::filesystem;

namespace {

constexpr char kExtension[] = ".safetensors";

absl::StatusOr<std::string> ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path.string()));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("cannot read ", path.string()));
  return ss.str();
}

absl::Status WriteAtomically(const fs::path& path, const std::string& bytes) {
  std::error_code ec;
  fs::create_directories(path.parent_path(), ec);
  return engine::WriteFileAtomically(path, bytes);
}

absl::Status CheckpointNotFound(const std::string& id) {
  return absl::NotFoundError(absl::StrCat("checkpoint '", id, "' not found"));
}

}  // namespace

absl::Status CheckpointStore::Init() const {
  std::error_code ec;
  fs::create_directories(root_, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create checkpoint directory ", root_.string(), ": ", ec.message()));
  }
  return absl::OkStatus();
}

fs::path CheckpointStore::CheckpointPath(const std::string& tenant, const std::string& id) const {
  return TenantDir(tenant) / "checkpoints" / (id + kExtension);
}

fs::path CheckpointStore::SessionPath(const std::string& tenant, const std::string& id) const {
  return TenantDir(tenant) / "sessions" / (id + kExtension);
}

std::string CheckpointStore::SessionFileName(const std::string& tenant,
                                             const std::string& id) const {
  return SessionPath(tenant, id).string();
}

absl::Status CheckpointStore::WriteCheckpoint(const std::string& tenant, const std::string& id,
                                              const std::string& bytes) const {
  return WriteAtomically(CheckpointPath(tenant, id), bytes);
}

absl::StatusOr<std::string> CheckpointStore::ReadCheckpoint(const std::string& tenant,
                                                            const std::string& id) const {
  const fs::path path = CheckpointPath(tenant, id);
  if (!fs::exists(path)) return CheckpointNotFound(id);
  return ReadFile(path);
}

absl::Status CheckpointStore::DeleteCheckpoint(const std::string& tenant,
                                               const std::string& id) const {
  std::error_code ec;
  if (!fs::remove(CheckpointPath(tenant, id), ec)) return CheckpointNotFound(id);
  return absl::OkStatus();
}

std::vector<CheckpointInfo> CheckpointStore::ListCheckpoints(const std::string& tenant) const {
  std::vector<CheckpointInfo> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(TenantDir(tenant) / "checkpoints", ec)) {
    if (entry.path().extension() != kExtension) continue;
    auto meta = ReadCheckpointMeta(entry.path().string());
    CheckpointInfo info;
    info.id = entry.path().stem().string();
    std::error_code ec2;
    info.size_bytes = static_cast<int64_t>(fs::file_size(entry.path(), ec2));
    if (meta.ok()) {
      info.session_id = meta->session_id;
      info.create_time_unix_ms = meta->created_unix_ms;
      info.model_fingerprint = meta->model_fingerprint;
      info.counters = meta->counters;
      info.options = meta->options;
    }
    out.push_back(std::move(info));
  }
  std::sort(out.begin(), out.end(),
            [](const CheckpointInfo& a, const CheckpointInfo& b) { return a.id < b.id; });
  return out;
}

absl::Status CheckpointStore::WriteSession(const std::string& tenant, const std::string& id,
                                           const std::string& bytes) const {
  return WriteAtomically(SessionPath(tenant, id), bytes);
}

absl::StatusOr<std::string> CheckpointStore::ReadSession(const std::string& tenant,
                                                         const std::string& id) const {
  return ReadFile(SessionPath(tenant, id));
}

void CheckpointStore::RemoveSession(const std::string& tenant, const std::string& id) const {
  std::error_code ec;
  fs::remove(SessionPath(tenant, id), ec);
}

std::vector<CheckpointStore::PersistedSession> CheckpointStore::ListSessions(
    const std::string& model_fingerprint) const {
  std::vector<PersistedSession> out;
  std::error_code ec;
  for (const auto& tenant_dir : fs::directory_iterator(root_, ec)) {
    const std::string tenant = tenant_dir.path().filename().string();
    if (!ValidateName(tenant, "tenant", 64).ok()) continue;
    std::error_code ec2;
    for (const auto& entry : fs::directory_iterator(tenant_dir.path() / "sessions", ec2)) {
      if (entry.path().extension() != kExtension) continue;
      auto meta = ReadCheckpointMeta(entry.path().string());
      if (!meta.ok()) {
        std::fprintf(stderr, "ttt-serve: skipping persisted session %s: %s\n",
                     entry.path().c_str(), std::string(meta.status().message()).c_str());
        continue;
      }
      if (meta->model_fingerprint != model_fingerprint) {
        std::fprintf(stderr, "ttt-serve: skipping persisted session %s: another model's\n",
                     entry.path().c_str());
        continue;
      }
      const std::string id = entry.path().stem().string();
      if (!ValidateName(id, "session id", 128).ok() || meta->session_id != id) continue;
      out.push_back({tenant, id, std::move(*meta)});
    }
  }
  return out;
}

}  // namespace ttt::session::internal
