// Checkpoint encoding and verification (see checkpoint.h).
#include "session/internal/checkpoint.h"

#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "engine/safetensors.h"
#include "engine/status_macros.h"
#include "util/sha256.h"

namespace ttt::session::internal {
namespace {

using ::ttt::util::Sha256;

constexpr char kPrefix[] = "tttserve.";
constexpr char kShaKey[] = "tttserve.sha256";

// Where the data section starts, or an error when the bytes cannot be a safetensors file.
absl::StatusOr<uint64_t> DataOffset(const std::string& bytes, const std::string& source) {
  if (bytes.size() < 8) {
    return absl::DataLossError(absl::StrCat("checkpoint ", source, " is truncated (",
                                            bytes.size(), " bytes)"));
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[i]);
  if (n > bytes.size() - 8) {
    return absl::DataLossError(absl::StrCat("checkpoint ", source,
                                            " is truncated or corrupt: header length ", n,
                                            " exceeds the ", bytes.size(), "-byte file"));
  }
  return 8 + n;
}

std::string Digest(std::string_view data_section, const std::map<std::string, std::string>& meta) {
  Sha256 h;
  h.Update(data_section);
  for (const auto& [k, v] : meta) {
    if (k == kShaKey) continue;
    h.Update(k);
    h.Update("=", 1);
    h.Update(v);
    h.Update("\n", 1);
  }
  return h.HexFinal();
}

nlohmann::json CountersJson(const Counters& c) {
  return {{"tokens_received", c.tokens_received}, {"tokens_applied", c.tokens_applied},
          {"tokens_pending", c.tokens_pending},   {"chunks_applied", c.chunks_applied},
          {"position", c.position},               {"documents_completed", c.documents_completed},
          {"tokens_generated", c.tokens_generated}};
}

Counters CountersFromJson(const nlohmann::json& j) {
  Counters c;
  c.tokens_received = j.value("tokens_received", int64_t{0});
  c.tokens_applied = j.value("tokens_applied", int64_t{0});
  c.tokens_pending = j.value("tokens_pending", int64_t{0});
  c.chunks_applied = j.value("chunks_applied", int64_t{0});
  c.position = j.value("position", int64_t{0});
  c.documents_completed = j.value("documents_completed", int64_t{0});
  c.tokens_generated = j.value("tokens_generated", int64_t{0});
  return c;
}

std::map<std::string, std::string> MetaMap(const engine::SequenceState& state,
                                           const CheckpointMeta& meta) {
  std::map<std::string, std::string> m = state.Metadata();
  m["tttserve.format"] = kCheckpointFormat;
  m["tttserve.model_fingerprint"] = meta.model_fingerprint;
  m["tttserve.tenant"] = meta.tenant;
  m["tttserve.session_id"] = meta.session_id;
  m["tttserve.checkpoint_id"] = meta.checkpoint_id;
  m["tttserve.created_unix_ms"] = absl::StrCat(meta.created_unix_ms);
  m["tttserve.counters"] = CountersJson(meta.counters).dump();
  nlohmann::json opts = {{"reset_at_document_end", meta.options.reset_at_document_end},
                         {"idle_ttl_seconds", meta.options.idle_ttl_seconds},
                         {"labels", meta.options.labels}};
  m["tttserve.options"] = opts.dump();
  return m;
}

absl::StatusOr<CheckpointMeta> ParseMeta(const std::map<std::string, std::string>& m,
                                         const std::string& source) {
  auto get = [&](const std::string& key) -> std::string {
    auto it = m.find(key);
    return it == m.end() ? std::string() : it->second;
  };
  if (get("tttserve.format") != kCheckpointFormat) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, " is not a ttt-serve checkpoint (metadata 'tttserve.format' is '",
        get("tttserve.format"), "', expected '", kCheckpointFormat, "')"));
  }
  CheckpointMeta meta;
  meta.model_fingerprint = get("tttserve.model_fingerprint");
  meta.tenant = get("tttserve.tenant");
  meta.session_id = get("tttserve.session_id");
  meta.checkpoint_id = get("tttserve.checkpoint_id");
  if (!absl::SimpleAtoi(get("tttserve.created_unix_ms"), &meta.created_unix_ms)) {
    meta.created_unix_ms = 0;
  }
  try {
    meta.counters = CountersFromJson(nlohmann::json::parse(get("tttserve.counters")));
    auto opts = nlohmann::json::parse(get("tttserve.options"));
    meta.options.reset_at_document_end = opts.value("reset_at_document_end", false);
    meta.options.idle_ttl_seconds = opts.value("idle_ttl_seconds", int64_t{0});
    meta.options.labels =
        opts.value("labels", std::map<std::string, std::string>{});
  } catch (const std::exception& e) {
    return absl::DataLossError(
        absl::StrCat("checkpoint ", source, " has malformed metadata: ", e.what()));
  }
  return meta;
}

}  // namespace

absl::StatusOr<std::string> EncodeCheckpoint(const engine::SequenceState& state,
                                             const CheckpointMeta& meta) {
  const engine::NamedTensors tensors = state.ToTensors();
  std::map<std::string, std::string> m = MetaMap(state, meta);
  // The data section does not depend on the metadata: encode once to hash it, then with the hash.
  ASSIGN_OR_RETURN(std::string first, engine::EncodeSafetensors(tensors, m));
  ASSIGN_OR_RETURN(uint64_t offset, DataOffset(first, "being written"));
  m[kShaKey] = Digest(std::string_view(first).substr(offset), m);
  return engine::EncodeSafetensors(tensors, m);
}

absl::StatusOr<DecodedCheckpoint> DecodeCheckpoint(std::string bytes, const std::string& source,
                                                   const engine::Model& model) {
  ASSIGN_OR_RETURN(uint64_t offset, DataOffset(bytes, source));
  // Hash before handing the bytes over (FromBytes takes them).
  std::string data_section = bytes.substr(offset);
  auto file = engine::SafetensorsFile::FromBytes(std::move(bytes), source);
  if (!file.ok()) {
    return absl::DataLossError(absl::StrCat("checkpoint ", source,
                                            " is corrupt or truncated: ",
                                            file.status().message()));
  }
  const auto& m = (*file)->metadata();
  ASSIGN_OR_RETURN(CheckpointMeta meta, ParseMeta(m, source));
  auto sha = m.find(kShaKey);
  if (sha == m.end()) {
    return absl::DataLossError(absl::StrCat("checkpoint ", source, " has no checksum"));
  }
  const std::string digest = Digest(data_section, m);
  if (digest != sha->second) {
    return absl::DataLossError(absl::StrCat("checkpoint ", source,
                                            " is corrupt: SHA-256 checksum mismatch (stored ",
                                            sha->second.substr(0, 16), "..., computed ",
                                            digest.substr(0, 16), "...)"));
  }
  if (meta.model_fingerprint != model.fingerprint()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "checkpoint ", source, " belongs to another model (fingerprint ", meta.model_fingerprint,
        "); this server runs model ", model.fingerprint()));
  }
  auto state = model.RestoreSequence(**file);
  if (!state.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint ", source,
                                                   " does not fit the model: ",
                                                   state.status().message()));
  }
  return DecodedCheckpoint{std::move(*state), std::move(meta)};
}

absl::StatusOr<CheckpointMeta> ReadCheckpointMeta(const std::string& path) {
  auto file = engine::SafetensorsFile::Open(path);
  if (!file.ok()) {
    return absl::DataLossError(
        absl::StrCat("checkpoint ", path, " is unreadable: ", file.status().message()));
  }
  return ParseMeta((*file)->metadata(), path);
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("cannot read ", path));
  return ss.str();
}

}  // namespace ttt::session::internal
