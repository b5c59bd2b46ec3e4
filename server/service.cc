// TttService on the callback API (see service.h). Reactor rules followed here: one read and one
// write in flight at a time; state shared by reactions and engine callbacks is guarded by the
// reactor's mutex; Finish is never called with a write outstanding; a reactor deletes itself
// only when gRPC is done with it (OnDone) and no engine callback is still due.
#include "server/service.h"

#include <chrono>
#include <cmath>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/status.h"
#include "tokenizer/tokenizer.h"

namespace ttt::server {

namespace pb = tttserve::v1;
using Clock = std::chrono::steady_clock;

namespace {

constexpr char kTenantHeader[] = "x-tenant-id";
constexpr char kDefaultTenant[] = "default";

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

absl::StatusOr<std::string> TenantOf(const grpc::CallbackServerContext* ctx) {
  const auto& md = ctx->client_metadata();
  auto it = md.find(kTenantHeader);
  if (it == md.end()) return std::string(kDefaultTenant);
  std::string tenant(it->second.data(), it->second.size());
  absl::Status valid = session::SessionManager::ValidateTenant(tenant);
  if (!valid.ok()) return valid;
  return tenant;
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

session::SessionOptions FromProto(const pb::SessionOptions& o) {
  session::SessionOptions out;
  out.reset_at_document_end = o.reset_at_document_end();
  out.idle_ttl_seconds = o.idle_ttl_seconds();
  for (const auto& [k, v] : o.labels()) out.labels[k] = v;
  return out;
}

// Text to token ids with the model's tokenizer: FAILED_PRECONDITION without one,
// INVALID_ARGUMENT for malformed UTF-8 (the message names the byte offset).
absl::StatusOr<std::vector<int32_t>> Tokenize(const tokenizer::Tokenizer* tok,
                                              const std::string& text, const std::string& where) {
  if (tok == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat(where, ": the model has no tokenizer; send token_ids instead of text"));
  }
  absl::Status utf8 = tokenizer::ValidateUtf8(text);
  if (!utf8.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": text is not valid UTF-8 (",
                                                   utf8.message(), ")"));
  }
  auto ids = tok->Encode(text);
  if (!ids.ok()) {
    return absl::Status(ids.status().code(), absl::StrCat(where, ": ", ids.status().message()));
  }
  return ids;
}

// Text or token ids of a request (exactly one kind, or none when `allow_empty`).
absl::StatusOr<std::vector<int32_t>> InputTokens(const TttServiceImpl& svc, const std::string& text,
                                                 const google::protobuf::RepeatedField<int32_t>& ids,
                                                 const std::string& what) {
  if (!text.empty() && !ids.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " carries both text and token ids; send one of them"));
  }
  if (static_cast<int64_t>(ids.size()) > svc.limits().max_tokens_per_message) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " carries ", ids.size(), " token ids; the limit is ",
        svc.limits().max_tokens_per_message, " per message"));
  }
  if (static_cast<int64_t>(text.size()) > svc.limits().max_text_bytes_per_message) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " carries ", text.size(), " bytes of text; the limit is ",
        svc.limits().max_text_bytes_per_message, " bytes per message"));
  }
  if (!text.empty()) return Tokenize(svc.tokenizer(), text, what);
  return std::vector<int32_t>(ids.begin(), ids.end());
}

// ---------------------------------------------------------------------------------------------
// The write side shared by the streaming reactors: responses written one at a time from a queue,
// and the first failure remembered for Finish. CRTP, so it can call the reactor's StartWrite.
// REQUIRES: every method runs with the reactor's mutex held.

template <typename Reactor, typename Response>
class ResponseQueue {
 protected:
  // Remembers the first failure; the reactor finishes with it once what was accepted is written.
  void FailLocked(absl::Status st) {
    if (failed_) return;
    failed_ = true;
    fail_ = std::move(st);
  }

  void MaybeWriteLocked() {
    if (writing_ || out_.empty() || finish_called_) return;
    writing_ = true;
    static_cast<Reactor*>(this)->StartWrite(&out_.front());
  }

  // OnWriteDone's bookkeeping: the front was written, or the client went away (then the rest of
  // the work is cancelled).
  void WriteDoneLocked(bool ok, engine::CancelToken& cancel) {
    writing_ = false;
    if (!out_.empty()) out_.pop_front();
    if (!ok) {
      cancel.Cancel();
      out_.clear();
      FailLocked(absl::CancelledError("the client went away"));
    }
    MaybeWriteLocked();
  }

  // OnCancel's bookkeeping: drop what is not being written, cancel the work, remember why.
  void CancelLocked(engine::CancelToken& cancel, const char* why) {
    cancel.Cancel();
    while (out_.size() > (writing_ ? 1u : 0u)) out_.pop_back();
    FailLocked(absl::CancelledError(why));
  }

  std::deque<Response> out_;  // out_.front() is being written while writing_
  bool writing_ = false;
  bool failed_ = false;
  absl::Status fail_;
  bool finish_called_ = false;
};

// ---------------------------------------------------------------------------------------------
// Ingest: bidi stream, one response per request message once its tokens are applied.

class IngestReactor final
    : public grpc::ServerBidiReactor<pb::IngestRequest, pb::IngestResponse>,
      public ResponseQueue<IngestReactor, pb::IngestResponse> {
 public:
  IngestReactor(TttServiceImpl* svc, grpc::CallbackServerContext* ctx)
      : svc_(svc), start_(Clock::now()), cancel_(std::make_shared<engine::CancelToken>()) {
    std::lock_guard<std::mutex> lock(mu_);
    auto tenant = TenantOf(ctx);
    if (!tenant.ok()) {
      FailLocked(tenant.status());
      MaybeFinishLocked();
      return;
    }
    tenant_ = *tenant;
    StartRead(&req_);
  }

  void OnReadDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!ok) {
      reads_done_ = true;
      if (!failed_ && !text_buf_.empty() && writer_) {
        // End of stream flushes buffered text.
        auto tokens = Tokenize(svc_->tokenizer(), text_buf_, "buffered text");
        text_buf_.clear();
        absl::Status st = tokens.ok() ? Submit(msg_index_ - 1, std::move(*tokens), false)
                                      : tokens.status();
        if (!st.ok()) FailLocked(st);
      }
      MaybeFinishLocked();
      return;
    }
    if (failed_ || finish_called_) return;
    absl::Status st;
    try {
      st = HandleLocked(req_);
    } catch (const std::exception& e) {
      st = absl::InternalError(absl::StrCat("ingest failed: ", e.what()));
    }
    if (!st.ok()) {
      FailLocked(st);
      MaybeFinishLocked();
      return;
    }
    if (outstanding_ < svc_->limits().max_inflight_messages) {
      StartRead(&req_);
    } else {
      read_paused_ = true;  // backpressure: resume when the engine catches up
    }
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mu_);
    WriteDoneLocked(ok, *cancel_);
    MaybeFinishLocked();
  }

  void OnCancel() override {
    std::lock_guard<std::mutex> lock(mu_);
    CancelLocked(*cancel_, "the client cancelled the stream");
    MaybeFinishLocked();
  }

  void OnDone() override {
    bool del;
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
      del = outstanding_ == 0;
    }
    if (del) delete this;
  }

 private:
  absl::Status HandleLocked(const pb::IngestRequest& req) {
    const int64_t index = msg_index_++;
    const std::string where = absl::StrCat("Ingest message ", index);
    if (!writer_) {
      if (req.session_id().empty()) {
        return absl::InvalidArgumentError(
            "the first Ingest message must name the session (session_id)");
      }
      auto writer = svc_->sessions()->OpenWriter(tenant_, req.session_id(), "an Ingest");
      if (!writer.ok()) return writer.status();
      writer_ = std::move(*writer);
    } else if (!req.session_id().empty() && req.session_id() != writer_->session_id()) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, " names session ", req.session_id(), " but this stream writes ",
          writer_->session_id(), "; open one stream per session"));
    }
    if (req.text().empty() && req.token_ids().empty() && !req.end_of_document() &&
        !req.flush()) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, " is empty: set text, token_ids, flush or end_of_document"));
    }
    if (!req.text().empty() && !req.token_ids().empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, " carries both text and token_ids; send one kind per message"));
    }
    const auto& limits = svc_->limits();
    if (static_cast<int64_t>(req.token_ids_size()) > limits.max_tokens_per_message) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, " carries ", req.token_ids_size(), " token ids; the limit is ",
          limits.max_tokens_per_message, " per message: split them across messages"));
    }
    if (static_cast<int64_t>(req.text().size()) > limits.max_text_bytes_per_message) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, " carries ", req.text().size(), " bytes of text; the limit is ",
          limits.max_text_bytes_per_message, " bytes per message: split it across messages"));
    }
    if (req.report_loss()) report_loss_ = true;
    if (!req.text().empty()) {
      if (svc_->tokenizer() == nullptr) {
        return absl::FailedPreconditionError(
            absl::StrCat(where, ": the model has no tokenizer; send token_ids instead of text"));
      }
      if (static_cast<int64_t>(text_buf_.size() + req.text().size()) >
          limits.max_buffered_text_bytes) {
        return absl::ResourceExhaustedError(absl::StrCat(
            where, ": more than ", limits.max_buffered_text_bytes,
            " bytes of text buffered; send flush or end_of_document at least that often"));
      }
      text_buf_ += req.text();
    }
    std::vector<int32_t> tokens;
    if (!text_buf_.empty() &&
        (!req.token_ids().empty() || req.flush() || req.end_of_document())) {
      auto text_tokens = Tokenize(svc_->tokenizer(), text_buf_, where);
      if (!text_tokens.ok()) return text_tokens.status();
      tokens = std::move(*text_tokens);
      text_buf_.clear();
    }
    tokens.insert(tokens.end(), req.token_ids().begin(), req.token_ids().end());
    return Submit(index, std::move(tokens), req.end_of_document());
  }

  // REQUIRES: mu_ held.
  absl::Status Submit(int64_t index, std::vector<int32_t> tokens, bool end_of_document) {
    const int64_t buffered = static_cast<int64_t>(text_buf_.size());
    const auto submitted = Clock::now();
    ++outstanding_;
    absl::Status st = writer_->Ingest(
        std::move(tokens), end_of_document, cancel_,
        [this, index, buffered, submitted](absl::StatusOr<session::IngestProgress> r) {
          OnApplied(index, buffered, submitted, std::move(r));
        });
    if (!st.ok()) --outstanding_;
    return st;
  }

  // Engine thread.
  void OnApplied(int64_t index, int64_t buffered, Clock::time_point submitted,
                 absl::StatusOr<session::IngestProgress> r) {
    bool del;
    {
      std::lock_guard<std::mutex> lock(mu_);
      --outstanding_;
      if (r.ok()) {
        stream_tokens_ += r->tokens;
        nll_sum_ += r->nll_sum;
        nll_count_ += r->nll_count;
        svc_->metrics()->AddTokensIngested(r->tokens);
        svc_->metrics()->ObserveIngestChunk(SecondsSince(submitted));
        if (!finish_called_ && !failed_) {
          pb::IngestResponse resp;
          resp.set_message_index(index);
          resp.set_stream_tokens(stream_tokens_);
          resp.set_buffered_text_bytes(buffered);
          ToProto(r->counters, resp.mutable_counters());
          if (report_loss_ && nll_count_ > 0) {
            const double loss = nll_sum_ / static_cast<double>(nll_count_);
            resp.set_loss(loss);
            resp.set_perplexity(std::exp(loss));
            resp.set_loss_tokens(nll_count_);
          }
          out_.push_back(std::move(resp));
          MaybeWriteLocked();
        }
      } else {
        FailLocked(r.status());
      }
      if (read_paused_ && !failed_ && !reads_done_ && !finish_called_ &&
          outstanding_ < svc_->limits().max_inflight_messages) {
        read_paused_ = false;
        StartRead(&req_);
      }
      MaybeFinishLocked();
      del = done_ && outstanding_ == 0;
    }
    if (del) delete this;
  }

  void MaybeFinishLocked() {
    if (finish_called_ || writing_) return;
    // Acknowledge everything already accepted before reporting an error (nothing applied is
    // lost, and the client learns exactly how far it got).
    const bool drained = outstanding_ == 0 && out_.empty();
    grpc::Status status;
    if (failed_) {
      if (!drained) return;
      status = ToGrpcStatus(fail_);
    } else {
      if (!reads_done_ || !drained) return;
      status = grpc::Status::OK;
    }
    finish_called_ = true;
    writer_.reset();  // release the session before the client hears the end of the stream
    svc_->metrics()->RecordRequest("Ingest", status.error_code(), SecondsSince(start_));
    Finish(status);
  }

  TttServiceImpl* const svc_;
  const Clock::time_point start_;
  const std::shared_ptr<engine::CancelToken> cancel_;
  std::string tenant_;

  std::mutex mu_;
  pb::IngestRequest req_;
  std::unique_ptr<session::Writer> writer_;
  std::string text_buf_;                // text awaiting flush / end_of_document / stream end
  int64_t msg_index_ = 0;
  int64_t outstanding_ = 0;  // submissions whose engine callback is due
  int64_t stream_tokens_ = 0;
  double nll_sum_ = 0.0;
  int64_t nll_count_ = 0;
  bool report_loss_ = false;
  bool reads_done_ = false;
  bool read_paused_ = false;
  bool done_ = false;
};

// ---------------------------------------------------------------------------------------------
// Generate: server stream, one response per token, then a final one.

class GenerateReactor final : public grpc::ServerWriteReactor<pb::GenerateResponse>,
                              public ResponseQueue<GenerateReactor, pb::GenerateResponse> {
 public:
  GenerateReactor(TttServiceImpl* svc, grpc::CallbackServerContext* ctx,
                  const pb::GenerateRequest* req)
      : svc_(svc), start_(Clock::now()), cancel_(std::make_shared<engine::CancelToken>()) {
    std::lock_guard<std::mutex> lock(mu_);
    absl::Status st;
    try {
      st = StartLocked(ctx, *req);
    } catch (const std::exception& e) {
      st = absl::InternalError(absl::StrCat("generate failed: ", e.what()));
    }
    if (!st.ok()) {
      engine_running_ = false;
      FailLocked(st);
      MaybeFinishLocked();
    }
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mu_);
    WriteDoneLocked(ok, *cancel_);
    MaybeFinishLocked();
  }

  void OnCancel() override {
    std::lock_guard<std::mutex> lock(mu_);
    CancelLocked(*cancel_, "the client cancelled the call");
    MaybeFinishLocked();
  }

  void OnDone() override {
    bool del;
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
      del = !engine_running_;
    }
    if (del) delete this;
  }

 private:
  absl::Status StartLocked(grpc::CallbackServerContext* ctx, const pb::GenerateRequest& req) {
    auto tenant = TenantOf(ctx);
    if (!tenant.ok()) return tenant.status();
    session::GenerateParams params;
    auto prompt = InputTokens(*svc_, req.prompt_text(), req.prompt_token_ids(), "the prompt");
    if (!prompt.ok()) return prompt.status();
    params.prompt = std::move(*prompt);
    if (req.max_tokens() < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("max_tokens must be positive (0 = 64), got ", req.max_tokens()));
    }
    params.max_tokens = req.max_tokens() == 0 ? 64 : req.max_tokens();
    params.sampling.temperature = req.has_temperature() ? req.temperature() : 1.0;
    params.sampling.top_p = req.has_top_p() ? req.top_p() : 1.0;
    if (req.top_k() < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("top_k must be >= 0 (0 = all tokens), got ", req.top_k()));
    }
    params.sampling.top_k = req.top_k();
    params.sampling.seed = req.seed();
    if (!(params.sampling.temperature >= 0.0 && params.sampling.temperature <= 100.0)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "temperature must be in [0, 100] (0 = greedy), got ", params.sampling.temperature));
    }
    if (!(params.sampling.top_p > 0.0 && params.sampling.top_p <= 1.0)) {
      return absl::InvalidArgumentError(
          absl::StrCat("top_p must be in (0, 1], got ", params.sampling.top_p));
    }
    params.stop_at_eos = !req.ignore_eos();
    params.commit = req.commit();
    if (req.stop_size() > 16) {
      return absl::InvalidArgumentError(
          absl::StrCat("at most 16 stop strings, got ", req.stop_size()));
    }
    for (const auto& s : req.stop()) {
      if (s.empty() || s.size() > 256) {
        return absl::InvalidArgumentError("stop strings must be 1..256 bytes");
      }
      max_stop_ = std::max(max_stop_, s.size());
      stops_.push_back(s);
    }
    if (!stops_.empty() && svc_->tokenizer() == nullptr) {
      return absl::FailedPreconditionError(
          "stop strings need text: the model has no tokenizer (stop on token ids client-side)");
    }
    if (svc_->tokenizer() != nullptr) {
      decoder_ = std::make_unique<tokenizer::StreamDecoder>(*svc_->tokenizer());
    }
    last_token_ = Clock::now();
    engine_running_ = true;
    return svc_->sessions()->Generate(
        *tenant, req.session_id(), std::move(params), cancel_,
        [this](int32_t token, float logprob) { return OnToken(token, logprob); },
        [this](absl::Status st, session::FinishReason reason, int64_t n) {
          OnEngineDone(std::move(st), reason, n);
        });
  }

  // Engine thread. Returns false to stop (a stop string matched).
  bool OnToken(int32_t token, float logprob) {
    std::lock_guard<std::mutex> lock(mu_);
    const auto now = Clock::now();
    if (generated_ == 0) {
      svc_->metrics()->ObserveTimeToFirstToken(std::chrono::duration<double>(now - start_).count());
    } else {
      svc_->metrics()->ObserveInterToken(std::chrono::duration<double>(now - last_token_).count());
    }
    last_token_ = now;
    ++generated_;
    pb::GenerateResponse resp;
    resp.set_token_id(token);
    resp.set_logprob(logprob);
    if (decoder_) {
      text_ += decoder_->Push(token);
      resp.set_text(TakeText(/*final=*/false));
    }
    if (!failed_) {
      out_.push_back(std::move(resp));
      MaybeWriteLocked();
    }
    return !stop_hit_;
  }

  // The text that may be sent now: up to a matched stop string, and otherwise holding back
  // what could still become the start of one. REQUIRES: mu_ held.
  std::string TakeText(bool final) {
    if (stop_hit_) return "";
    size_t limit = text_.size();
    for (const auto& s : stops_) {
      const size_t from = emitted_ >= s.size() ? emitted_ - s.size() + 1 : 0;
      const size_t p = text_.find(s, from);
      if (p != std::string::npos && p < limit) {
        limit = p;
        stop_hit_ = true;
      }
    }
    if (!stop_hit_ && !final && max_stop_ > 0) {
      limit = text_.size() >= max_stop_ - 1 ? text_.size() - (max_stop_ - 1) : 0;
      while (limit > emitted_ && limit < text_.size() &&
             (static_cast<unsigned char>(text_[limit]) & 0xC0) == 0x80) {
        --limit;
      }
    }
    if (limit <= emitted_) return "";
    std::string out = text_.substr(emitted_, limit - emitted_);
    emitted_ = limit;
    return out;
  }

  // Engine thread.
  void OnEngineDone(absl::Status st, session::FinishReason reason, int64_t n) {
    bool del;
    {
      std::lock_guard<std::mutex> lock(mu_);
      engine_running_ = false;
      svc_->metrics()->AddTokensGenerated(n);
      if (st.ok()) {
        pb::GenerateResponse resp;
        if (decoder_ && !stop_hit_) {
          text_ += decoder_->Flush();
          resp.set_text(TakeText(/*final=*/true));
        }
        if (stop_hit_) reason = session::FinishReason::kStop;
        resp.set_finish_reason(reason == session::FinishReason::kLength ? pb::FINISH_REASON_LENGTH
                               : reason == session::FinishReason::kStop ? pb::FINISH_REASON_STOP
                                                                        : pb::FINISH_REASON_EOS);
        resp.set_tokens_generated(static_cast<int32_t>(n));
        if (!failed_) out_.push_back(std::move(resp));
        MaybeWriteLocked();
      } else {
        FailLocked(st);
      }
      MaybeFinishLocked();
      del = done_;
    }
    if (del) delete this;
  }

  void MaybeFinishLocked() {
    if (finish_called_ || writing_ || engine_running_) return;
    if (!failed_ && !out_.empty()) return;
    finish_called_ = true;
    const grpc::Status status = failed_ ? ToGrpcStatus(fail_) : grpc::Status::OK;
    svc_->metrics()->RecordRequest("Generate", status.error_code(), SecondsSince(start_));
    Finish(status);
  }

  TttServiceImpl* const svc_;
  const Clock::time_point start_;
  const std::shared_ptr<engine::CancelToken> cancel_;

  std::mutex mu_;
  std::unique_ptr<tokenizer::StreamDecoder> decoder_;
  std::vector<std::string> stops_;
  size_t max_stop_ = 0;
  std::string text_;   // decoded output so far
  size_t emitted_ = 0;  // bytes of text_ already sent
  bool stop_hit_ = false;
  int64_t generated_ = 0;
  Clock::time_point last_token_;
  bool engine_running_ = false;
  bool done_ = false;
};

// ---------------------------------------------------------------------------------------------
// Export: server stream of checkpoint-format bytes.

class ExportReactor final : public grpc::ServerWriteReactor<pb::ExportSessionResponse> {
 public:
  ExportReactor(TttServiceImpl* svc, grpc::CallbackServerContext* ctx,
                const pb::ExportSessionRequest* req)
      : svc_(svc), start_(Clock::now()) {
    std::lock_guard<std::mutex> lock(mu_);
    auto tenant = TenantOf(ctx);
    if (!tenant.ok()) {
      FinishLocked(tenant.status());
      return;
    }
    if (req->session_id().empty() == req->checkpoint_id().empty()) {
      FinishLocked(absl::InvalidArgumentError(
          "ExportSession needs exactly one of session_id and checkpoint_id"));
      return;
    }
    if (!req->checkpoint_id().empty()) {
      auto bytes = svc_->sessions()->ExportCheckpoint(*tenant, req->checkpoint_id());
      if (!bytes.ok()) {
        FinishLocked(bytes.status());
        return;
      }
      data_ = std::move(*bytes);
      WriteNextLocked();
      return;
    }
    pending_ = true;
    absl::Status st = svc_->sessions()->ExportSession(
        *tenant, req->session_id(), [this](absl::StatusOr<std::string> bytes) {
          bool del;
          {
            std::lock_guard<std::mutex> lock(mu_);
            pending_ = false;
            if (!finish_called_) {
              if (bytes.ok()) {
                data_ = std::move(*bytes);
                WriteNextLocked();
              } else {
                FinishLocked(bytes.status());
              }
            }
            del = done_;
          }
          if (del) delete this;
        });
    if (!st.ok()) {
      pending_ = false;
      FinishLocked(st);
    }
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!ok) return FinishLocked(absl::CancelledError("the client went away"));
    WriteNextLocked();
  }

  void OnCancel() override {}

  void OnDone() override {
    bool del;
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
      del = !pending_;
    }
    if (del) delete this;
  }

 private:
  void WriteNextLocked() {
    if (finish_called_) return;
    if (offset_ >= data_.size()) return FinishLocked(absl::OkStatus());
    const size_t n = std::min<size_t>(svc_->limits().export_piece_bytes, data_.size() - offset_);
    resp_.Clear();
    if (offset_ == 0) resp_.set_total_size(static_cast<int64_t>(data_.size()));
    resp_.set_data(data_.substr(offset_, n));
    offset_ += n;
    StartWrite(&resp_);
  }
  void FinishLocked(absl::Status st) {
    if (finish_called_) return;
    finish_called_ = true;
    const grpc::Status status = ToGrpcStatus(st);
    svc_->metrics()->RecordRequest("ExportSession", status.error_code(), SecondsSince(start_));
    Finish(status);
  }

  TttServiceImpl* const svc_;
  const Clock::time_point start_;
  std::mutex mu_;
  std::string data_;
  size_t offset_ = 0;
  pb::ExportSessionResponse resp_;
  bool pending_ = false;
  bool finish_called_ = false;
  bool done_ = false;
};

// ---------------------------------------------------------------------------------------------
// Import: client stream of checkpoint-format bytes.

class ImportReactor final : public grpc::ServerReadReactor<pb::ImportSessionRequest> {
 public:
  ImportReactor(TttServiceImpl* svc, grpc::CallbackServerContext* ctx, pb::Session* resp)
      : svc_(svc), start_(Clock::now()), resp_(resp) {
    auto tenant = TenantOf(ctx);
    if (!tenant.ok()) {
      FinishWith(tenant.status());
      return;
    }
    tenant_ = *tenant;
    StartRead(&req_);
  }

  void OnReadDone(bool ok) override {
    if (ok) {
      if (first_ && req_.has_options()) options_ = FromProto(req_.options());
      first_ = false;
      if (static_cast<int64_t>(buf_.size() + req_.data().size()) >
          svc_->limits().max_import_bytes) {
        return FinishWith(absl::ResourceExhaustedError(absl::StrCat(
            "import exceeds the limit of ", svc_->limits().max_import_bytes, " bytes")));
      }
      buf_ += req_.data();
      StartRead(&req_);
      return;
    }
    absl::StatusOr<session::SessionInfo> info;
    try {
      info = svc_->sessions()->ImportSession(tenant_, std::move(buf_), options_);
    } catch (const std::exception& e) {
      info = absl::InternalError(absl::StrCat("import failed: ", e.what()));
    }
    if (info.ok()) ToProto(*info, resp_);
    FinishWith(info.status());
  }

  void OnDone() override { delete this; }

 private:
  void FinishWith(absl::Status st) {
    const grpc::Status status = ToGrpcStatus(st);
    svc_->metrics()->RecordRequest("ImportSession", status.error_code(), SecondsSince(start_));
    Finish(status);
  }

  TttServiceImpl* const svc_;
  const Clock::time_point start_;
  pb::Session* resp_;
  std::string tenant_;
  pb::ImportSessionRequest req_;
  std::string buf_;
  std::optional<session::SessionOptions> options_;
  bool first_ = true;
};

// Runs a unary handler: `body(tenant, finish)` must call finish exactly once (now or later from
// an engine callback). Records the request metrics; nothing escapes as an exception.
using Finisher = std::function<void(absl::Status)>;
template <typename Body>
grpc::ServerUnaryReactor* RunUnary(Metrics* metrics, grpc::CallbackServerContext* ctx,
                                   const char* method, Body&& body) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  const auto start = Clock::now();
  auto called = std::make_shared<std::atomic<bool>>(false);
  Finisher finish = [metrics, reactor, method, start, called](absl::Status st) {
    if (called->exchange(true)) return;
    const grpc::Status status = ToGrpcStatus(st);
    metrics->RecordRequest(method, status.error_code(), SecondsSince(start));
    reactor->Finish(status);
  };
  try {
    auto tenant = TenantOf(ctx);
    if (!tenant.ok()) {
      finish(tenant.status());
    } else {
      body(*tenant, finish);
    }
  } catch (const std::exception& e) {
    finish(absl::InternalError(absl::StrCat(method, " failed: ", e.what())));
  }
  return reactor;
}

}  // namespace

TttServiceImpl::TttServiceImpl(session::SessionManager* sessions,
                               const tokenizer::Tokenizer* tokenizer, Metrics* metrics,
                               ServiceLimits limits, std::string version,
                               int64_t max_batch_tokens)
    : sessions_(sessions), tokenizer_(tokenizer), metrics_(metrics), limits_(limits),
      version_(std::move(version)), max_batch_tokens_(max_batch_tokens) {}

grpc::ServerUnaryReactor* TttServiceImpl::GetServerInfo(Ctx* ctx,
                                                        const pb::GetServerInfoRequest* req,
                                                        pb::ServerInfo* resp) {
  return RunUnary(metrics_, ctx, "GetServerInfo", [&](const std::string&, Finisher finish) {
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
    finish(absl::OkStatus());
  });
}

grpc::ServerUnaryReactor* TttServiceImpl::CreateSession(Ctx* ctx,
                                                        const pb::CreateSessionRequest* req,
                                                        pb::Session* resp) {
  return RunUnary(metrics_, ctx, "CreateSession", [&](const std::string& tenant, Finisher finish) {
    auto info = sessions_->CreateSession(tenant, FromProto(req->options()));
    if (info.ok()) ToProto(*info, resp);
    finish(info.status());
  });
}

grpc::ServerUnaryReactor* TttServiceImpl::GetSession(Ctx* ctx, const pb::GetSessionRequest* req,
                                                     pb::Session* resp) {
  return RunUnary(metrics_, ctx, "GetSession", [&](const std::string& tenant, Finisher finish) {
    auto info = sessions_->GetSession(tenant, req->session_id());
    if (info.ok()) ToProto(*info, resp);
    finish(info.status());
  });
}

grpc::ServerUnaryReactor* TttServiceImpl::ListSessions(Ctx* ctx,
                                                       const pb::ListSessionsRequest* req,
                                                       pb::ListSessionsResponse* resp) {
  return RunUnary(metrics_, ctx, "ListSessions", [&](const std::string& tenant, Finisher finish) {
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
  return RunUnary(metrics_, ctx, "DeleteSession", [&](const std::string& tenant, Finisher finish) {
    finish(sessions_->DeleteSession(tenant, req->session_id()));
  });
}

grpc::ServerBidiReactor<pb::IngestRequest, pb::IngestResponse>* TttServiceImpl::Ingest(Ctx* ctx) {
  return new IngestReactor(this, ctx);
}

grpc::ServerWriteReactor<pb::GenerateResponse>* TttServiceImpl::Generate(
    Ctx* ctx, const pb::GenerateRequest* req) {
  return new GenerateReactor(this, ctx, req);
}

grpc::ServerUnaryReactor* TttServiceImpl::Score(Ctx* ctx, const pb::ScoreRequest* req,
                                                pb::ScoreResponse* resp) {
  return RunUnary(metrics_, ctx, "Score", [&](const std::string& tenant, Finisher finish) {
    auto tokens = InputTokens(*this, req->text(), req->token_ids(), "the Score request");
    if (!tokens.ok()) return finish(tokens.status());
    if (tokens->empty()) {
      return finish(absl::InvalidArgumentError("nothing to score: give text or token_ids"));
    }
    Metrics* metrics = metrics_;
    absl::Status st = sessions_->Score(
        tenant, req->session_id(), std::move(*tokens), nullptr,
        [resp, finish, metrics](absl::StatusOr<session::ScoreResult> r) {
          if (!r.ok()) return finish(r.status());
          double total = 0.0;
          int64_t n = 0;
          for (size_t i = 0; i < r->tokens.size(); ++i) {
            resp->add_token_ids(r->tokens[i]);
            const float lp = i < r->logprobs.size() ? r->logprobs[i] : NAN;
            resp->add_logprobs(lp);
            if (std::isfinite(lp)) {
              total += lp;
              ++n;
            }
          }
          resp->set_total_logprob(total);
          if (n > 0) {
            resp->set_mean_nll(-total / static_cast<double>(n));
            resp->set_perplexity(std::exp(-total / static_cast<double>(n)));
          }
          metrics->AddTokensScored(static_cast<int64_t>(r->tokens.size()));
          finish(absl::OkStatus());
        });
    if (!st.ok()) finish(st);
  });
}

grpc::ServerUnaryReactor* TttServiceImpl::Checkpoint(Ctx* ctx, const pb::CheckpointRequest* req,
                                                     pb::CheckpointInfo* resp) {
  return RunUnary(metrics_, ctx, "Checkpoint", [&](const std::string& tenant, Finisher finish) {
    absl::Status st = sessions_->Checkpoint(
        tenant, req->session_id(), req->checkpoint_id(),
        [resp, finish](absl::StatusOr<session::CheckpointInfo> info) {
          if (info.ok()) ToProto(*info, resp);
          finish(info.status());
        });
    if (!st.ok()) finish(st);
  });
}

namespace {
std::function<void(absl::StatusOr<session::SessionInfo>)> SessionReply(pb::Session* resp,
                                                                       Finisher finish) {
  return [resp, finish](absl::StatusOr<session::SessionInfo> info) {
    if (info.ok()) ToProto(*info, resp);
    finish(info.status());
  };
}
}  // namespace

grpc::ServerUnaryReactor* TttServiceImpl::Restore(Ctx* ctx, const pb::RestoreRequest* req,
                                                  pb::Session* resp) {
  return RunUnary(metrics_, ctx, "Restore", [&](const std::string& tenant, Finisher finish) {
    std::optional<session::SessionOptions> options;
    if (req->has_options()) options = FromProto(req->options());
    if (req->checkpoint_id().empty()) {
      return finish(absl::InvalidArgumentError("checkpoint_id is required"));
    }
    absl::Status st = sessions_->Restore(tenant, req->checkpoint_id(), req->session_id(), options,
                                         SessionReply(resp, finish));
    if (!st.ok()) finish(st);
  });
}

grpc::ServerUnaryReactor* TttServiceImpl::Reset(Ctx* ctx, const pb::ResetRequest* req,
                                                pb::Session* resp) {
  return RunUnary(metrics_, ctx, "Reset", [&](const std::string& tenant, Finisher finish) {
    absl::Status st = sessions_->Reset(tenant, req->session_id(), SessionReply(resp, finish));
    if (!st.ok()) finish(st);
  });
}

grpc::ServerUnaryReactor* TttServiceImpl::Fork(Ctx* ctx, const pb::ForkRequest* req,
                                               pb::Session* resp) {
  return RunUnary(metrics_, ctx, "Fork", [&](const std::string& tenant, Finisher finish) {
    std::optional<session::SessionOptions> options;
    if (req->has_options()) options = FromProto(req->options());
    absl::Status st =
        sessions_->Fork(tenant, req->session_id(), options, SessionReply(resp, finish));
    if (!st.ok()) finish(st);
  });
}

grpc::ServerUnaryReactor* TttServiceImpl::ListCheckpoints(Ctx* ctx,
                                                          const pb::ListCheckpointsRequest*,
                                                          pb::ListCheckpointsResponse* resp) {
  return RunUnary(metrics_, ctx, "ListCheckpoints",
                  [&](const std::string& tenant, Finisher finish) {
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
  return RunUnary(metrics_, ctx, "DeleteCheckpoint",
                  [&](const std::string& tenant, Finisher finish) {
                    finish(sessions_->DeleteCheckpoint(tenant, req->checkpoint_id()));
                  });
}

grpc::ServerWriteReactor<pb::ExportSessionResponse>* TttServiceImpl::ExportSession(
    Ctx* ctx, const pb::ExportSessionRequest* req) {
  return new ExportReactor(this, ctx, req);
}

grpc::ServerReadReactor<pb::ImportSessionRequest>* TttServiceImpl::ImportSession(
    Ctx* ctx, pb::Session* resp) {
  return new ImportReactor(this, ctx, resp);
}

}  // namespace ttt::server
