// One stress client's calls and operations (see stress_internal.h).
#include <algorithm>
#include <thread>

#include "absl/strings/str_cat.h"
#include "tools/load/stress_internal.h"

namespace ttt::cli::stress {
namespace {

constexpr size_t kMaxOwned = 4;    // sessions one client keeps; older ones are deleted
constexpr size_t kMaxPending = 4;  // checkpoints waiting to be verified
// How long a session may stay busy after this client cancelled its writer, and the longest pause
// between retries meanwhile.
constexpr auto kBusyAfterCancel = std::chrono::seconds(5);
constexpr auto kMaxBusyBackoff = std::chrono::milliseconds(250);

bool Retryable(grpc::StatusCode c) {  // the server said "not now", not "never"
  return c == grpc::StatusCode::RESOURCE_EXHAUSTED || c == grpc::StatusCode::UNAVAILABLE ||
         c == grpc::StatusCode::DEADLINE_EXCEEDED;
}

std::string Short(const std::string& s) {
  return s.size() <= 300 ? s : absl::StrCat(s.substr(0, 300), "... (", s.size(), " bytes)");
}

}  // namespace

Client::Client(int index, const Options& options, std::shared_ptr<grpc::Channel> channel,
               Recorder* recorder)
    : index_(index),
      options_(options),
      stub_(pb::TttService::NewStub(channel)),
      recorder_(recorder),
      rng_(options.seed * 1000003 + static_cast<uint64_t>(index)) {}

std::unique_ptr<grpc::ClientContext> Client::Context(const char* rpc) {
  recorder_->Doing(index_, absl::StrCat(operation_, ": ", rpc));
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::milliseconds(static_cast<int64_t>(options_.call_timeout_s * 1e3)));
  AddTenant(*ctx, options_);
  return ctx;
}

grpc::Status Client::Check(const std::string& method, grpc::Status status) {
  recorder_->Call(method, status);
  if (status.error_code() == grpc::StatusCode::INTERNAL ||
      status.error_code() == grpc::StatusCode::UNKNOWN) {
    recorder_->Violation(absl::StrCat("client ", index_, ": ", method, " answered ",
                                      CodeName(status.error_code()), ": ",
                                      Short(status.error_message())));
  }
  if (status.error_code() == grpc::StatusCode::UNAVAILABLE) {
    recorder_->Unavailable();
    // The server is restarting or gone (the monitor decides which): do not spin.
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return status;
}

void Client::Expect(bool ok, const std::string& what) {
  if (!ok && !recorder_->stopping()) {
    recorder_->Violation(absl::StrCat("client ", index_, ": ", what));
  }
}

void Client::ExpectSameScore(const pb::ScoreResponse& want, const pb::ScoreResponse& got,
                             const std::string& what) {
  const std::string diff = CompareScores(want, got);
  Expect(diff.empty(), absl::StrCat(what, ": ", diff));
}

// A session this client is the only writer of can be busy only while the server winds down a
// writer call the client cancelled or let time out: gRPC ends such a call at the client at once,
// and the server releases the lease only when the cancellation reaches it (docs/contract.md, "The
// writer lease after a cancellation"). ABORTED then is retried with backoff for up to
// kBusyAfterCancel; ABORTED at any other time is a leaked lease, a violation.
grpc::Status Client::AsWriter(const std::string& id, const std::function<grpc::Status()>& call) {
  const auto give_up = Clock::now() + kBusyAfterCancel;
  std::chrono::milliseconds backoff(2);
  for (;;) {
    const grpc::Status st = call();
    const grpc::StatusCode code = st.error_code();
    const bool lingering = lingering_.count(id) > 0;
    if (code == grpc::StatusCode::ABORTED && lingering && Clock::now() < give_up) {
      std::this_thread::sleep_for(backoff);
      backoff = std::min<std::chrono::milliseconds>(backoff * 2, kMaxBusyBackoff);
      continue;
    }
    if (code == grpc::StatusCode::ABORTED) {
      Expect(false,
             absl::StrCat("a writer on session ", id, " got ABORTED ",
                          lingering ? absl::StrCat("for longer than ", kBusyAfterCancel.count(),
                                                   " s after this client cancelled its writer")
                                    : "although this client is its only writer and no writer "
                                      "call of it is unfinished",
                          ": ", Short(st.error_message())));
    }
    if (code == grpc::StatusCode::OK) lingering_.erase(id);  // this call held the lease
    if (code == grpc::StatusCode::CANCELLED || code == grpc::StatusCode::DEADLINE_EXCEEDED) {
      lingering_.insert(id);
    }
    return st;
  }
}

// ---------------------------------------------------------------------------------------------
// Calls

bool Client::Create(std::string* id) {
  pb::CreateSessionRequest req;
  req.mutable_options()->set_reset_at_document_end(rng_() % 4 == 0);
  (*req.mutable_options()->mutable_labels())["client"] = std::to_string(index_);
  if (rng_() % 2) req.mutable_options()->set_idle_ttl_seconds(600);
  pb::Session s;
  auto ctx = Context("CreateSession");
  if (!Check("CreateSession", stub_->CreateSession(ctx.get(), req, &s)).ok()) return false;
  *id = s.session_id();
  return true;
}

bool Client::Score(const std::string& id, pb::ScoreResponse* out) {
  pb::ScoreRequest req;
  req.set_session_id(id);
  for (int32_t t : shared_->probe) req.add_token_ids(t);
  auto ctx = Context("Score");
  return Check("Score", stub_->Score(ctx.get(), req, out)).ok();
}

bool Client::ScoreText(const std::string& id) {
  pb::ScoreRequest req;
  req.set_session_id(id);
  if (shared_->info.has_tokenizer()) {
    req.set_text(RandomText(1 + static_cast<int>(rng_() % 30)));
  } else {
    for (int32_t t : RandomTokens(1 + static_cast<int>(rng_() % 100))) req.add_token_ids(t);
  }
  pb::ScoreResponse resp;
  auto ctx = Context("Score");
  return Check("Score", stub_->Score(ctx.get(), req, &resp)).ok();
}

// 1..6 messages of text (split at random bytes, mid-character included) or token ids, with
// random flush / end_of_document / report_loss; `cancel` cancels after some of them.
bool Client::Ingest(const std::string& id, bool text, bool cancel) {
  return AsWriter(id, [&] { return IngestOnce(id, text, cancel); }).ok();
}

grpc::Status Client::IngestOnce(const std::string& id, bool text, bool cancel) {
  const int n = 1 + static_cast<int>(rng_() % 6);
  std::vector<pb::IngestRequest> msgs(static_cast<size_t>(n));
  if (text) {
    const std::string all = RandomText(5 + static_cast<int>(rng_() % 80));
    std::vector<size_t> cuts = {0, all.size()};
    for (int i = 1; i < n; ++i) cuts.push_back(rng_() % (all.size() + 1));
    std::sort(cuts.begin(), cuts.end());
    for (int i = 0; i < n; ++i) msgs[i].set_text(all.substr(cuts[i], cuts[i + 1] - cuts[i]));
  } else {
    for (auto& m : msgs) {
      for (int32_t t : RandomTokens(1 + static_cast<int>(rng_() % 300))) m.add_token_ids(t);
    }
  }
  const bool loss = rng_() % 2;
  for (auto& m : msgs) {
    // An empty piece (two cuts at one byte) would be an empty message: make it a flush.
    m.set_flush(rng_() % 4 == 0 || (m.text().empty() && m.token_ids().empty()));
    m.set_report_loss(loss);
  }
  msgs.front().set_session_id(id);
  msgs.back().set_end_of_document(rng_() % 5 == 0);

  auto ctx = Context("Ingest");
  auto stream = stub_->Ingest(ctx.get());
  const int send = cancel ? static_cast<int>(rng_() % static_cast<uint64_t>(n)) + 1 : n;
  int acked = 0;
  bool ordered = true;
  for (int i = 0; i < send; ++i) {
    if (!stream->Write(msgs[i])) break;
  }
  pb::IngestResponse resp;
  int64_t last = -1;
  // Exactly one response per message sent, in order (text still buffered at the end of the
  // stream is acknowledged by the final status, not by another response).
  auto take = [&] {
    ordered = ordered && resp.message_index() == last + 1;
    last = resp.message_index();
    ++acked;
  };
  if (cancel) {
    if (rng_() % 2 && stream->Read(&resp)) take();
    ctx->TryCancel();
  } else {
    stream->WritesDone();
  }
  while (stream->Read(&resp)) take();
  const grpc::Status st = Check("Ingest", stream->Finish());
  // Every message is well-formed, text cut anywhere included (a flush inside a character carries
  // its first bytes to the next message).
  Expect(st.error_code() != grpc::StatusCode::INVALID_ARGUMENT,
         absl::StrCat("Ingest into ", id, " of well-formed messages answered INVALID_ARGUMENT: ",
                      Short(st.error_message())));
  const int want = st.ok() && !cancel ? n : send;  // OK answers all; an error at most those sent
  Expect(ordered && (st.ok() && !cancel ? acked == n : acked <= send),
         absl::StrCat("Ingest into ", id, " ended ", CodeName(st.error_code()), " after ", acked,
                      " responses to ", want, " messages",
                      ordered ? "" : ", out of order or repeated"));
  return st;
}

// Generates 1..24 tokens with random sampling parameters; `stall` pauses before reading,
// `cancel` cancels after the first token.
bool Client::Generate(const std::string& id, bool commit, bool cancel, bool stall) {
  auto once = [&] { return GenerateOnce(id, commit, cancel, stall); };
  return (commit ? AsWriter(id, once) : once()).ok();
}

grpc::Status Client::GenerateOnce(const std::string& id, bool commit, bool cancel, bool stall) {
  pb::GenerateRequest req;
  req.set_session_id(id);
  if (rng_() % 2) {
    if (shared_->info.has_tokenizer() && rng_() % 2) {
      req.set_prompt_text(RandomText(1 + static_cast<int>(rng_() % 10)));
    } else {
      for (int32_t t : RandomTokens(1 + static_cast<int>(rng_() % 40))) {
        req.add_prompt_token_ids(t);
      }
    }
  }
  const int max_tokens = cancel ? 64 : 1 + static_cast<int>(rng_() % 24);
  req.set_max_tokens(max_tokens);
  static const double kTemperatures[] = {0.0, 0.7, 1.0, 1.5};
  req.set_temperature(kTemperatures[rng_() % 4]);
  if (rng_() % 2) req.set_top_k(1 + static_cast<int>(rng_() % 50));
  if (rng_() % 2) req.set_top_p(0.5 + 0.5 * static_cast<double>(rng_() % 1000) / 1000.0);
  req.set_seed(rng_());
  req.set_ignore_eos(rng_() % 2);
  if (shared_->info.has_tokenizer() && rng_() % 4 == 0) req.add_stop("the");
  req.set_commit(commit);

  auto ctx = Context("Generate");
  auto reader = stub_->Generate(ctx.get(), req);
  pb::GenerateResponse resp;
  int tokens = 0, reported = -1;
  bool finished = false;
  if (stall) std::this_thread::sleep_for(std::chrono::milliseconds(500 + rng_() % 2000));
  while (reader->Read(&resp)) {
    if (resp.has_token_id()) ++tokens;
    if (resp.finish_reason() != pb::FINISH_REASON_UNSPECIFIED) {
      finished = true;
      reported = resp.tokens_generated();
    }
    if (cancel && tokens == 1) ctx->TryCancel();
  }
  const grpc::Status st = Check("Generate", reader->Finish());
  if (st.ok() && !cancel) {
    Expect(
        finished && reported == tokens && tokens <= max_tokens,
        absl::StrCat("Generate on ", id, " ended OK with ", tokens, " tokens of at most ",
                     max_tokens, finished ? "" : " and no finish reason", ", reported ", reported));
  }
  return st;
}

bool Client::Checkpoint(const std::string& id, std::string* checkpoint_id) {
  pb::CheckpointRequest req;
  req.set_session_id(id);
  if (rng_() % 2) req.set_checkpoint_id(absl::StrCat("stress-", index_, "-", rng_() % 1000000));
  pb::CheckpointInfo info;
  auto ctx = Context("Checkpoint");
  if (!Check("Checkpoint", stub_->Checkpoint(ctx.get(), req, &info)).ok()) return false;
  *checkpoint_id = info.checkpoint_id();
  made_checkpoints_.push_back(info.checkpoint_id());
  return true;
}

bool Client::Restore(const std::string& checkpoint_id, const std::string& over, std::string* id) {
  pb::RestoreRequest req;
  req.set_checkpoint_id(checkpoint_id);
  req.set_session_id(over);
  pb::Session s;
  auto once = [&] {
    auto ctx = Context("Restore");
    return Check("Restore", stub_->Restore(ctx.get(), req, &s));
  };
  const grpc::Status st = over.empty() ? once() : AsWriter(over, once);
  if (!st.ok()) {
    // AsWriter judged ABORTED already.
    Expect(Retryable(st.error_code()) || st.error_code() == grpc::StatusCode::ABORTED,
           absl::StrCat("acknowledged checkpoint ", checkpoint_id, " does not restore: ",
                        CodeName(st.error_code()), ": ", Short(st.error_message())));
    return false;
  }
  *id = s.session_id();
  return true;
}

bool Client::Fork(const std::string& id, std::string* fork_id) {
  pb::ForkRequest req;
  req.set_session_id(id);
  pb::Session s;
  auto ctx = Context("Fork");
  if (!Check("Fork", stub_->Fork(ctx.get(), req, &s)).ok()) return false;
  *fork_id = s.session_id();
  return true;
}

bool Client::Export(const std::string& session_id, const std::string& checkpoint_id, bool stall,
                    bool cancel, std::string* bytes) {
  pb::ExportSessionRequest req;
  req.set_session_id(session_id);
  req.set_checkpoint_id(checkpoint_id);
  auto ctx = Context("ExportSession");
  auto reader = stub_->ExportSession(ctx.get(), req);
  pb::ExportSessionResponse resp;
  int64_t total = -1;
  bytes->clear();
  if (stall) std::this_thread::sleep_for(std::chrono::milliseconds(500 + rng_() % 2000));
  while (reader->Read(&resp)) {
    if (total < 0) total = resp.total_size();
    bytes->append(resp.data());
    if (cancel) ctx->TryCancel();
  }
  const grpc::Status st = Check("ExportSession", reader->Finish());
  if (st.ok() && !cancel) {
    Expect(total == static_cast<int64_t>(bytes->size()),
           absl::StrCat("ExportSession of ", session_id, checkpoint_id, " announced ", total,
                        " bytes and sent ", bytes->size()));
  }
  return st.ok() && !cancel;
}

bool Client::Import(const std::string& bytes, std::string* id) {
  pb::Session s;
  auto ctx = Context("ImportSession");
  auto writer = stub_->ImportSession(ctx.get(), &s);
  for (size_t pos = 0; pos < bytes.size();) {  // random pieces of 1 byte .. 256 KiB
    const size_t n = std::min(bytes.size() - pos, 1 + static_cast<size_t>(rng_() % (256 << 10)));
    pb::ImportSessionRequest req;
    req.set_data(bytes.substr(pos, n));
    if (!writer->Write(req)) break;
    pos += n;
  }
  writer->WritesDone();
  if (!Check("ImportSession", writer->Finish()).ok()) return false;
  *id = s.session_id();
  return true;
}

bool Client::Delete(const std::string& id) {
  lingering_.erase(id);
  pb::DeleteSessionRequest req;
  req.set_session_id(id);
  pb::DeleteSessionResponse resp;
  auto ctx = Context("DeleteSession");
  return Check("DeleteSession", stub_->DeleteSession(ctx.get(), req, &resp)).ok();
}

bool Client::Reset(const std::string& id) {
  pb::ResetRequest req;
  req.set_session_id(id);
  pb::Session s;
  return AsWriter(id,
                  [&] {
                    auto ctx = Context("Reset");
                    return Check("Reset", stub_->Reset(ctx.get(), req, &s));
                  })
      .ok();
}

bool Client::DeleteCheckpoint(const std::string& checkpoint_id) {
  pb::DeleteCheckpointRequest req;
  req.set_checkpoint_id(checkpoint_id);
  pb::DeleteCheckpointResponse resp;
  auto ctx = Context("DeleteCheckpoint");
  return Check("DeleteCheckpoint", stub_->DeleteCheckpoint(ctx.get(), req, &resp)).ok();
}

// GetServerInfo, ListSessions, GetSession, ListCheckpoints; no temporary file may be listed.
void Client::Listings() {
  {
    pb::ServerInfo info;
    auto ctx = Context("GetServerInfo");
    Check("GetServerInfo", stub_->GetServerInfo(ctx.get(), pb::GetServerInfoRequest(), &info));
  }
  {
    pb::ListSessionsRequest req;
    (*req.mutable_label_selector())["client"] = std::to_string(index_);
    pb::ListSessionsResponse resp;
    auto ctx = Context("ListSessions");
    Check("ListSessions", stub_->ListSessions(ctx.get(), req, &resp));
  }
  if (!owned_.empty()) {
    pb::GetSessionRequest req;
    req.set_session_id(RandomOwned());
    pb::Session s;
    auto ctx = Context("GetSession");
    Check("GetSession", stub_->GetSession(ctx.get(), req, &s));
  }
  pb::ListCheckpointsResponse resp;
  auto ctx = Context("ListCheckpoints");
  if (Check("ListCheckpoints",
            stub_->ListCheckpoints(ctx.get(), pb::ListCheckpointsRequest(), &resp))
          .ok()) {
    for (const auto& c : resp.checkpoints()) {
      const std::string& id = c.checkpoint_id();
      Expect(
          !id.empty() && id[0] != '.' && id.find(".tmp") == std::string::npos && c.size_bytes() > 0,
          absl::StrCat("ListCheckpoints lists \"", id, "\" of ", c.size_bytes(), " bytes"));
    }
  }
}

// Requests that must be refused with a specific code, never INTERNAL.
void Client::BadInputs() {
  pb::ScoreRequest req;
  req.set_session_id(owned_.empty() ? "s-0" : RandomOwned());
  req.add_token_ids(static_cast<int32_t>(shared_->info.vocab_size()) + 7);
  pb::ScoreResponse resp;
  auto ctx = Context("Score");
  const grpc::Status st = Check("Score", stub_->Score(ctx.get(), req, &resp));
  Expect(st.error_code() == grpc::StatusCode::INVALID_ARGUMENT ||
             st.error_code() == grpc::StatusCode::NOT_FOUND || Retryable(st.error_code()),
         absl::StrCat("Score with a token id past the vocabulary answered ",
                      CodeName(st.error_code())));
  pb::GetSessionRequest get;
  get.set_session_id("s-ffffffffffffffffdeadbeef");
  pb::Session s;
  auto ctx2 = Context("GetSession");
  const grpc::Status st2 = Check("GetSession", stub_->GetSession(ctx2.get(), get, &s));
  Expect(st2.error_code() == grpc::StatusCode::NOT_FOUND || Retryable(st2.error_code()),
         absl::StrCat("GetSession of an unknown id answered ", CodeName(st2.error_code())));
}

// ---------------------------------------------------------------------------------------------
// Operations

std::string Client::RandomOwned() { return owned_[rng_() % owned_.size()]; }

const Canary& Client::RandomCanary() {
  return shared_->canaries[rng_() % shared_->canaries.size()];
}

void Client::Adopt(const std::string& id) {
  owned_.push_back(id);
  while (owned_.size() > kMaxOwned) {
    Delete(owned_.front());
    owned_.erase(owned_.begin());
  }
}

std::vector<int32_t> Client::RandomTokens(int n) {
  std::vector<int32_t> out(static_cast<size_t>(n));
  const uint64_t vocab = static_cast<uint64_t>(std::max<int64_t>(4, shared_->info.vocab_size()));
  for (auto& t : out) t = static_cast<int32_t>(3 + rng_() % (vocab - 3));
  return out;
}

std::string Client::RandomText(int words) {
  static const char* kWords[] = {"the",      "court", "said",   "jury",  "of",   "ville",
                                 "election", "and",   "wörter", "naïve", "日本", "—",
                                 "\n",       "42",    "a",      "is"};
  std::string out;
  for (int i = 0; i < words; ++i) {
    if (i) out += ' ';
    out += kWords[rng_() % (sizeof(kWords) / sizeof(kWords[0]))];
  }
  return out;
}

// Scores an own session, checkpoints it, and remembers the score to check the restore against.
void Client::OpCheckpoint() {
  const std::string id = RandomOwned();
  pb::ScoreResponse before;
  std::string checkpoint_id;
  if (!Score(id, &before) || !Checkpoint(id, &checkpoint_id)) return;
  pending_.push_back({checkpoint_id, before});
  if (pending_.size() > kMaxPending) OpVerifyCheckpoint(false);
}

// Restores a pending checkpoint (into a new session, or over an own one) and compares scores.
void Client::OpVerifyCheckpoint(bool over_owned) {
  if (pending_.empty()) return;
  const size_t i = rng_() % pending_.size();
  const Pending p = pending_[i];
  pending_.erase(pending_.begin() + static_cast<std::ptrdiff_t>(i));
  const std::string over = over_owned && !owned_.empty() ? RandomOwned() : "";
  std::string id;
  if (!Restore(p.checkpoint_id, over, &id)) {
    if (!recorder_->stopping()) pending_.push_back(p);  // retryable: try again later
    return;
  }
  pb::ScoreResponse got;
  if (Score(id, &got)) {
    ExpectSameScore(p.expected, got,
                    absl::StrCat("checkpoint ", p.checkpoint_id, " restored ",
                                 over.empty() ? "into a new session" : "over a session",
                                 " scores differently from the session at checkpoint time"));
  }
  if (over.empty()) Adopt(id);
  if (rng_() % 2) DeleteCheckpoint(p.checkpoint_id);
}

// A fork, or an export imported back, of an own session or a canary scores as its source.
void Client::OpCopy(bool fork) {
  const bool canary = owned_.empty() || rng_() % 3 == 0;
  std::string source;
  pb::ScoreResponse want;
  if (canary) {
    const Canary& c = RandomCanary();
    source = c.session_id;
    want = c.baseline;
  } else {
    source = RandomOwned();
    if (!Score(source, &want)) return;
  }
  std::string copy, bytes;
  const bool made =
      fork ? Fork(source, &copy)
           : Export(source, "", rng_() % 8 == 0, false, &bytes) && Import(bytes, &copy);
  if (!made) return;
  pb::ScoreResponse got;
  if (Score(copy, &got)) {
    ExpectSameScore(
        want, got,
        absl::StrCat(fork ? "a fork" : "an export imported back", " of ",
                     canary ? "canary " : "session ", source, " scores differently from it"));
  }
  Adopt(copy);
}

void Client::OpReset() {
  const std::string id = RandomOwned();
  if (!Reset(id)) return;
  pb::ScoreResponse got;
  if (Score(id, &got)) {
    ExpectSameScore(shared_->fresh, got,
                    absl::StrCat("session ", id,
                                 " after Reset scores differently from a "
                                 "fresh session"));
  }
}

// Reads a canary (score, generate, export, checkpoint: never a writer) and checks its score.
void Client::OpReadCanary() {
  const Canary& c = RandomCanary();
  switch (rng_() % 5) {
    case 0:
      Generate(c.session_id, false, rng_() % 3 == 0, rng_() % 3 == 0);
      break;
    case 1: {
      std::string bytes;
      Export(c.session_id, "", rng_() % 2 == 0, rng_() % 2 == 0, &bytes);
      break;
    }
    case 2: {
      std::string checkpoint_id;
      if (Checkpoint(c.session_id, &checkpoint_id)) pending_.push_back({checkpoint_id, c.baseline});
      break;
    }
    default:
      break;
  }
  pb::ScoreResponse got;
  if (Score(c.session_id, &got)) {
    ExpectSameScore(c.baseline, got,
                    absl::StrCat("canary ", c.session_id,
                                 ", which no writer touched, scores "
                                 "differently from its first score"));
  }
}

void Client::OneOperation() {
  if (owned_.empty()) {
    std::string id;
    operation_ = "CreateSession";
    if (Create(&id)) Adopt(id);
    return;
  }
  const bool text = shared_->info.has_tokenizer();
  // Weights of the mix, in the order of the cases below.
  static const int kWeights[] = {5, 14, 8, 3, 8, 4, 6, 5, 3, 2, 6, 5, 2, 4, 4, 2, 3, 3, 10, 3, 2};
  static const char* kNames[] = {"CreateSession",
                                 "Ingest ids",
                                 "Ingest text",
                                 "Ingest cancelled",
                                 "Score",
                                 "Score text",
                                 "Generate",
                                 "Generate commit",
                                 "Generate cancelled",
                                 "Generate stalled",
                                 "Checkpoint",
                                 "Restore new",
                                 "Restore over",
                                 "Fork",
                                 "Export+Import",
                                 "Export stalled/cancelled",
                                 "DeleteSession",
                                 "Reset",
                                 "read canary",
                                 "listings",
                                 "bad inputs"};
  int total = 0;
  for (int w : kWeights) total += w;
  int r = static_cast<int>(rng_() % static_cast<uint64_t>(total)), op = 0;
  while (r >= kWeights[op]) r -= kWeights[op++];
  operation_ = kNames[op];
  const std::string id = RandomOwned();
  std::string out;
  pb::ScoreResponse score;
  switch (op) {
    case 0:
      if (Create(&out)) Adopt(out);
      break;
    case 1:
      Ingest(id, false, false);
      break;
    case 2:
      Ingest(id, text, false);
      break;
    case 3:
      Ingest(id, text && rng_() % 2, true);
      break;
    case 4:
      Score(id, &score);
      break;
    case 5:
      ScoreText(id);
      break;
    case 6:
      Generate(id, false, false, false);
      break;
    case 7:
      Generate(id, true, false, false);
      break;
    case 8:
      Generate(id, rng_() % 2, true, false);
      break;
    case 9:
      Generate(id, false, false, true);
      break;
    case 10:
      OpCheckpoint();
      break;
    case 11:
      OpVerifyCheckpoint(false);
      break;
    case 12:
      OpVerifyCheckpoint(true);
      break;
    case 13:
      OpCopy(true);
      break;
    case 14:
      OpCopy(false);
      break;
    case 15:
      Export(id, "", rng_() % 2, rng_() % 2, &out);
      break;
    case 16:
      Delete(id);
      owned_.erase(std::find(owned_.begin(), owned_.end(), id));
      break;
    case 17:
      OpReset();
      break;
    case 18:
      OpReadCanary();
      break;
    case 19:
      Listings();
      break;
    default:
      BadInputs();
      break;
  }
  recorder_->Operation();
}

absl::StatusOr<Canary> Client::MakeCanary(const Shared& shared) {
  shared_ = &shared;
  Canary c;
  if (!Create(&c.session_id)) return absl::UnavailableError("cannot create a canary session");
  for (int i = 0; i < 3; ++i) {
    if (!Ingest(c.session_id, shared.info.has_tokenizer() && i == 1, false)) {
      return absl::UnavailableError("cannot ingest into a canary session");
    }
  }
  if (!Score(c.session_id, &c.baseline)) return absl::UnavailableError("cannot score a canary");
  return c;
}

void Client::Run(const Shared* shared, Clock::time_point end) {
  shared_ = shared;
  while (Clock::now() < end && !recorder_->stopping()) OneOperation();
  recorder_->Doing(index_, "");
}

void Client::Finish() {
  if (recorder_->stopping()) return;  // the server is gone: nothing to verify against
  operation_ = "final checkpoint checks";
  for (int tries = 0; !pending_.empty() && tries < 32; ++tries) OpVerifyCheckpoint(false);
  Expect(pending_.empty(), absl::StrCat(pending_.size(),
                                        " acknowledged checkpoints could not "
                                        "be restored (retryable errors) by the end"));
  for (const std::string& id : owned_) Delete(id);
  owned_.clear();
  for (const std::string& c : made_checkpoints_) {
    pb::DeleteCheckpointRequest req;
    req.set_checkpoint_id(c);
    pb::DeleteCheckpointResponse resp;
    auto ctx = Context("DeleteCheckpoint");
    stub_->DeleteCheckpoint(ctx.get(), req, &resp);  // NOT_FOUND when already deleted: fine
  }
  recorder_->Doing(index_, "");
}

}  // namespace ttt::cli::stress
