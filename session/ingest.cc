// Ingest (a writer folding tokens into the session) and scoring (log-probabilities of tokens
// continuing the session, computed on a copy, so the session does not change).
#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "engine/decode.h"
#include "session/internal/cluster_store.h"
#include "session/internal/session_manager_impl.h"
#include "session/internal/session_record.h"
#include "session/session.h"
#include "util/status_macros.h"

namespace ttt::session {
namespace {

// Counts `logprobs` (of tokens just applied) into `progress`.
void AddLogProbs(IngestProgress& progress, absl::Span<const float> logprobs) {
  progress.tokens += static_cast<int64_t>(logprobs.size());
  for (float lp : logprobs) {
    if (std::isfinite(lp)) {
      progress.nll_sum -= lp;
      ++progress.nll_count;
    }
  }
}

// Each in order: a message that waited for `committed` takes its outcome, the others their own.
void Acknowledge(std::vector<PendingIngestAck>& acks, const absl::Status& committed) {
  for (PendingIngestAck& a : acks) a.acknowledge(a.needs_commit ? committed : absl::OkStatus());
}

}  // namespace

// The state cache's view of one Ingest run (engine thread). Which states are cached: the one at
// the last chunk boundary each Ingest submission reaches, and no other. The end of a submission
// is where a client's document (or its message of it) ends, so another session reading the
// same document from the same starting state finds it whole; a state cached at every boundary
// would hold one fast-weight delta per chunk (a 4,096-token document: 128 copies at chunk 32)
// and make the writing session copy its buffers after each of them (copy-on-write), for hits
// that only a reader stopping mid-document could use.
struct IngestRunCache {
  std::vector<int32_t> tokens;          // the run's
  int64_t start_position = 0;           // the state's position before the run (before any adoption)
  std::vector<int64_t> boundaries;      // offsets in `tokens` of the chunk boundaries
  std::vector<internal::PathKey> keys;  // the path's key at each
  std::vector<float> logprobs;  // of the run's tokens applied so far (adopted ones included)
  int64_t cache_at = -1;        // offset whose state is cached (-1: none)
  int64_t adopted_chunks = 0;   // chunk updates the adopted state held beyond the session's
  bool planned = false;         // the path was valid at the start: AdvancePath moves it
};

void SessionManagerImpl::PlanCachedRun(Session& s, IngestRunCache& run, engine::Work::Plan& plan) {
  const int64_t chunk = TokensPerChunk();
  const int64_t position = s.state.position();
  const int64_t n = static_cast<int64_t>(run.tokens.size());
  internal::StatePath& path = s.path;
  // A state whose history is unknown, or a path grown past its bound, starts a new base here.
  if (!path.Matches(position) ||
      static_cast<int64_t>(path.logprobs.size()) + n > internal::StatePath::kMaxTokens) {
    path = internal::StatePath::Opaque(position);
  }
  run.planned = true;
  run.start_position = position;
  std::vector<int32_t> since_key = path.tail;
  int64_t from = 0;
  internal::PathKey key = path.key;
  for (int64_t b = chunk - position % chunk; b <= n; b += chunk) {
    since_key.insert(since_key.end(), run.tokens.begin() + from, run.tokens.begin() + b);
    key = internal::StatePath::Chain(key, since_key.data(), since_key.size());
    since_key.clear();
    from = b;
    run.boundaries.push_back(b);
    run.keys.push_back(key);
  }
  if (run.boundaries.empty()) return;  // no boundary: nothing to find or to cache
  const size_t before = path.logprobs.size();
  for (size_t i = run.boundaries.size(); i-- > 0;) {
    auto hit = state_cache_->Lookup(state_cache_->KeyFor(s.tenant, run.keys[i]));
    const int64_t b = run.boundaries[i];
    // Same key, same path: the count of log-probabilities agrees (a check, not a need).
    if (!hit || hit->logprobs.size() != before + b) continue;
    const int64_t chunks_before = s.state.chunks_applied();
    s.state = std::move(hit->state);  // continues from the boundary, copy-on-write
    run.adopted_chunks = s.state.chunks_applied() - chunks_before;
    run.logprobs.assign(hit->logprobs.begin() + before, hit->logprobs.end());
    plan.applied = b;
    state_cache_->CountHit(b);
    break;
  }
  if (plan.applied == 0) state_cache_->CountMiss();
  if (listener_ != nullptr) listener_->OnStateCacheLookup(s.tenant, plan.applied);
  if (run.boundaries.back() > plan.applied) {
    run.cache_at = run.boundaries.back();
    plan.stop_at = run.cache_at;  // a batch ends there, so the state there can be cached
  }
}

void SessionManagerImpl::CacheAtBoundary(Session& s, const IngestRunCache& run, int64_t applied) {
  if (applied != run.cache_at) return;
  std::vector<float> logprobs = s.path.logprobs;
  logprobs.insert(logprobs.end(), run.logprobs.begin(), run.logprobs.end());
  state_cache_->Insert(state_cache_->KeyFor(s.tenant, run.keys.back()), s.state,
                       std::move(logprobs));
}

void SessionManagerImpl::AdvancePath(Session& s, const IngestRunCache& run) {
  if (!run.planned) return;
  internal::StatePath& path = s.path;
  const int64_t applied = static_cast<int64_t>(run.logprobs.size());
  int64_t from = 0;
  for (size_t i = 0; i < run.boundaries.size() && run.boundaries[i] <= applied; ++i) {
    path.key = run.keys[i];
    path.tail.clear();
    from = run.boundaries[i];
  }
  if (from > 0) path.key_position = run.start_position + from;
  path.tail.insert(path.tail.end(), run.tokens.begin() + from, run.tokens.begin() + applied);
  path.logprobs.insert(path.logprobs.end(), run.logprobs.begin(), run.logprobs.end());
}

absl::Status SessionManagerImpl::SubmitIngest(
    const std::shared_ptr<Session>& s, std::vector<int32_t> tokens, bool end_of_document,
    std::shared_ptr<engine::CancelToken> cancel,
    std::function<void(absl::StatusOr<IngestProgress>)> done, bool durable) {
  if (!cancel) cancel = std::make_shared<engine::CancelToken>();
  struct Op {
    IngestProgress progress;
    int64_t chunks_before = 0;
  };
  auto op = std::make_shared<Op>();
  engine::Work w;
  w.key = s->key;
  w.state = &s->state;
  // With the state cache, the run keeps its tokens (the path's keys) and plans what it adopts
  // and caches.
  std::shared_ptr<IngestRunCache> run;
  if (state_cache_ != nullptr) {
    run = std::make_shared<IngestRunCache>();
    run->tokens = tokens;
    w.plan = std::make_shared<engine::Work::Plan>();
  }
  w.tokens = std::move(tokens);
  w.cancel = cancel;
  w.prepare = [this, s, op, run, plan = w.plan]() -> absl::Status {
    RETURN_IF_ERROR(EnsureResident(*s));
    op->chunks_before = s->state.chunks_applied();
    if (run == nullptr) return absl::OkStatus();
    PlanCachedRun(*s, *run, *plan);
    // What the adopted state holds counts as this run's: tokens, and the loss of their
    // predictions as the session that computed them saw it.
    AddLogProbs(op->progress, run->logprobs);
    return absl::OkStatus();
  };
  w.on_progress = [this, s, op, run](absl::Span<const float> logprobs, int64_t offset) {
    AddLogProbs(op->progress, logprobs);
    if (run == nullptr || !run->planned) return;
    run->logprobs.insert(run->logprobs.end(), logprobs.begin(), logprobs.end());
    CacheAtBoundary(*s, *run, offset + static_cast<int64_t>(logprobs.size()));
  };
  const int64_t chunk = TokensPerChunk();
  w.on_done = [this, s, op, run, end_of_document, chunk, durable,
               done = std::move(done)](absl::Status st) {
    int64_t chunks = 0;
    {
      std::lock_guard<std::mutex> lock(s->mu);
      if (s->resident) {
        if (run != nullptr) AdvancePath(*s, *run);
        chunks = s->AccountWriteLocked(op->progress.tokens, op->chunks_before, chunk);
        if (st.ok() && end_of_document) {
          ++s->counters.documents_completed;
          if (s->options.reset_at_document_end) {
            model_->Reset(s->state);
            s->path = internal::StatePath::Empty(model_->fingerprint());
          } else if (s->options.fade_at_document_end > 0) {
            model_->FadeFastWeights(s->state, 1 - s->options.fade_at_document_end);
            // A deterministic change: sessions fading alike after the same path stay alike.
            s->path.Mark("fade_at_document_end", s->options.fade_at_document_end);
          }
          // Anything else that changes the state here must Mark its path too (or drop it:
          // s->path = {}): the state would no longer be where its path says, and the cache would
          // serve it, or from it, as if it were.
        }
        s->RefreshLocked();
      }
      op->progress.counters = s->counters;
    }
    // The metric counts chunk updates computed; the session's counters, those its state holds.
    const int64_t computed = chunks - (run != nullptr ? run->adopted_chunks : 0);
    if (listener_ != nullptr && computed > 0) listener_->OnChunkUpdates(computed);
    PendingIngestAck ack;
    ack.needs_commit = st.ok() && durable;
    ack.acknowledge = [op, st, done](const absl::Status& committed) {
      const absl::Status result = st.ok() ? committed : st;
      if (result.ok()) {
        done(op->progress);
      } else {
        done(result);
      }
    };
    std::vector<PendingIngestAck> due = SettleIngest(*s, std::move(ack));
    const absl::Status committed = CommitFor(s, due);
    s->EndOp();
    Acknowledge(due, committed);
  };
  {
    std::lock_guard<std::mutex> lock(s->mu);
    ++s->ingests_queued;
  }
  absl::Status submitted = SubmitOp(*s, std::move(w), cancel);
  if (!submitted.ok()) AcknowledgeOrphans(s);
  return submitted;
}

std::vector<PendingIngestAck> SessionManagerImpl::SettleIngest(Session& s, PendingIngestAck ack) {
  std::lock_guard<std::mutex> lock(s.mu);
  --s.ingests_queued;
  // Nothing waits, and this one needs no commit: acknowledged at once (write-behind).
  if (!ack.needs_commit && s.awaiting_commit.empty()) return {std::move(ack)};
  s.awaiting_commit.push_back(std::move(ack));
  // A later message of the run is queued: its commit will cover this one too.
  if (s.ingests_queued > 0) return {};
  std::vector<PendingIngestAck> due;
  due.swap(s.awaiting_commit);
  return due;
}

absl::Status SessionManagerImpl::CommitFor(const std::shared_ptr<Session>& s,
                                           const std::vector<PendingIngestAck>& acks) {
  const bool needed = std::any_of(acks.begin(), acks.end(),
                                  [](const PendingIngestAck& a) { return a.needs_commit; });
  return needed ? CommitIngested(s) : absl::OkStatus();
}

void SessionManagerImpl::AcknowledgeOrphans(const std::shared_ptr<Session>& s) {
  std::vector<PendingIngestAck> orphans;
  {
    std::lock_guard<std::mutex> lock(s->mu);
    // A refused message was the run's last: what waited for its commit is committed now.
    if (--s->ingests_queued == 0) orphans.swap(s->awaiting_commit);
  }
  if (orphans.empty()) return;
  auto shared = std::make_shared<std::vector<PendingIngestAck>>(std::move(orphans));
  engine::Work w;
  w.key = s->key;
  w.task = [this, s, shared] { Acknowledge(*shared, CommitFor(s, *shared)); };
  if (scheduler_->Submit(std::move(w), /*bypass_limits=*/true).ok()) return;
  for (PendingIngestAck& a : *shared) {  // shutting down: nothing was committed for them
    a.acknowledge(absl::UnavailableError(
        "the server is shutting down before this input was committed; resend it"));
  }
}

absl::Status SessionManagerImpl::CommitIngested(const std::shared_ptr<Session>& s) {
  // Sync durability: acknowledged only once the store has it. The engine thread waits for the
  // write, which is the price of this mode (deploy/README.md).
  absl::StatusOr<int64_t> written = WriteSessionFile(s);
  if (written.ok()) return absl::OkStatus();
  if (cluster_ != nullptr && absl::IsFailedPrecondition(written.status())) {
    // Fenced: this process lost the session; its successor's state does not have these.
    return absl::UnavailableError(absl::StrCat(
        "session ", s->id, " is now owned by another replica (", written.status().message(),
        "); nothing of this input was committed: retry the unacknowledged input there"));
  }
  if (cluster_ != nullptr) {
    // Applied here but not committed: the session goes back to its last commit, which is where
    // the client's resend (expected_tokens_received) will find it, on any replica.
    int64_t fence;
    {
      std::lock_guard<std::mutex> lock(s->mu);
      fence = s->fence;
    }
    Disown(s, written.status());
    cluster_->Release(s->tenant, s->id, fence);
    return absl::UnavailableError(absl::StrCat(
        "the tokens could not be committed (", written.status().message(),
        "); the session continues from its last commit: retry the unacknowledged input"));
  }
  RewindToDurable(*s);
  return absl::UnavailableError(absl::StrCat(
      "the tokens could not be made durable in the session store (", written.status().message(),
      "); the session is back at its last durable copy: read its position (GetSession) and "
      "resend from there"));
}

absl::Status SessionManagerImpl::Score(const std::string& tenant, const std::string& id,
                                       std::vector<int32_t> tokens,
                                       std::shared_ptr<engine::CancelToken> cancel,
                                       std::function<void(absl::StatusOr<ScoreResult>)> done) {
  ASSIGN_OR_RETURN(auto s, Find(tenant, id));
  if (tokens.empty()) return absl::InvalidArgumentError("nothing to score: give text or token_ids");
  RETURN_IF_ERROR(engine::ValidateTokens(model_->config(), tokens));
  if (!cancel) cancel = std::make_shared<engine::CancelToken>();
  auto scratch = std::make_shared<engine::SequenceState>();
  auto result = std::make_shared<ScoreResult>();
  result->tokens = tokens;
  engine::Work w;
  w.key = s->key;
  w.state = scratch.get();
  w.tokens = std::move(tokens);
  w.pace = engine::Work::Pace::kInteractive;  // the client waits for the whole result
  w.cancel = cancel;
  const size_t count = result->tokens.size();
  auto counted = std::make_shared<int64_t>(0);  // the copy's bytes in scratch_bytes_
  w.prepare = [this, s, scratch, count, counted]() -> absl::Status {
    RETURN_IF_ERROR(EnsureResident(*s));
    // Checked here, in order with the session's writes: an empty session's first token has no
    // context, so one token alone would predict nothing (and a perplexity over nothing).
    if (s->state.position() == 0 && count < 2) {
      return absl::InvalidArgumentError(
          "score needs at least 2 tokens on an empty session: its first token has no context, "
          "so nothing would be predicted; ingest context first or score more tokens");
    }
    *scratch = s->state.Fork();  // copy-on-write: costs what scoring writes
    return absl::OkStatus();
  };
  w.on_progress = [this, s, scratch, counted, result](absl::Span<const float> logprobs, int64_t) {
    result->logprobs.insert(result->logprobs.end(), logprobs.begin(), logprobs.end());
    const int64_t now = s->BytesBeyond(*scratch);
    scratch_bytes_ += now - *counted;
    *counted = now;
  };
  w.on_done = [this, s, scratch, counted, result, done = std::move(done)](absl::Status st) {
    *scratch = engine::SequenceState{};
    scratch_bytes_ -= *counted;
    s->EndOp();
    if (st.ok()) {
      done(std::move(*result));
    } else {
      done(st);
    }
  };
  return SubmitOp(*s, std::move(w), cancel);
}

}  // namespace ttt::session
