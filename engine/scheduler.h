// The batching scheduler: one engine thread owns the Model and turns ready work from many
// sequences (token runs to ingest: document chunks, prompt tokens, decode steps, scoring) into
// batched Model::Ingest calls bounded by a token budget, round-robin fair across sequences.
// RPC threads only enqueue; results come back by callback on the engine thread (never block in
// a callback: enqueue more work, push to a queue, return). Engine-level: absl only, no gRPC.
//
// Ordering: work items of one sequence key run in submission order (a per-key FIFO), so a task
// queued after a token run sees its effect. Different keys are interleaved.
//
// The engine thread works in rounds. (1) For each key in round-robin order it serves the head of
// its queue: runs tasks, answers cancelled work, and runs a token run's `prepare`, until the head
// is a prepared token run or the queue is empty (callbacks run without the queue lock, so work
// may arrive meanwhile). (2) It picks the token runs at the heads whose prepare has run (work
// that arrived after its key was served waits for the next round), gives each a fair share of
// the token budget, then the leftover in order, and moves the served keys to the back of the
// order. (3) One batch runs, then the progress callbacks. (4) Finished runs are answered.
//
// Continuous batching (as vLLM's chunked prefill and Sarathi-Serve): a step that carries decode
// steps (Pace::kDecode, one token of a running generation) gives every ready decode its token
// first (up to max_batch_tokens decodes), then fills the step with pieces of the ingests up to a
// smaller budget (max_decode_batch_tokens; at least a quarter of it however many decodes), so a
// long ingest advances a piece per step and never stalls decoding; the step time, hence the
// inter-token latency, stays bounded. A short run (not started, at most max_decode_batch_tokens
// tokens: a score, a prompt) goes whole, so what runs beside it does not change its results.
// A step that carries interactive work (Pace::kInteractive: a prompt or a score, whose client
// waits for the whole run) is short in the same way, the interactive runs planned before the bulk
// ones, so a new generation's first token does not wait behind long ingest steps.
// A step with neither uses the whole max_batch_tokens for ingest throughput.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/model.h"

namespace ttt::engine {

// Set by whoever gave up on the work (a cancelled RPC); the scheduler drops queued work that
// carries a set token and answers it CANCELLED. Shared between the submitter and the queue.
class CancelToken {
 public:
  void Cancel() { cancelled_.store(true, std::memory_order_release); }
  bool cancelled() const { return cancelled_.load(std::memory_order_acquire); }

 private:
  std::atomic<bool> cancelled_{false};
};

// Runs one batch: the production runner is Model::Ingest; tests pass a fake.
using BatchRunner =
    std::function<absl::StatusOr<std::vector<IngestLogProbs>>(absl::Span<IngestItem> items)>;

// One unit of work. Exactly one of `task` and `state` is set.
struct Work {
  // Fairness and ordering key (the session). Items with equal keys run in order.
  uint64_t key = 0;
  // A closure run alone on the engine thread, in order with the key's other work (state
  // snapshots, resets, loads). It may submit more work.
  std::function<void()> task;
  // A token run: `tokens` are ingested into *state, possibly over several batches.
  // REQUIRES: *state outlives the call of `on_done` and is touched only through this key's work.
  SequenceState* state = nullptr;
  std::vector<int32_t> tokens;
  // Called on the engine thread after each batch that advanced this run: the log-probabilities
  // of the tokens just applied (Model::Ingest's) and the offset of the first in `tokens`.
  std::function<void(absl::Span<const float> logprobs, int64_t offset)> on_progress;
  // Called exactly once on the engine thread: OK when every token was applied (and for a task,
  // after it ran); CANCELLED when dropped by cancellation (tokens already reported through
  // on_progress stay applied); the model's error otherwise; UNAVAILABLE at shutdown.
  std::function<void(absl::Status)> on_done;
  // Optional; when set and cancelled the rest of the work is dropped.
  std::shared_ptr<CancelToken> cancel;
  // How the step planner treats a token run (continuous batching, see the file comment).
  enum class Pace {
    kBulk,         // an ingest: throughput matters; long runs go in pieces of any size
    kInteractive,  // a client waits for the whole run (a prompt, a score): the step stays short
    kDecode,       // one token of a running generation: planned before anything else
  };
  Pace pace = Pace::kBulk;
  // Optional, for a token run: called on the engine thread before its first batch (e.g. load an
  // evicted state, or copy the state to score on). No batch touches `state` until it returned
  // OK, however the work arrived; an error finishes the work with it.
  std::function<absl::Status()> prepare;
  // Optional, for a token run: what `prepare` decided about the run, read once after it
  // returned OK (prepare fills it in; the submitter shares it). `applied`: leading tokens that
  // prepare applied to *state itself (a session adopting a cached state that holds them); the
  // run starts after them and on_progress never reports them. `stop_at` (0: none): no batch
  // takes tokens across this offset, so on_progress sees *state exactly there (where a session
  // caches it); the run then goes on.
  struct Plan {
    int64_t applied = 0;
    int64_t stop_at = 0;
  };
  std::shared_ptr<Plan> plan;
};

struct SchedulerOptions {
  // Token budget of one Model::Ingest call (one engine step). It bounds how long a new prompt
  // can wait for the step in flight: 512 cut the time to first token beside a 32k-token ingest
  // from 1.5-2.5 s (2048) to 15-112 ms at the same ingest speed (bench/RESULTS.md).
  int64_t max_batch_tokens = 512;
  // Token budget of a step that carries decode steps or interactive runs (prompts, scores): the
  // decodes first, then the interactive runs, then ingest pieces up
  // to this in all (at least a quarter of it; never past max_batch_tokens). Smaller keeps
  // inter-token latency low while long ingests run; larger gives those ingests more of each
  // step. 64 kept p99 inter-token latency within 2x beside a 32k-token ingest on the shipped
  // model (bench/RESULTS.md).
  int64_t max_decode_batch_tokens = 64;
  int64_t max_queued_items = 4096;   // work items queued over all keys (RESOURCE_EXHAUSTED past)
  int64_t max_queued_per_key = 256;  // work items queued for one key
};

// Thread-safe: Submit and the accessors may be called from any thread, including from callbacks
// on the engine thread.
class Scheduler {
 public:
  // Watches what the engine thread does (metrics). Called on the engine thread.
  struct Observer {
    virtual ~Observer() = default;
    virtual void OnBatch(int64_t tokens, int64_t sequences, double seconds) {}
    // Once per work item, when the engine thread first takes it up (a task runs, a token run's
    // prepare or first batch starts): how long it waited since Submit. `kind` is one of
    // kQueueWaitKinds: "task", "ingest" (Pace::kBulk), "prompt" (kInteractive), "decode".
    // Cancelled work that never started is not reported.
    virtual void OnQueueWait(const char* kind, double seconds) {}
  };
  static constexpr const char* kQueueWaitKinds[] = {"task", "ingest", "prompt", "decode"};

  // Starts the engine thread over `model` (not owned; must outlive the scheduler).
  static absl::StatusOr<std::unique_ptr<Scheduler>> Create(const Model* model,
                                                           const SchedulerOptions& options,
                                                           Observer* observer = nullptr);
  // Same over any batch runner (tests).
  static absl::StatusOr<std::unique_ptr<Scheduler>> Create(BatchRunner runner,
                                                           const SchedulerOptions& options,
                                                           Observer* observer = nullptr);
  // Stops the engine thread; queued work is answered UNAVAILABLE.
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues `work` (ownership passes to the scheduler). RESOURCE_EXHAUSTED when the queue is full
  // (the work's callbacks are then never called), FAILED_PRECONDITION after shutdown began,
  // INVALID_ARGUMENT for malformed work. `bypass_limits` admits a continuation of work already
  // admitted (the next decode step), so a running generation is never refused midway.
  absl::Status Submit(Work work, bool bypass_limits = false);

  // Runs a task and waits for it (tests, shutdown). Never call from the engine thread.
  absl::Status RunAndWait(uint64_t key, std::function<void()> fn);

  // Stops taking work, answers what is queued UNAVAILABLE, joins the engine thread. Idempotent.
  void Shutdown();

  int64_t queue_depth() const;
  int64_t queue_capacity() const { return options_.max_queued_items; }
  const SchedulerOptions& options() const { return options_; }
  bool OnEngineThread() const { return std::this_thread::get_id() == thread_id_; }

 private:
  struct Pending {
    Work work;
    int64_t done = 0;  // tokens of work.tokens already applied
    // work.prepare ran (or there is none). A token run is batched only once this is set.
    bool prepared = false;
    std::chrono::steady_clock::time_point submitted;  // when Submit queued it
    bool started = false;  // the engine thread took it up (its queue wait is reported)
    int64_t stop_at = 0;   // work.plan's stop_at, once prepare ran
  };
  struct KeyQueue {
    std::deque<Pending> items;
    bool in_rr = false;  // listed in rr_
  };

  // One key's share of a batch: the token run at the head of its queue and how many of its
  // tokens the batch takes.
  struct Slot {
    uint64_t key;
    Pending* pending;
    int64_t take;
    // Tokens this run may take now: up to its end, or to its stop_at while short of it.
    int64_t remaining() const {
      const int64_t end = pending->stop_at > pending->done
                              ? pending->stop_at
                              : static_cast<int64_t>(pending->work.tokens.size());
      return end - pending->done;
    }
  };

  Scheduler(BatchRunner runner, const SchedulerOptions& options, Observer* observer);
  void Loop();

  // The engine thread's round, in phases. REQUIRES: `lock` holds mu_ on entry and on return of
  // each (those taking `lock` release it around callbacks). Returns false when idle or stopping.
  bool RunRound(std::unique_lock<std::mutex>& lock);
  // Phase 1: at the head of each queue in round-robin order, run tasks, finish cancelled work,
  // and run the prepare of a token run. False when shutdown began meanwhile.
  bool ServeHeads(std::unique_lock<std::mutex>& lock);
  bool ServeHead(std::unique_lock<std::mutex>& lock, KeyQueue& q);
  // Runs the head token run's prepare unlocked; marks it prepared when that returned OK.
  absl::Status PrepareHead(std::unique_lock<std::mutex>& lock, Pending& head);
  // Removes keys whose queues are empty from rr_ and queues_.
  void DropIdleKeys();
  // Phase 2: picks the ready token runs at the heads, shares the token budget among them and
  // moves the served keys to the back of rr_.
  std::vector<Slot> PlanBatch();
  // Decodes first (each its whole run), then interactive runs, then the ingests share what the
  // step has left.
  void ShareBudget(std::vector<Slot>& slots) const;
  // Each slot a fair share of `budget`, then the leftover in order. Returns the tokens given.
  static int64_t ShareFairly(const std::vector<Slot*>& slots, int64_t budget);
  // Phase 3, unlocked: one Model::Ingest call (each item alone if the batch fails, so one bad
  // item fails only itself), then the progress callbacks.
  std::vector<absl::StatusOr<IngestLogProbs>> RunBatch(const std::vector<Slot>& slots);
  absl::StatusOr<std::vector<IngestLogProbs>> RunCatching(absl::Span<IngestItem> items);
  void ReportProgress(const std::vector<Slot>& slots,
                      const std::vector<absl::StatusOr<IngestLogProbs>>& results);
  // Phase 4: advances the runs, pops and answers those complete or failed.
  void CompleteBatch(std::unique_lock<std::mutex>& lock, const std::vector<Slot>& slots,
                     std::vector<absl::StatusOr<IngestLogProbs>>& results);

  // Reports `p`'s queue wait to the observer the first time the engine thread takes it up.
  // Engine thread only.
  void NoteStarted(Pending& p);

  // Removes the head of `q` from the queue. REQUIRES: mu_ held, q not empty.
  Work PopHead(KeyQueue& q);
  static absl::Status RunTask(Work& work);
  static void Finish(Work& work, absl::Status status);

  BatchRunner runner_;
  const SchedulerOptions options_;
  Observer* observer_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<uint64_t, KeyQueue> queues_;  // guarded by mu_
  std::list<uint64_t> rr_;               // keys with work, in service order; guarded by mu_
  int64_t queued_ = 0;                   // guarded by mu_
  bool stopping_ = false;                // guarded by mu_
  std::thread thread_;
  std::thread::id thread_id_;
};

}  // namespace ttt::engine
