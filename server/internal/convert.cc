// Protobuf <-> session structs and the server's own request checks (see convert.h).
#include "server/internal/convert.h"

#include <cmath>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "auth/grpc_auth.h"
#include "server/access_log.h"
#include "tokenizer/tokenizer.h"
#include "util/status_macros.h"

namespace ttt::server::internal {

namespace pb = tttserve::v1;

absl::StatusOr<auth::Principal> CallerOf(const auth::Authorizer& authorizer,
                                         const grpc::CallbackServerContext* ctx,
                                         const char* method) {
  auto caller = auth::AuthorizeCall(authorizer, *ctx, auth::TttMethod(method));
  if (caller.ok()) NoteCallTenant(*ctx, caller->tenant);  // for the call's access line
  return caller;
}

absl::StatusOr<std::string> TenantOf(const auth::Authorizer& authorizer,
                                     const grpc::CallbackServerContext* ctx, const char* method) {
  ASSIGN_OR_RETURN(auto caller, CallerOf(authorizer, ctx, method));
  return std::move(caller.tenant);
}

namespace {
// A client's id as messages echo it (as session/'s Quote does): quoted, escaped, at most 64 bytes.
std::string QuoteId(absl::string_view id) {
  std::string out = absl::StrCat("'", absl::CHexEscape(id.substr(0, 64)), "'");
  if (id.size() > 64) absl::StrAppend(&out, "... (", id.size(), " bytes)");
  return out;
}
}  // namespace

absl::Status CheckSessionHeader(const grpc::CallbackServerContext* ctx,
                                std::initializer_list<std::string> ids) {
  const auto& metadata = ctx->client_metadata();
  const auto header = metadata.find("x-session-id");
  if (header == metadata.end()) return absl::OkStatus();
  const std::string routed(header->second.data(), header->second.size());
  std::string named;
  for (const std::string& id : ids) {
    if (id.empty()) continue;
    if (id == routed) return absl::OkStatus();
    if (named.empty()) named = id;
  }
  if (named.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "the x-session-id header names session ", QuoteId(routed), " but the request names ",
      QuoteId(named),
      ": a proxy routes the call by the header, so send the same id in both (or no header)"));
}

void ToProto(const session::Counters& c, pb::SessionCounters* out) {
  out->set_tokens_received(c.tokens_received);
  out->set_tokens_applied(c.tokens_applied);
  out->set_tokens_pending(c.tokens_pending);
  out->set_chunks_applied(c.chunks_applied);
  out->set_position(c.position);
  out->set_documents_completed(c.documents_completed);
  out->set_tokens_generated(c.tokens_generated);
}

void ToProto(const session::SessionOptions& o, pb::SessionOptions* out) {
  out->set_reset_at_document_end(o.reset_at_document_end);
  out->set_fade_at_document_end(static_cast<float>(o.fade_at_document_end));
  out->set_idle_ttl_seconds(o.idle_ttl_seconds);
  for (const auto& [k, v] : o.labels) (*out->mutable_labels())[k] = v;
}

void ToProto(const session::SessionInfo& info, pb::Session* out) {
  out->set_session_id(info.id);
  out->set_tenant(info.tenant);
  ToProto(info.options, out->mutable_options());
  ToProto(info.counters, out->mutable_counters());
  out->set_memory_bytes(info.memory_bytes);
  for (const auto& [layer, norm] : info.delta_norms) {
    auto* d = out->add_deltas();
    d->set_layer(layer);
    d->set_delta_norm(norm);
  }
  out->set_create_time_unix_ms(info.create_time_unix_ms);
  out->set_last_used_unix_ms(info.last_used_unix_ms);
  out->set_resident(info.resident);
  out->set_writer_active(info.writer_active);
  out->set_residency(!info.resident ? pb::RESIDENCY_EVICTED
                     : info.compact ? pb::RESIDENCY_COMPACT
                                    : pb::RESIDENCY_RESIDENT);
}

void ToProto(const session::CheckpointInfo& info, pb::CheckpointInfo* out) {
  out->set_checkpoint_id(info.id);
  out->set_session_id(info.session_id);
  out->set_size_bytes(info.size_bytes);
  out->set_create_time_unix_ms(info.create_time_unix_ms);
  out->set_model_fingerprint(info.model_fingerprint);
  ToProto(info.counters, out->mutable_counters());
  ToProto(info.options, out->mutable_options());
}

void ToProto(const session::ScoreResult& result, pb::ScoreResponse* out) {
  double total = 0.0;
  int64_t n = 0;
  for (size_t i = 0; i < result.tokens.size(); ++i) {
    out->add_token_ids(result.tokens[i]);
    const float lp = i < result.logprobs.size() ? result.logprobs[i] : NAN;
    out->add_logprobs(lp);
    if (std::isfinite(lp)) {
      total += lp;
      ++n;
    }
  }
  out->set_total_logprob(total);
  if (n > 0) {
    out->set_mean_nll(-total / static_cast<double>(n));
    out->set_perplexity(std::exp(-total / static_cast<double>(n)));
  }
}

pb::FinishReason ToProto(session::FinishReason reason) {
  switch (reason) {
    case session::FinishReason::kLength:
      return pb::FINISH_REASON_LENGTH;
    case session::FinishReason::kStop:
      return pb::FINISH_REASON_STOP;
    case session::FinishReason::kEos:
      return pb::FINISH_REASON_EOS;
  }
  return pb::FINISH_REASON_EOS;
}

session::SessionOptions FromProto(const pb::SessionOptions& o) {
  session::SessionOptions out;
  out.reset_at_document_end = o.reset_at_document_end();
  out.fade_at_document_end = o.fade_at_document_end();
  out.idle_ttl_seconds = o.idle_ttl_seconds();
  for (const auto& [k, v] : o.labels()) out.labels[k] = v;
  return out;
}

TextEncoding TextEncodingOf(const tokenizer::Tokenizer* tok, const pb::TextOptions& options) {
  TextEncoding encoding;
  if (options.parse_special_tokens()) encoding.special = tokenizer::SpecialTokens::kParse;
  if (tok == nullptr) return encoding;
  const bool add_bos = options.has_add_bos() ? options.add_bos() : tok->adds_bos();
  if (add_bos) encoding.bos_at_start = tok->bos_id();
  return encoding;
}

absl::StatusOr<bool> TextStartsContext(session::SessionManager& sessions, const std::string& tenant,
                                       const std::string& id, const std::string& text,
                                       const TextEncoding& encoding) {
  if (text.empty() || !encoding.bos_at_start) return false;
  auto info = sessions.GetSession(tenant, id);
  if (!info.ok()) return info.status();
  return info->counters.position == 0;
}

namespace {
// The per-message size limits shared by every request that carries input.
absl::Status CheckMessageLimits(int64_t ids, int64_t text_bytes, const ServiceLimits& limits,
                                const std::string& what) {
  if (ids > limits.max_tokens_per_message) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " carries ", ids, " token ids; the limit is ",
                     limits.max_tokens_per_message, " per message: split them across messages"));
  }
  if (text_bytes > limits.max_text_bytes_per_message) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " carries ", text_bytes, " bytes of text; the limit is ",
        limits.max_text_bytes_per_message, " bytes per message: split it across messages"));
  }
  return absl::OkStatus();
}
}  // namespace

absl::StatusOr<std::vector<int32_t>> InputTokens(
    const ServiceLimits& limits, const tokenizer::Tokenizer* tok, const std::string& text,
    const google::protobuf::RepeatedField<int32_t>& ids, const std::string& what,
    const TextEncoding& encoding, bool starts_context) {
  if (!text.empty() && !ids.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " carries both text and token ids; send one of them"));
  }
  absl::Status limits_ok =
      CheckMessageLimits(ids.size(), static_cast<int64_t>(text.size()), limits, what);
  if (!limits_ok.ok()) return limits_ok;
  if (text.empty()) return std::vector<int32_t>(ids.begin(), ids.end());
  auto tokens = core::Tokenize(tok, text, what, encoding.special);
  if (tokens.ok() && starts_context && encoding.bos_at_start) {
    tokens->insert(tokens->begin(), *encoding.bos_at_start);
  }
  return tokens;
}

absl::Status ValidateIngestMessage(const pb::IngestRequest& req, const ServiceLimits& limits,
                                   const std::string& where) {
  if (req.text().empty() && req.token_ids().empty() && !req.end_of_document() && !req.flush()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, " is empty: set text, token_ids, flush or end_of_document"));
  }
  if (!req.text().empty() && !req.token_ids().empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, " carries both text and token_ids; send one kind per message"));
  }
  return CheckMessageLimits(req.token_ids_size(), static_cast<int64_t>(req.text().size()), limits,
                            where);
}

absl::StatusOr<std::unique_ptr<session::Writer>> OpenIngestWriter(
    const grpc::CallbackServerContext* ctx, session::SessionManager& sessions,
    const std::string& tenant, const pb::IngestRequest& first) {
  if (first.session_id().empty()) {
    return absl::InvalidArgumentError(
        "the first Ingest message must name the session (session_id)");
  }
  RETURN_IF_ERROR(CheckSessionHeader(ctx, {first.session_id()}));
  auto writer = sessions.OpenWriter(tenant, first.session_id(), "an Ingest");
  if (!writer.ok() || !first.has_expected_tokens_received()) return writer;
  const int64_t have = (*writer)->counters().tokens_received;
  if (have == first.expected_tokens_received()) return writer;
  return absl::FailedPreconditionError(
      absl::StrCat("session ", (*writer)->session_id(), " has received ", have, " tokens, not ",
                   first.expected_tokens_received(),
                   " as expected_tokens_received says; nothing of this "
                   "stream was applied: resend from token ",
                   have, " with expected_tokens_received=", have));
}

absl::Status CheckIngestSession(const pb::IngestRequest& req, const std::string& bound,
                                const std::string& where) {
  if (req.has_expected_tokens_received() || req.has_text_options()) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, " sets ", req.has_text_options() ? "text_options" : "expected_tokens_received",
        ": only the first message of a stream may"));
  }
  if (req.session_id().empty() || req.session_id() == bound) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(where, " names session ", req.session_id(),
                                                 " but this stream writes ", bound,
                                                 "; open one stream per session"));
}

pb::IngestResponse IngestResponseFor(int64_t index, int64_t buffered_text_bytes,
                                     const session::Counters& counters,
                                     const core::IngestStream& stream) {
  pb::IngestResponse resp;
  resp.set_message_index(index);
  resp.set_stream_tokens(stream.stream_tokens());
  resp.set_buffered_text_bytes(buffered_text_bytes);
  ToProto(counters, resp.mutable_counters());
  if (const auto loss = stream.loss()) {
    resp.set_loss(loss->loss);
    resp.set_perplexity(loss->perplexity);
    resp.set_loss_tokens(loss->tokens);
  }
  return resp;
}

session::GenerateParams GenerateParamsFromProto(const pb::GenerateRequest& req) {
  session::GenerateParams params;
  params.max_tokens = req.max_tokens() == 0 ? 64 : req.max_tokens();
  params.sampling.temperature = req.has_temperature() ? req.temperature() : 1.0;
  params.sampling.top_p = req.has_top_p() ? req.top_p() : 1.0;
  params.sampling.top_k = req.top_k();
  params.sampling.seed = req.seed();
  params.stop_at_eos = !req.ignore_eos();
  params.commit = req.commit();
  return params;
}

absl::Status ValidateStops(const pb::GenerateRequest& req) {
  if (req.stop_size() > kMaxStops) {
    return absl::InvalidArgumentError(
        absl::StrCat("at most ", kMaxStops, " stop strings, got ", req.stop_size()));
  }
  for (const auto& s : req.stop()) {
    if (s.empty() || s.size() > kMaxStopBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("stop strings must be 1..", kMaxStopBytes, " bytes"));
    }
  }
  return absl::OkStatus();
}

namespace {
void ToProto(const TenantUsageRow& row, tttserve::v1::TenantUsage* out) {
  out->set_tenant(row.tenant);
  out->set_live_sessions(row.live_sessions);
  out->set_checkpoint_bytes(row.checkpoint_bytes);
  out->set_streams_open(row.streams_open);
  out->set_ingest_tokens_total(row.ingest_tokens_total.value_or(-1));
  for (const auto& [quota, n] : row.refusals) (*out->mutable_refusals())[quota] = n;
  for (const auto& [quota, limit] : auth::LimitsByKey(row.limits)) {
    (*out->mutable_limits())[quota] = limit;
  }
}
}  // namespace

void AddTenantUsage(QuotaGate& quotas, const std::string& tenant, bool admin,
                    tttserve::v1::ServerInfo* out) {
  auto own = quotas.UsageOf(tenant);
  if (!own) return;  // no quotas
  ToProto(*own, out->add_tenant_usage());
  if (!admin) return;
  for (const TenantUsageRow& row : quotas.Usage()) {
    if (row.tenant != tenant) ToProto(row, out->add_tenant_usage());
  }
}

}  // namespace ttt::server::internal
