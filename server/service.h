// The tttserve.v1.TttService on gRPC's callback (reactor) API: translates protobuf to the
// session module's plain structs at the edge, admits work, and streams results back as the
// engine's callbacks deliver them (no RPC thread ever waits on the engine).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "auth/authorizer.h"
#include "server/internal/call_slots.h"
#include "server/internal/import_guard.h"
#include "server/internal/quota_gate.h"
#include "server/metrics.h"
#include "session/session.h"
#include "tttserve/v1/ttt_service.grpc.pb.h"

namespace ttt::tokenizer {
class Tokenizer;
}

namespace ttt::server {

struct ServiceLimits {
  int64_t max_tokens_per_message = 65536;
  int64_t max_text_bytes_per_message = int64_t{4} << 20;
  int64_t max_buffered_text_bytes = int64_t{16} << 20;  // text awaiting flush in one stream
  int64_t max_inflight_messages = 8;  // per Ingest stream; reading pauses beyond (backpressure)
  int64_t max_import_bytes = int64_t{4} << 30;  // never more, whatever the model allows
  int64_t max_concurrent_imports = 4;           // more get RESOURCE_EXHAUSTED at once
  int64_t max_concurrent_exports = 16;          // more get RESOURCE_EXHAUSTED at once
  int64_t export_piece_bytes = int64_t{1} << 20;
  // Sync durability: an Ingest message with flush or end_of_document is acknowledged only once
  // the session's state is in the session store. Otherwise write-behind (ManagerOptions).
  bool sync_durability = false;
};

// Who may call: every handler asks `authorizer` (server/security.h builds it from the flags);
// GetServerInfo reports `info`. `quotas` (--quotas_file; null: none) limits what each tenant
// may hold and do (server/internal/quota_gate.h).
struct ServiceSecurity {
  std::shared_ptr<const auth::Authorizer> authorizer;
  tttserve::v1::SecurityInfo info;
  auth::Quotas* quotas = nullptr;
};

// Thread-safe. REQUIRES: everything passed in outlives the service.
class TttServiceImpl final : public tttserve::v1::TttService::CallbackService {
 public:
  TttServiceImpl(session::SessionManager* sessions, const tokenizer::Tokenizer* tokenizer,
                 Metrics* metrics, ServiceLimits limits, std::string version,
                 int64_t max_batch_tokens, ServiceSecurity security);

  using Ctx = grpc::CallbackServerContext;
  grpc::ServerUnaryReactor* GetServerInfo(Ctx* ctx, const tttserve::v1::GetServerInfoRequest* req,
                                          tttserve::v1::ServerInfo* resp) override;
  grpc::ServerUnaryReactor* CreateSession(Ctx* ctx, const tttserve::v1::CreateSessionRequest* req,
                                          tttserve::v1::Session* resp) override;
  grpc::ServerUnaryReactor* GetSession(Ctx* ctx, const tttserve::v1::GetSessionRequest* req,
                                       tttserve::v1::Session* resp) override;
  grpc::ServerUnaryReactor* ListSessions(Ctx* ctx, const tttserve::v1::ListSessionsRequest* req,
                                         tttserve::v1::ListSessionsResponse* resp) override;
  grpc::ServerUnaryReactor* DeleteSession(Ctx* ctx, const tttserve::v1::DeleteSessionRequest* req,
                                          tttserve::v1::DeleteSessionResponse* resp) override;
  grpc::ServerBidiReactor<tttserve::v1::IngestRequest, tttserve::v1::IngestResponse>* Ingest(
      Ctx* ctx) override;
  grpc::ServerWriteReactor<tttserve::v1::GenerateResponse>* Generate(
      Ctx* ctx, const tttserve::v1::GenerateRequest* req) override;
  grpc::ServerUnaryReactor* Score(Ctx* ctx, const tttserve::v1::ScoreRequest* req,
                                  tttserve::v1::ScoreResponse* resp) override;
  grpc::ServerUnaryReactor* Checkpoint(Ctx* ctx, const tttserve::v1::CheckpointRequest* req,
                                       tttserve::v1::CheckpointInfo* resp) override;
  grpc::ServerUnaryReactor* Restore(Ctx* ctx, const tttserve::v1::RestoreRequest* req,
                                    tttserve::v1::Session* resp) override;
  grpc::ServerUnaryReactor* Reset(Ctx* ctx, const tttserve::v1::ResetRequest* req,
                                  tttserve::v1::Session* resp) override;
  grpc::ServerUnaryReactor* Fork(Ctx* ctx, const tttserve::v1::ForkRequest* req,
                                 tttserve::v1::Session* resp) override;
  grpc::ServerUnaryReactor* ListCheckpoints(Ctx* ctx,
                                            const tttserve::v1::ListCheckpointsRequest* req,
                                            tttserve::v1::ListCheckpointsResponse* resp) override;
  grpc::ServerUnaryReactor* DeleteCheckpoint(Ctx* ctx,
                                             const tttserve::v1::DeleteCheckpointRequest* req,
                                             tttserve::v1::DeleteCheckpointResponse* resp) override;
  grpc::ServerWriteReactor<tttserve::v1::ExportSessionResponse>* ExportSession(
      Ctx* ctx, const tttserve::v1::ExportSessionRequest* req) override;
  grpc::ServerReadReactor<tttserve::v1::ImportSessionRequest>* ImportSession(
      Ctx* ctx, tttserve::v1::Session* resp) override;
  grpc::ServerUnaryReactor* Tokenize(Ctx* ctx, const tttserve::v1::TokenizeRequest* req,
                                     tttserve::v1::TokenizeResponse* resp) override;
  grpc::ServerUnaryReactor* Detokenize(Ctx* ctx, const tttserve::v1::DetokenizeRequest* req,
                                       tttserve::v1::DetokenizeResponse* resp) override;

  // Plumbing shared with the reactors (server/internal/reactors.h).
  session::SessionManager* sessions() const { return sessions_; }
  const tokenizer::Tokenizer* tokenizer() const { return tokenizer_; }
  Metrics* metrics() const { return metrics_; }
  const auth::Authorizer& authorizer() const { return *security_.authorizer; }
  const ServiceLimits& limits() const { return limits_; }
  // Limits on one import's bytes, derived from the model (server/internal/import_guard.h).
  const internal::ImportLimits& import_limits() const { return import_limits_; }
  internal::CallSlots* import_slots() { return &import_slots_; }
  internal::CallSlots* export_slots() { return &export_slots_; }
  internal::QuotaGate* quotas() { return &quotas_; }

 private:
  session::SessionManager* sessions_;
  const tokenizer::Tokenizer* tokenizer_;
  Metrics* metrics_;
  const ServiceLimits limits_;
  const internal::ImportLimits import_limits_;
  internal::CallSlots import_slots_;
  internal::CallSlots export_slots_;
  const std::string version_;
  const int64_t max_batch_tokens_;
  const ServiceSecurity security_;
  internal::QuotaGate quotas_;
};

}  // namespace ttt::server
