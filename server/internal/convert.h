// The server's edge: protobuf <-> the session module's plain structs, and the checks that belong
// to the server (request shapes and size limits). Rules owned elsewhere are not repeated here:
// sampling parameters and the vocabulary are checked by the engine (through the session
// manager), session and checkpoint ids and the session limit by the session manager; their
// statuses reach the client unchanged.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "auth/authorizer.h"
#include "server/core/ingest_stream.h"
#include "server/internal/quota_gate.h"
#include "server/service.h"
#include "session/session.h"
#include "tokenizer/tokenizer.h"
#include "tttserve/v1/ttt_service.pb.h"

namespace ttt::server::internal {

// The caller of TttService method `method` ("Score"), as auth::Authorizer decides: the tenant of
// the call's credential, or with authentication off the x-tenant-id header ("default" without
// one). UNAUTHENTICATED / PERMISSION_DENIED, or INVALID_ARGUMENT naming a malformed header.
absl::StatusOr<auth::Principal> CallerOf(const auth::Authorizer& authorizer,
                                         const grpc::CallbackServerContext* ctx,
                                         const char* method);
// CallerOf's tenant.
absl::StatusOr<std::string> TenantOf(const auth::Authorizer& authorizer,
                                     const grpc::CallbackServerContext* ctx, const char* method);

// The x-session-id header, the routing key of a proxy in front of replicas, must agree with the
// request: when the call has one and the request names sessions (`ids`, empty ones skipped), it
// must be one of them (Fork and Restore name two: the source or target, and the new one).
// INVALID_ARGUMENT naming both otherwise. No header, or no id in the request: OK.
absl::Status CheckSessionHeader(const grpc::CallbackServerContext* ctx,
                                std::initializer_list<std::string> ids);

// GetServerInfo's tenant_usage: `tenant`'s own row, then for an admin the rows of every listed
// tenant and "*" (none without quotas).
void AddTenantUsage(QuotaGate& quotas, const std::string& tenant, bool admin,
                    tttserve::v1::ServerInfo* out);

void ToProto(const session::Counters& c, tttserve::v1::SessionCounters* out);
void ToProto(const session::SessionOptions& o, tttserve::v1::SessionOptions* out);
void ToProto(const session::SessionInfo& info, tttserve::v1::Session* out);
void ToProto(const session::CheckpointInfo& info, tttserve::v1::CheckpointInfo* out);
// Token log-probabilities plus their sum, mean NLL and perplexity over the tokens that had a
// prediction (NaN log-probs are reported but not summed).
void ToProto(const session::ScoreResult& result, tttserve::v1::ScoreResponse* out);
tttserve::v1::FinishReason ToProto(session::FinishReason reason);
session::SessionOptions FromProto(const tttserve::v1::SessionOptions& o);

// A request's TextOptions resolved against the model's tokenizer (docs/contract.md, "Text:
// special tokens and bos"): whether special tokens are parsed, and the bos id to put before text
// that starts a context (none when add_bos resolves false or the tokenizer has no bos).
struct TextEncoding {
  tokenizer::SpecialTokens special = tokenizer::SpecialTokens::kAsText;
  std::optional<int32_t> bos_at_start;
};
TextEncoding TextEncodingOf(const tokenizer::Tokenizer* tok,
                            const tttserve::v1::TextOptions& options);

// Whether `text` sent now to session `id` starts its context (the session's position is 0).
// Asked of the session manager only when the answer matters (non-empty text, a bos to add);
// its errors (NOT_FOUND, ...) are returned.
absl::StatusOr<bool> TextStartsContext(session::SessionManager& sessions, const std::string& tenant,
                                       const std::string& id, const std::string& text,
                                       const TextEncoding& encoding);

// Text or token ids of a unary request (at most one kind; both empty gives no tokens), checked
// against the per-message limits. INVALID_ARGUMENT names `what` and the limit. Text is encoded
// as `encoding` says; `starts_context` says whether it starts the session's context (then
// encoding.bos_at_start goes first).
absl::StatusOr<std::vector<int32_t>> InputTokens(
    const ServiceLimits& limits, const tokenizer::Tokenizer* tok, const std::string& text,
    const google::protobuf::RepeatedField<int32_t>& ids, const std::string& what,
    const TextEncoding& encoding, bool starts_context);

// The shape of one Ingest message: not empty, not both text and ids, within the per-message
// limits. INVALID_ARGUMENT prefixed with `where`.
absl::Status ValidateIngestMessage(const tttserve::v1::IngestRequest& req,
                                   const ServiceLimits& limits, const std::string& where);

// An Ingest stream's session: its first message names it and takes its writer lease
// (INVALID_ARGUMENT without a name or when the call's x-session-id header names another
// (CheckSessionHeader); the session manager's codes). With expected_tokens_received
// (an idempotent resend) the session must have received exactly that many tokens, else
// FAILED_PRECONDITION saying where to resume; under the lease nothing else changes the counters,
// so the check holds for the whole stream.
absl::StatusOr<std::unique_ptr<session::Writer>> OpenIngestWriter(
    const grpc::CallbackServerContext* ctx, session::SessionManager& sessions,
    const std::string& tenant, const tttserve::v1::IngestRequest& first);
// A later message of a stream that writes session `bound`: it may repeat that name but not name
// another or set expected_tokens_received or text_options (INVALID_ARGUMENT prefixed with `where`).
absl::Status CheckIngestSession(const tttserve::v1::IngestRequest& req, const std::string& bound,
                                const std::string& where);
// The response to Ingest message `index` once applied: the stream's totals (and loss when asked),
// the text still buffered behind it, the session's counters.
tttserve::v1::IngestResponse IngestResponseFor(int64_t index, int64_t buffered_text_bytes,
                                               const session::Counters& counters,
                                               const core::IngestStream& stream);

// A Generate request without its prompt (the caller converts that with InputTokens):
// max_tokens 0 means the default of 64, unset temperature and top_p mean 1. Sampling values are
// passed through as given (the engine validates them); the stop strings are the server's to
// bound (at most kMaxStops, each 1..kMaxStopBytes bytes).
inline constexpr int kMaxStops = 16;
inline constexpr size_t kMaxStopBytes = 256;
session::GenerateParams GenerateParamsFromProto(const tttserve::v1::GenerateRequest& req);
absl::Status ValidateStops(const tttserve::v1::GenerateRequest& req);

}  // namespace ttt::server::internal
