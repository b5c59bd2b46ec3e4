// Checkpoint encoding and verification (see checkpoint.h).
#include "session/internal/checkpoint.h"

#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "session/internal/names.h"
#include "util/error_reason.h"
#include "util/sha256.h"
#include "util/status_macros.h"

namespace ttt::session::internal {
namespace {

using ::ttt::util::Sha256;

constexpr char kShaKey[] = "tttserve.sha256";

// What a checkpoint's JSON header says, read without LibTorch.
struct Header {
  uint64_t data_offset = 0;  // where the data section starts (8 + header length)
  uint64_t data_end = 0;     // the largest end offset in the tensor table, relative to it
  std::map<std::string, std::string> metadata;
  std::string table;  // the tensor table, canonical (the checksum's input)
};

absl::Status Malformed(const std::string& source, const std::string& why) {
  return absl::DataLossError(absl::StrCat("checkpoint ", source, " is corrupt: ", why));
}

uint64_t HeaderLength(std::string_view first8) {
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(first8[i]);
  return n;
}

// Appends `s` length-prefixed, so no field can run into the next.
void AppendField(std::string& out, std::string_view s) {
  absl::StrAppend(&out, s.size(), ":");
  out.append(s.data(), s.size());
  out.push_back(';');
}

absl::StatusOr<uint64_t> Offset(const nlohmann::json& j) {
  if (!j.is_number_unsigned()) return absl::InvalidArgumentError("not an offset");
  return j.get<uint64_t>();
}

// One tensor entry into the canonical table; tracks the largest end offset.
absl::Status AddTableEntry(const std::string& name, const nlohmann::json& e, Header& h) {
  if (!e.is_object() || !e.contains("dtype") || !e["dtype"].is_string() || !e.contains("shape") ||
      !e["shape"].is_array() || !e.contains("data_offsets") || !e["data_offsets"].is_array() ||
      e["data_offsets"].size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor entry ", Quote(name), " lacks dtype, shape or data_offsets"));
  }
  std::vector<std::string> dims;
  for (const auto& d : e["shape"]) {
    if (!d.is_number_unsigned()) return absl::InvalidArgumentError("a shape is not unsigned");
    dims.push_back(absl::StrCat(d.get<uint64_t>()));
  }
  ASSIGN_OR_RETURN(uint64_t begin, Offset(e["data_offsets"][0]));
  ASSIGN_OR_RETURN(uint64_t end, Offset(e["data_offsets"][1]));
  AppendField(h.table, name);
  AppendField(h.table, e["dtype"].get<std::string>());
  AppendField(h.table, absl::StrJoin(dims, ","));
  AppendField(h.table, absl::StrCat(begin, ",", end));
  h.data_end = std::max(h.data_end, end);
  return absl::OkStatus();
}

// Parses the JSON header that follows the 8-byte length in `head`.
absl::StatusOr<Header> ParseHeader(std::string_view head, const std::string& source) {
  Header h;
  h.data_offset = head.size();
  const std::string_view json = head.substr(8);
  // The format's limits (checkpoint_format.h), before a recursive parser sees the header.
  CheckpointHeaderScanner scanner;
  absl::Status scanned = scanner.Feed(head);
  if (!scanned.ok()) return Malformed(source, std::string(scanned.message()));
  nlohmann::json j =
      nlohmann::json::parse(json.begin(), json.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return Malformed(source, "its header is not a JSON object");
  }
  for (auto it = j.begin(); it != j.end(); ++it) {  // keys in order: the table is canonical
    if (it.key() == "__metadata__") {
      if (!it.value().is_object()) return Malformed(source, "__metadata__ is not an object");
      for (auto m = it.value().begin(); m != it.value().end(); ++m) {
        if (!m.value().is_string()) return Malformed(source, "a metadata value is not a string");
        h.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    absl::Status added = AddTableEntry(it.key(), it.value(), h);
    if (!added.ok()) return Malformed(source, std::string(added.message()));
  }
  return h;
}

// The first 8 + header-length bytes, checked against the total size.
absl::StatusOr<uint64_t> HeadSize(std::string_view first8, uint64_t size,
                                  const std::string& source) {
  if (size < 8 || first8.size() < 8) {
    return absl::DataLossError(
        absl::StrCat("checkpoint ", source, " is truncated (", size, " bytes)"));
  }
  const uint64_t n = HeaderLength(first8);
  if (n > size - 8) {
    return absl::DataLossError(absl::StrCat("checkpoint ", source,
                                            " is truncated or corrupt: header length ", n,
                                            " exceeds the ", size, "-byte file"));
  }
  if (n > kMaxCheckpointHeaderBytes) {
    return Malformed(source, absl::StrCat("its header of ", n, " bytes exceeds the limit of ",
                                          kMaxCheckpointHeaderBytes));
  }
  return 8 + n;
}

// Format 2: tensor table, data section, metadata; every field length-prefixed.
std::string DigestV2(const std::string& table, std::string_view data_section,
                     const std::map<std::string, std::string>& meta) {
  Sha256 h;
  h.Update(std::string("tensors;"));
  h.Update(table);
  h.Update(std::string(";data;"));
  h.Update(data_section);
  std::string fields = ";metadata;";
  for (const auto& [k, v] : meta) {
    if (k == kShaKey) continue;
    AppendField(fields, k);
    AppendField(fields, v);
  }
  h.Update(fields);
  return h.HexFinal();
}

// Format 1 (read only): data section, then "key=value\n" per metadata entry.
std::string DigestV1(std::string_view data_section,
                     const std::map<std::string, std::string>& meta) {
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
  return {{"tokens_received", c.tokens_received},
          {"tokens_applied", c.tokens_applied},
          {"tokens_pending", c.tokens_pending},
          {"chunks_applied", c.chunks_applied},
          {"position", c.position},
          {"documents_completed", c.documents_completed},
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

// Session counters only grow by what was ingested: beyond 2^53 (or below 0) they are not a
// session's, and sums over them could overflow.
absl::Status CheckCounters(const Counters& c, const std::string& source) {
  constexpr int64_t kMaxCount = int64_t{1} << 53;
  const std::pair<const char*, int64_t> all[] = {{"tokens_received", c.tokens_received},
                                                 {"tokens_applied", c.tokens_applied},
                                                 {"tokens_pending", c.tokens_pending},
                                                 {"chunks_applied", c.chunks_applied},
                                                 {"position", c.position},
                                                 {"documents_completed", c.documents_completed},
                                                 {"tokens_generated", c.tokens_generated}};
  for (const auto& [name, value] : all) {
    if (value < 0 || value > kMaxCount) {
      return absl::InvalidArgumentError(absl::StrCat("checkpoint ", source, ": counter '", name,
                                                     "' is ", value, ", outside [0, 2^53]"));
    }
  }
  return absl::OkStatus();
}

std::map<std::string, std::string> MetaMap(const engine::SequenceState& state,
                                           const CheckpointMeta& meta) {
  std::map<std::string, std::string> m = state.Metadata();
  m.merge(MetaEntries(meta));
  // Format 3 only where it is needed: a dense state stays readable by servers before it.
  if (state.HoldsIncrements()) m["tttserve.format"] = kCheckpointFormat;
  return m;
}

}  // namespace

std::map<std::string, std::string> MetaEntries(const CheckpointMeta& meta) {
  std::map<std::string, std::string> m;
  m["tttserve.format"] = kCheckpointFormatV2;  // EncodeCheckpoint: 3 when the state needs it
  m["tttserve.model_fingerprint"] = meta.model_fingerprint;
  m["tttserve.tenant"] = meta.tenant;
  m["tttserve.session_id"] = meta.session_id;
  m["tttserve.checkpoint_id"] = meta.checkpoint_id;
  m["tttserve.created_unix_ms"] = absl::StrCat(meta.created_unix_ms);
  m["tttserve.last_used_unix_ms"] = absl::StrCat(meta.last_used_unix_ms);
  m["tttserve.counters"] = CountersJson(meta.counters).dump();
  nlohmann::json opts = {{"reset_at_document_end", meta.options.reset_at_document_end},
                         {"fade_at_document_end", meta.options.fade_at_document_end},
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
  const std::string format = get("tttserve.format");
  if (format != kCheckpointFormat && format != kCheckpointFormatV2 &&
      format != kCheckpointFormatV1) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, " is not a ttt-serve checkpoint (metadata 'tttserve.format' is ",
                     Quote(format), ", expected '", kCheckpointFormat, "')"));
  }
  CheckpointMeta meta;
  meta.model_fingerprint = get("tttserve.model_fingerprint");
  meta.tenant = get("tttserve.tenant");
  meta.session_id = get("tttserve.session_id");
  meta.checkpoint_id = get("tttserve.checkpoint_id");
  if (!absl::SimpleAtoi(get("tttserve.created_unix_ms"), &meta.created_unix_ms)) {
    meta.created_unix_ms = 0;
  }
  if (!absl::SimpleAtoi(get("tttserve.last_used_unix_ms"), &meta.last_used_unix_ms)) {
    meta.last_used_unix_ms = 0;
  }
  try {
    meta.counters = CountersFromJson(nlohmann::json::parse(get("tttserve.counters")));
    auto opts = nlohmann::json::parse(get("tttserve.options"));
    meta.options.reset_at_document_end = opts.value("reset_at_document_end", false);
    meta.options.fade_at_document_end = opts.value("fade_at_document_end", 0.0);
    meta.options.idle_ttl_seconds = opts.value("idle_ttl_seconds", int64_t{0});
    meta.options.labels = opts.value("labels", std::map<std::string, std::string>{});
  } catch (const std::exception& e) {
    return absl::DataLossError(
        absl::StrCat("checkpoint ", source, " has malformed metadata: ", e.what()));
  }
  RETURN_IF_ERROR(CheckCounters(meta.counters, source));
  const double fade = meta.options.fade_at_document_end;
  if (!(fade >= 0 && fade <= 1)) {
    return absl::DataLossError(
        absl::StrCat("checkpoint ", source, " has fade_at_document_end outside [0, 1]: ", fade));
  }
  return meta;
}

namespace {

// Header, size and format checks shared by VerifyCheckpoint and InspectCheckpoint.
absl::StatusOr<Header> ReadHeader(std::string_view head, uint64_t file_size,
                                  const std::string& source) {
  ASSIGN_OR_RETURN(Header h, ParseHeader(head, source));
  if (h.data_end > file_size - h.data_offset) {
    return absl::DataLossError(
        absl::StrCat("checkpoint ", source, " is truncated: its tensors need ",
                     h.data_offset + h.data_end, " bytes, the file has ", file_size));
  }
  return h;
}

}  // namespace

absl::StatusOr<std::string> EncodeCheckpoint(const engine::SequenceState& state,
                                             const CheckpointMeta& meta) {
  std::map<std::string, std::string> m = MetaMap(state, meta);
  // The tensor table and the data section do not depend on the metadata: encode once to hash
  // them, then again with the hash.
  ASSIGN_OR_RETURN(std::string first, engine::EncodeSequence(state, m));
  ASSIGN_OR_RETURN(uint64_t head, HeadSize(first, first.size(), "being written"));
  ASSIGN_OR_RETURN(Header h, ParseHeader(std::string_view(first).substr(0, head), "being written"));
  m[kShaKey] = DigestV2(h.table, std::string_view(first).substr(head), m);
  return engine::EncodeSequence(state, m);
}

absl::StatusOr<CheckpointMeta> VerifyCheckpoint(std::string_view bytes, const std::string& source) {
  ASSIGN_OR_RETURN(uint64_t head, HeadSize(bytes, bytes.size(), source));
  ASSIGN_OR_RETURN(Header h, ReadHeader(bytes.substr(0, head), bytes.size(), source));
  ASSIGN_OR_RETURN(CheckpointMeta meta, ParseMeta(h.metadata, source));
  auto sha = h.metadata.find(kShaKey);
  if (sha == h.metadata.end()) {
    return absl::DataLossError(absl::StrCat("checkpoint ", source, " has no checksum"));
  }
  const std::string_view data = bytes.substr(head);
  const std::string digest = h.metadata.at("tttserve.format") == kCheckpointFormatV1
                                 ? DigestV1(data, h.metadata)
                                 : DigestV2(h.table, data, h.metadata);
  if (digest != sha->second) {
    return absl::DataLossError(
        absl::StrCat("checkpoint ", source, " is corrupt: SHA-256 checksum mismatch (stored ",
                     sha->second.substr(0, 16), "..., computed ", digest.substr(0, 16), "...)"));
  }
  return meta;
}

absl::StatusOr<DecodedCheckpoint> DecodeCheckpoint(std::string bytes, const std::string& source,
                                                   const engine::Model& model) {
  ASSIGN_OR_RETURN(CheckpointMeta meta, VerifyCheckpoint(bytes, source));
  if (meta.model_fingerprint != model.fingerprint()) {
    return util::WithReason(
        absl::FailedPreconditionError(absl::StrCat(
            "checkpoint ", source, " belongs to another model (fingerprint ",
            Quote(meta.model_fingerprint), "); this server runs model ", model.fingerprint())),
        util::kReasonStateFromOtherModel);
  }
  auto state = model.RestoreSequence(std::move(bytes), source);
  if (absl::IsDataLoss(state.status())) {
    return absl::DataLossError(absl::StrCat(
        "checkpoint ", source, " is corrupt or truncated: ", state.status().message()));
  }
  if (!state.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint ", source, " does not fit the model: ", state.status().message()));
  }
  return DecodedCheckpoint{std::move(*state), std::move(meta)};
}

absl::StatusOr<uint64_t> CheckpointHeadSize(std::string_view first8, uint64_t file_size,
                                            const std::string& source) {
  return HeadSize(first8, file_size, source);
}

absl::StatusOr<CheckpointMeta> InspectCheckpoint(std::string_view head, uint64_t file_size,
                                                 const std::string& source) {
  ASSIGN_OR_RETURN(Header h, ReadHeader(head, file_size, source));
  return ParseMeta(h.metadata, source);
}

}  // namespace ttt::session::internal
