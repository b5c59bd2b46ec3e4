// TttService (see service.h): the streaming RPCs hand the call to their reactor (one file each,
// server/internal/reactors.h); the unary handlers are in unary_handlers.cc.
#include "server/service.h"

#include <utility>

#include "server/internal/reactors.h"

namespace ttt::server {

namespace pb = tttserve::v1;

TttServiceImpl::TttServiceImpl(session::SessionManager* sessions,
                               const tokenizer::Tokenizer* tokenizer, Metrics* metrics,
                               ServiceLimits limits, std::string version, int64_t max_batch_tokens,
                               ServiceSecurity security)
    : sessions_(sessions),
      tokenizer_(tokenizer),
      metrics_(metrics),
      limits_(limits),
      import_limits_(internal::ImportLimitsFor(
          sessions->model(), sessions->options().memory_budget_bytes, limits.max_import_bytes)),
      import_slots_(limits.max_concurrent_imports, "imports", "--max_concurrent_imports"),
      export_slots_(limits.max_concurrent_exports, "exports", "--max_concurrent_exports"),
      version_(std::move(version)),
      max_batch_tokens_(max_batch_tokens),
      security_(std::move(security)),
      quotas_(security_.quotas, sessions) {}

grpc::ServerBidiReactor<pb::IngestRequest, pb::IngestResponse>* TttServiceImpl::Ingest(Ctx* ctx) {
  return internal::NewIngestReactor(this, ctx);
}

grpc::ServerWriteReactor<pb::GenerateResponse>* TttServiceImpl::Generate(
    Ctx* ctx, const pb::GenerateRequest* req) {
  return internal::NewGenerateReactor(this, ctx, req);
}

grpc::ServerWriteReactor<pb::ExportSessionResponse>* TttServiceImpl::ExportSession(
    Ctx* ctx, const pb::ExportSessionRequest* req) {
  return internal::NewExportReactor(this, ctx, req);
}

grpc::ServerReadReactor<pb::ImportSessionRequest>* TttServiceImpl::ImportSession(
    Ctx* ctx, pb::Session* resp) {
  return internal::NewImportReactor(this, ctx, resp);
}

}  // namespace ttt::server
