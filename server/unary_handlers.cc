// The unary RPCs of TttService: each converts its request at the edge, calls the session
// manager, and finishes through RunUnary (metrics, one ToGrpcStatus, no exception escapes).
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>

#include "server/internal/convert.h"
#include "server/internal/reactors.h"
#include "server/service.h"

namespace ttt::server {

namespace pb = tttserve::v1;
using internal::Finisher;
using internal::FromProto;
using internal::RunUnary;
using internal::ToProto;

namespace {
// The engine callback of the RPCs that answer with a Session; a new session's quota
// reservation (may be null) ends when it exists.
std::function<void(absl::StatusOr<session::SessionInfo>)> SessionReply(
    pb::Session* resp, Finisher finish,
    std::shared_ptr<internal::QuotaGate::SessionReservation> reservation = nullptr) {
  return [resp, finish, reservation](absl::StatusOr<session::SessionInfo> info) {
    if (reservation) reservation->Release();
    if (info.ok()) ToProto(*info, resp);
    finish(info.status());
  };
}

std::optional<session::SessionOptions> OptionsOf(bool has, const pb::SessionOptions& options) {
  if (!has) return std::nullopt;
  return FromProto(options);
}
}  // namespace

grpc::ServerUnaryReactor* TttServiceImpl::GetServerInfo(Ctx* ctx,
                                                        const pb::GetServerInfoRequest* req,
                                                        pb::ServerInfo* resp) {
  return RunUnary(this, ctx, "GetServerInfo", [&](const std::string& tenant, Finisher finish) {
    const auto& model = sessions_->model();
    const auto& cfg = model.config();
    resp->set_version(version_);
    resp->set_model_fingerprint(model.fingerprint());
    resp->set_model_type(cfg.model_type);
    resp->set_vocab_size(cfg.vocab_size);
    resp->set_ttt_chunk(cfg.ttt_chunk);
    for (int64_t l : model.active_ttt_layers()) resp->add_ttt_layers(l);
    resp->set_has_tokenizer(tokenizer_ != nullptr);
    resp->set_max_batch_tokens(max_batch_tokens_);
    resp->set_max_tokens_per_message(limits_.max_tokens_per_message);
    resp->set_max_text_bytes_per_message(limits_.max_text_bytes_per_message);
    resp->set_max_generate_tokens(sessions_->options().max_generate_tokens);
    resp->set_sliding_window(model.attention_window().value_or(0));
    resp->set_eos_token_id(cfg.eos_token_id);
    if (tokenizer_ != nullptr) {
      pb::TokenizerInfo* info = resp->mutable_tokenizer_info();
      info->set_unicode_version(tokenizer::UnicodeVersion());
      info->set_bos_token_id(tokenizer_->bos_id().value_or(-1));
      info->set_adds_bos(tokenizer_->adds_bos());
    }
    *resp->mutable_security() = security_.info;
    auto caller = internal::CallerOf(*security_.authorizer, ctx, "GetServerInfo");
    const bool admin = caller.ok() && caller->scopes.Has(auth::Scope::kAdmin);
    internal::AddTenantUsage(quotas_, tenant, admin, resp);
    finish(absl::OkStatus());
  });
}

grpc::ServerUnaryReactor* TttServiceImpl::CreateSession(Ctx* ctx,
                                                        const pb::CreateSessionRequest* req,
                                                        pb::Session* resp) {
  return RunUnary(this, ctx, "CreateSession", [&](const std::string& tenant, Finisher finish) {
    absl::Status routed = internal::CheckSessionHeader(ctx, {req->session_id()});
    if (!routed.ok()) return finish(routed);
    auto reservation = quotas_.ReserveSession(tenant);
    if (!reservation.ok()) return finish(reservation.status());
    auto info = sessions_->CreateSession(tenant, FromProto(req->options()), req->session_id());
    if (info.ok()) ToProto(*info, resp);
    finish(info.status());
  });
}

grpc::ServerUnaryReactor* TttServiceImpl::GetSession(Ctx* ctx, const pb::GetSessionRequest* req,
                                                     pb::Session* resp) {
  return RunUnary(this, ctx, "GetSession", [&](const std::string& tenant, Finisher finish) {
    absl::Status routed = internal::CheckSessionHeader(ctx, {req->session_id()});
    if (!routed.ok()) return finish(routed);
    auto info = sessions_->GetSession(tenant, req->session_id());
    if (info.ok()) ToProto(*info, resp);
    finish(info.status());
  });
}

grpc::ServerUnaryReactor* TttServiceImpl::ListSessions(Ctx* ctx, const pb::ListSessionsRequest* req,
                                                       pb::ListSessionsResponse* resp) {
  return RunUnary(this, ctx, "ListSessions", [&](const std::string& tenant, Finisher finish) {
    std::map<std::string, std::string> selector(req->label_selector().begin(),
                                                req->label_selector().end());
    for (const auto& info : sessions_->ListSessions(tenant, selector)) {
      ToProto(info, resp->add_sessions());
    }
    finish(absl::OkStatus());
  });
}

grpc::ServerUnaryReactor* TttServiceImpl::DeleteSession(Ctx* ctx,
                                                        const pb::DeleteSessionRequest* req,
                                                        pb::DeleteSessionResponse*) {
  return RunUnary(this, ctx, "DeleteSession", [&](const std::string& tenant, Finisher finish) {
    absl::Status routed = internal::CheckSessionHeader(ctx, {req->session_id()});
    if (!routed.ok()) return finish(routed);
    finish(sessions_->DeleteSession(tenant, req->session_id()));
  });
}

// An empty input reaches the session manager, which owns "nothing to score".
grpc::ServerUnaryReactor* TttServiceImpl::Score(Ctx* ctx, const pb::ScoreRequest* req,
                                                pb::ScoreResponse* resp) {
  return RunUnary(this, ctx, "Score", [&](const std::string& tenant, Finisher finish) {
    absl::Status routed = internal::CheckSessionHeader(ctx, {req->session_id()});
    if (!routed.ok()) return finish(routed);
    const internal::TextEncoding encoding =
        internal::TextEncodingOf(tokenizer_, req->text_options());
    auto starts =
        internal::TextStartsContext(*sessions_, tenant, req->session_id(), req->text(), encoding);
    if (!starts.ok()) return finish(starts.status());
    auto tokens = internal::InputTokens(limits_, tokenizer_, req->text(), req->token_ids(),
                                        "the Score request", encoding, *starts);
    if (!tokens.ok()) return finish(tokens.status());
    Metrics* metrics = metrics_;
    absl::Status st =
        sessions_->Score(tenant, req->session_id(), std::move(*tokens), nullptr,
                         [resp, finish, metrics](absl::StatusOr<session::ScoreResult> r) {
                           if (!r.ok()) return finish(r.status());
                           ToProto(*r, resp);
                           metrics->AddTokensScored(static_cast<int64_t>(r->tokens.size()));
                           finish(absl::OkStatus());
                         });
    if (!st.ok()) finish(st);
  });
}

grpc::ServerUnaryReactor* TttServiceImpl::Checkpoint(Ctx* ctx, const pb::CheckpointRequest* req,
                                                     pb::CheckpointInfo* resp) {
  return RunUnary(this, ctx, "Checkpoint", [&](const std::string& tenant, Finisher finish) {
    absl::Status routed = internal::CheckSessionHeader(ctx, {req->session_id()});
    if (!routed.ok()) return finish(routed);
    absl::Status fits = quotas_.CheckCheckpoint(tenant, req->checkpoint_id());
    if (!fits.ok()) return finish(fits);
    const bool existed = quotas_.CheckpointExists(tenant, req->checkpoint_id());
    internal::QuotaGate* quotas = &quotas_;
    absl::Status st = sessions_->Checkpoint(
        tenant, req->session_id(), req->checkpoint_id(),
        [resp, finish, quotas, tenant, existed](absl::StatusOr<session::CheckpointInfo> info) {
          absl::Status st = info.status();
          if (st.ok()) st = quotas->AfterCheckpoint(tenant, *info, existed);
          if (st.ok()) ToProto(*info, resp);
          finish(st);
        });
    if (!st.ok()) finish(st);
  });
}

grpc::ServerUnaryReactor* TttServiceImpl::Restore(Ctx* ctx, const pb::RestoreRequest* req,
                                                  pb::Session* resp) {
  return RunUnary(this, ctx, "Restore", [&](const std::string& tenant, Finisher finish) {
    if (req->checkpoint_id().empty()) {
      return finish(absl::InvalidArgumentError("checkpoint_id is required"));
    }
    if (!req->session_id().empty() && !req->new_session_id().empty()) {
      return finish(absl::InvalidArgumentError(
          "Restore sets both session_id (restore over that session) and new_session_id (restore "
          "into a new session of that id): set one of them"));
    }
    absl::Status routed =
        internal::CheckSessionHeader(ctx, {req->session_id(), req->new_session_id()});
    if (!routed.ok()) return finish(routed);
    std::shared_ptr<internal::QuotaGate::SessionReservation> reservation;
    if (req->session_id().empty()) {  // into a new session
      auto reserved = quotas_.ReserveSession(tenant);
      if (!reserved.ok()) return finish(reserved.status());
      reservation = std::move(*reserved);
    }
    absl::Status st =
        sessions_->Restore(tenant, req->checkpoint_id(), req->session_id(),
                           OptionsOf(req->has_options(), req->options()),
                           SessionReply(resp, finish, reservation), req->new_session_id());
    if (!st.ok()) finish(st);
  });
}

grpc::ServerUnaryReactor* TttServiceImpl::Reset(Ctx* ctx, const pb::ResetRequest* req,
                                                pb::Session* resp) {
  return RunUnary(this, ctx, "Reset", [&](const std::string& tenant, Finisher finish) {
    absl::Status routed = internal::CheckSessionHeader(ctx, {req->session_id()});
    if (!routed.ok()) return finish(routed);
    absl::Status st = sessions_->Reset(tenant, req->session_id(), SessionReply(resp, finish));
    if (!st.ok()) finish(st);
  });
}

grpc::ServerUnaryReactor* TttServiceImpl::Fork(Ctx* ctx, const pb::ForkRequest* req,
                                               pb::Session* resp) {
  return RunUnary(this, ctx, "Fork", [&](const std::string& tenant, Finisher finish) {
    absl::Status routed =
        internal::CheckSessionHeader(ctx, {req->session_id(), req->new_session_id()});
    if (!routed.ok()) return finish(routed);
    auto reservation = quotas_.ReserveSession(tenant);
    if (!reservation.ok()) return finish(reservation.status());
    absl::Status st =
        sessions_->Fork(tenant, req->session_id(), OptionsOf(req->has_options(), req->options()),
                        SessionReply(resp, finish, std::move(*reservation)), req->new_session_id());
    if (!st.ok()) finish(st);
  });
}

grpc::ServerUnaryReactor* TttServiceImpl::ListCheckpoints(Ctx* ctx,
                                                          const pb::ListCheckpointsRequest*,
                                                          pb::ListCheckpointsResponse* resp) {
  return RunUnary(this, ctx, "ListCheckpoints", [&](const std::string& tenant, Finisher finish) {
    auto list = sessions_->ListCheckpoints(tenant);
    if (list.ok()) {
      for (const auto& c : *list) ToProto(c, resp->add_checkpoints());
    }
    finish(list.status());
  });
}

grpc::ServerUnaryReactor* TttServiceImpl::DeleteCheckpoint(Ctx* ctx,
                                                           const pb::DeleteCheckpointRequest* req,
                                                           pb::DeleteCheckpointResponse*) {
  return RunUnary(this, ctx, "DeleteCheckpoint", [&](const std::string& tenant, Finisher finish) {
    finish(sessions_->DeleteCheckpoint(tenant, req->checkpoint_id()));
  });
}

// The tokenizer as the other RPCs use it: text checked and encoded as InputTokens does (a
// standalone text starts a context, so add_bos applies); ids checked against the model's
// vocabulary and decoded as Generate streams them.
grpc::ServerUnaryReactor* TttServiceImpl::Tokenize(Ctx* ctx, const pb::TokenizeRequest* req,
                                                   pb::TokenizeResponse* resp) {
  return RunUnary(this, ctx, "Tokenize", [&](const std::string&, Finisher finish) {
    if (tokenizer_ == nullptr) {
      return finish(absl::FailedPreconditionError(
          "Tokenize: the model has no tokenizer (its folder has no tokenizer.json or "
          "tokenizer.model)"));
    }
    auto ids = internal::InputTokens(limits_, tokenizer_, req->text(), {}, "the Tokenize request",
                                     internal::TextEncodingOf(tokenizer_, req->text_options()),
                                     /*starts_context=*/true);
    if (!ids.ok()) return finish(ids.status());
    resp->mutable_token_ids()->Add(ids->begin(), ids->end());
    finish(absl::OkStatus());
  });
}

grpc::ServerUnaryReactor* TttServiceImpl::Detokenize(Ctx* ctx, const pb::DetokenizeRequest* req,
                                                     pb::DetokenizeResponse* resp) {
  return RunUnary(this, ctx, "Detokenize", [&](const std::string&, Finisher finish) {
    if (tokenizer_ == nullptr) {
      return finish(absl::FailedPreconditionError(
          "Detokenize: the model has no tokenizer (its folder has no tokenizer.json or "
          "tokenizer.model)"));
    }
    auto ids = internal::InputTokens(limits_, tokenizer_, "", req->token_ids(),
                                     "the Detokenize request", {}, false);
    if (!ids.ok()) return finish(ids.status());
    absl::Status in_vocab = sessions_->ValidateTokens(*ids);
    if (!in_vocab.ok()) return finish(in_vocab);
    tokenizer::StreamDecoder decoder(*tokenizer_);
    std::string text;
    for (int32_t id : *ids) text += decoder.Push(id);
    text += decoder.Flush();
    resp->set_text(std::move(text));
    finish(absl::OkStatus());
  });
}

}  // namespace ttt::server
