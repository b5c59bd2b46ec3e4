// The batching scheduler's engine thread (see scheduler.h).
#include "engine/scheduler.h"

#include <algorithm>
#include <chrono>
#include <exception>
#include <future>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "util/error_reason.h"

namespace ttt::engine {

absl::StatusOr<std::unique_ptr<Scheduler>> Scheduler::Create(const Model* model,
                                                             const SchedulerOptions& options,
                                                             Observer* observer) {
  if (model == nullptr) return absl::InvalidArgumentError("scheduler needs a model");
  BatchRunner runner = [model](absl::Span<IngestItem> items) {
    return model->Ingest(items, IngestMode::kParallel);
  };
  return Create(std::move(runner), options, observer);
}

absl::StatusOr<std::unique_ptr<Scheduler>> Scheduler::Create(BatchRunner runner,
                                                             const SchedulerOptions& options,
                                                             Observer* observer) {
  if (!runner) return absl::InvalidArgumentError("scheduler needs a batch runner");
  if (options.max_batch_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_batch_tokens must be >= 1, got ", options.max_batch_tokens));
  }
  if (options.max_decode_batch_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_decode_batch_tokens must be >= 1, got ",
                                                   options.max_decode_batch_tokens));
  }
  if (options.max_queued_items < 1 || options.max_queued_per_key < 1) {
    return absl::InvalidArgumentError("queue limits must be >= 1");
  }
  return std::unique_ptr<Scheduler>(new Scheduler(std::move(runner), options, observer));
}

Scheduler::Scheduler(BatchRunner runner, const SchedulerOptions& options, Observer* observer)
    : runner_(std::move(runner)), options_(options), observer_(observer) {
  std::promise<void> started;
  auto started_future = started.get_future();
  thread_ = std::thread([this, &started] {
    thread_id_ = std::this_thread::get_id();
    started.set_value();
    Loop();
  });
  started_future.wait();
}

Scheduler::~Scheduler() { Shutdown(); }

void Scheduler::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) {
    if (OnEngineThread()) {
      thread_.detach();  // a callback asked for shutdown; the loop exits after it returns
    } else {
      thread_.join();
    }
  }
}

int64_t Scheduler::queue_depth() const {
  std::lock_guard<std::mutex> lock(mu_);
  return queued_;
}

absl::Status Scheduler::Submit(Work work, bool bypass_limits) {
  const bool is_task = static_cast<bool>(work.task);
  if (is_task == (work.state != nullptr)) {
    return absl::InvalidArgumentError("work must carry exactly one of a task and a state");
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return absl::UnavailableError("the engine is shutting down");
    KeyQueue& q = queues_[work.key];
    if (!bypass_limits) {
      if (queued_ >= options_.max_queued_items) {
        if (q.items.empty() && !q.in_rr) queues_.erase(work.key);
        return util::WithReason(
            absl::ResourceExhaustedError(absl::StrCat(
                "engine queue is full (", queued_, " work items queued, capacity ",
                options_.max_queued_items, "); retry later or lower the request rate")),
            util::kReasonEngineBusy);
      }
      if (static_cast<int64_t>(q.items.size()) >= options_.max_queued_per_key) {
        return util::WithReason(
            absl::ResourceExhaustedError(absl::StrCat(
                "this session already has ", q.items.size(), " work items queued (limit ",
                options_.max_queued_per_key, "); wait for earlier requests to finish")),
            util::kReasonEngineBusy);
      }
    }
    const bool needs_prepare = static_cast<bool>(work.prepare);
    q.items.push_back(
        Pending{std::move(work), 0, /*prepared=*/!needs_prepare, std::chrono::steady_clock::now()});
    ++queued_;
    if (!q.in_rr) {
      q.in_rr = true;
      rr_.push_back(q.items.back().work.key);
    }
  }
  cv_.notify_one();
  return absl::OkStatus();
}

absl::Status Scheduler::RunAndWait(uint64_t key, std::function<void()> fn) {
  std::promise<absl::Status> done;
  auto future = done.get_future();
  Work work;
  work.key = key;
  work.task = std::move(fn);
  work.on_done = [&done](absl::Status s) { done.set_value(std::move(s)); };
  absl::Status submitted = Submit(std::move(work), /*bypass_limits=*/true);
  if (!submitted.ok()) return submitted;
  return future.get();
}

void Scheduler::Finish(Work& work, absl::Status status) {
  auto on_done = std::move(work.on_done);
  work.on_progress = nullptr;
  work.task = nullptr;
  if (on_done) on_done(std::move(status));
}

void Scheduler::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait(lock, [this] { return stopping_ || !rr_.empty(); });
    if (stopping_) break;
    RunRound(lock);
  }
  // Answer whatever is still queued.
  std::vector<Work> leftovers;
  for (auto& [key, q] : queues_) {
    for (auto& p : q.items) leftovers.push_back(std::move(p.work));
  }
  queues_.clear();
  rr_.clear();
  queued_ = 0;
  lock.unlock();
  for (auto& w : leftovers) Finish(w, absl::UnavailableError("the engine is shutting down"));
}

// A round: serve the heads of the queues (tasks, cancellations, prepares), then run one batch
// of the token runs that are ready. Each phase is a function below; see scheduler.h for the
// contract they keep together.
bool Scheduler::RunRound(std::unique_lock<std::mutex>& lock) {
  if (!ServeHeads(lock)) return false;
  DropIdleKeys();
  if (rr_.empty()) return false;
  std::vector<Slot> slots = PlanBatch();
  if (slots.empty()) return true;  // work arrived meanwhile; the next round serves its heads
  lock.unlock();
  std::vector<absl::StatusOr<IngestLogProbs>> results = RunBatch(slots);
  ReportProgress(slots, results);
  lock.lock();
  CompleteBatch(lock, slots, results);
  return true;
}

bool Scheduler::ServeHeads(std::unique_lock<std::mutex>& lock) {
  // rr_ may grow while the lock is released below (Submit appends new keys; list iterators stay
  // valid); only this thread erases from it or pops from a queue.
  for (auto it = rr_.begin(); it != rr_.end(); ++it) {
    if (!ServeHead(lock, queues_[*it])) return false;
  }
  return true;
}

bool Scheduler::ServeHead(std::unique_lock<std::mutex>& lock, KeyQueue& q) {
  while (!q.items.empty()) {
    Pending& head = q.items.front();
    const bool cancelled = head.work.cancel && head.work.cancel->cancelled();
    absl::Status status;
    if (cancelled) {
      status = absl::CancelledError("the request was cancelled");
    } else if (!head.work.task) {
      if (head.prepared) return true;  // a token run ready for the batch
      NoteStarted(head);
      status = PrepareHead(lock, head);
      if (status.ok()) continue;  // look again: it may have been cancelled meanwhile
    } else {
      NoteStarted(head);  // a task, about to run
    }
    Work work = PopHead(q);
    lock.unlock();
    if (!cancelled && work.task) status = RunTask(work);
    Finish(work, std::move(status));
    lock.lock();
    if (stopping_) return false;
  }
  return true;
}

absl::Status Scheduler::PrepareHead(std::unique_lock<std::mutex>& lock, Pending& head) {
  // The token run stays at the head while its prepare runs unlocked: only this thread pops, and
  // deque references survive Submit's push_back.
  auto prepare = std::move(head.work.prepare);
  lock.unlock();
  absl::Status status;
  try {
    status = prepare();
  } catch (const std::exception& e) {
    status = absl::InternalError(absl::StrCat("engine prepare failed: ", e.what()));
  }
  lock.lock();
  head.prepared = status.ok();  // a failed run is popped by the caller
  if (status.ok() && head.work.plan != nullptr) {
    const int64_t size = static_cast<int64_t>(head.work.tokens.size());
    head.done = std::clamp<int64_t>(head.work.plan->applied, 0, size);
    head.stop_at = std::clamp<int64_t>(head.work.plan->stop_at, 0, size);
  }
  return status;
}

absl::Status Scheduler::RunTask(Work& work) {
  try {
    work.task();
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("engine task failed: ", e.what()));
  }
  return absl::OkStatus();
}

Work Scheduler::PopHead(KeyQueue& q) {
  Work work = std::move(q.items.front().work);
  q.items.pop_front();
  --queued_;
  return work;
}

void Scheduler::DropIdleKeys() {
  for (auto it = rr_.begin(); it != rr_.end();) {
    auto qit = queues_.find(*it);
    if (qit == queues_.end() || qit->second.items.empty()) {
      if (qit != queues_.end()) queues_.erase(qit);
      it = rr_.erase(it);
    } else {
      ++it;
    }
  }
}

std::vector<Scheduler::Slot> Scheduler::PlanBatch() {
  // Only prepared, uncancelled token runs: ServeHeads released the lock while it ran prepares and
  // tasks, so a key it had already passed may hold new work whose prepare has not run yet.
  std::vector<Slot> slots;
  for (uint64_t key : rr_) {
    Pending& head = queues_[key].items.front();
    const bool cancelled = head.work.cancel && head.work.cancel->cancelled();
    if (head.work.state != nullptr && head.prepared && !cancelled) {
      slots.push_back({key, &head, 0});
    }
  }
  if (slots.empty()) return slots;
  ShareBudget(slots);
  // An empty token run (e.g. an end-of-document marker) completes without a model call; a
  // non-empty one left without budget waits for the next round.
  slots.erase(std::remove_if(slots.begin(), slots.end(),
                             [](const Slot& s) { return s.take == 0 && s.remaining() > 0; }),
              slots.end());
  // Served keys go to the back of the round-robin order, so the unserved go first next time.
  for (const Slot& s : slots) {
    auto it = std::find(rr_.begin(), rr_.end(), s.key);
    if (it != rr_.end()) rr_.splice(rr_.end(), rr_, it);
  }
  return slots;
}

void Scheduler::ShareBudget(std::vector<Slot>& slots) const {
  std::vector<Slot*> decodes, interactive, bulk;
  for (Slot& s : slots) {
    switch (s.pending->work.pace) {
      case Work::Pace::kDecode:
        decodes.push_back(&s);
        break;
      case Work::Pace::kInteractive:
        interactive.push_back(&s);
        break;
      case Work::Pace::kBulk:
        bulk.push_back(&s);
        break;
    }
  }
  // Every ready decode gets its whole run (one token) before any ingest token, in round-robin
  // order; decodes past the budget wait, and go first next step (served keys move back).
  int64_t used = 0;
  for (Slot* s : decodes) {
    s->take = std::min(s->remaining(), options_.max_batch_tokens - used);
    used += s->take;
  }
  if (decodes.empty() && interactive.empty()) {
    ShareFairly(bulk, options_.max_batch_tokens);
    return;
  }

  // A step that carries decodes or interactive work stays short. A short run (a score, a prompt,
  // an ingest message of at most max_decode_batch_tokens) goes whole, as it would alone: its
  // results do not depend on what else is running (a split changes them by float rounding).
  const int64_t cap = options_.max_decode_batch_tokens;
  auto take_short = [&](std::vector<Slot*>& runs) {
    std::vector<Slot*> long_runs;
    for (Slot* s : runs) {
      const bool whole = s->pending->done == 0 && s->remaining() <= cap &&
                         s->remaining() <= options_.max_batch_tokens - used;
      if (whole) {
        s->take = s->remaining();
        used += s->take;
      } else {
        long_runs.push_back(s);
      }
    }
    return long_runs;
  };
  std::vector<Slot*> long_interactive = take_short(interactive);
  std::vector<Slot*> long_bulk = take_short(bulk);
  // Long prompts and scores, as prefills in vLLM's chunked prefill, share what the step has
  // left; long ingests then share what is left of max_decode_batch_tokens, at least a quarter of
  // it (kept back from the prompts), so they still advance however many sessions decode or wait.
  const int64_t quarter = (cap + 3) / 4;
  const int64_t room = options_.max_batch_tokens - used;
  const int64_t kept = long_bulk.empty() ? 0 : std::min(quarter, room);
  used += ShareFairly(long_interactive, room - kept);
  ShareFairly(long_bulk, std::min(options_.max_batch_tokens - used, std::max(cap - used, quarter)));
}

int64_t Scheduler::ShareFairly(const std::vector<Slot*>& slots, int64_t budget) {
  if (slots.empty() || budget <= 0) return 0;
  const int64_t given = budget;
  // A fair share each (first pass), then leftover budget to the ones that want more, in order.
  const int64_t share = std::max<int64_t>(1, budget / static_cast<int64_t>(slots.size()));
  for (Slot* s : slots) {
    s->take = std::min({s->remaining(), share, budget});
    budget -= s->take;
  }
  for (Slot* s : slots) {
    if (budget <= 0) break;
    const int64_t extra = std::min(s->remaining() - s->take, budget);
    s->take += extra;
    budget -= extra;
  }
  return given - budget;
}

std::vector<absl::StatusOr<IngestLogProbs>> Scheduler::RunBatch(const std::vector<Slot>& slots) {
  std::vector<IngestItem> items;
  items.reserve(slots.size());
  int64_t batch_tokens = 0;
  for (const Slot& s : slots) {
    NoteStarted(*s.pending);
    const auto& toks = s.pending->work.tokens;
    IngestItem item;
    item.state = s.pending->work.state;
    item.tokens.assign(toks.begin() + s.pending->done, toks.begin() + s.pending->done + s.take);
    batch_tokens += s.take;
    items.push_back(std::move(item));
  }
  std::vector<absl::StatusOr<IngestLogProbs>> results(slots.size(), IngestLogProbs{});
  if (batch_tokens == 0) return results;  // only empty runs: nothing for the model
  const auto start = std::chrono::steady_clock::now();
  auto batch = RunCatching(absl::MakeSpan(items));
  if (batch.ok() && batch->size() == items.size()) {
    for (size_t i = 0; i < items.size(); ++i) results[i] = std::move((*batch)[i]);
  } else if (items.size() == 1) {
    results[0] =
        batch.ok() ? absl::InternalError("engine returned a wrong result count") : batch.status();
  } else {
    // One bad item must not fail its neighbours: run each alone (no state was touched).
    for (size_t i = 0; i < items.size(); ++i) {
      auto one = RunCatching(absl::MakeSpan(&items[i], 1));
      if (one.ok() && one->size() == 1) {
        results[i] = std::move(one->front());
      } else {
        results[i] =
            one.ok() ? absl::InternalError("engine returned a wrong result count") : one.status();
      }
    }
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (observer_ != nullptr) {
    observer_->OnBatch(batch_tokens, static_cast<int64_t>(items.size()), seconds);
  }
  return results;
}

void Scheduler::NoteStarted(Pending& p) {
  if (p.started) return;
  p.started = true;
  if (observer_ == nullptr) return;
  const char* kind = kQueueWaitKinds[0];
  if (!p.work.task) {
    switch (p.work.pace) {
      case Work::Pace::kBulk:
        kind = kQueueWaitKinds[1];
        break;
      case Work::Pace::kInteractive:
        kind = kQueueWaitKinds[2];
        break;
      case Work::Pace::kDecode:
        kind = kQueueWaitKinds[3];
        break;
    }
  }
  observer_->OnQueueWait(
      kind, std::chrono::duration<double>(std::chrono::steady_clock::now() - p.submitted).count());
}

absl::StatusOr<std::vector<IngestLogProbs>> Scheduler::RunCatching(absl::Span<IngestItem> items) {
  try {
    return runner_(items);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("engine batch failed: ", e.what()));
  }
}

void Scheduler::ReportProgress(const std::vector<Slot>& slots,
                               const std::vector<absl::StatusOr<IngestLogProbs>>& results) {
  // Runs unlocked; the callbacks may Submit.
  for (size_t i = 0; i < slots.size(); ++i) {
    if (results[i].ok() && slots[i].take > 0 && slots[i].pending->work.on_progress) {
      slots[i].pending->work.on_progress(*results[i], slots[i].pending->done);
    }
  }
}

void Scheduler::CompleteBatch(std::unique_lock<std::mutex>& lock, const std::vector<Slot>& slots,
                              std::vector<absl::StatusOr<IngestLogProbs>>& results) {
  std::vector<std::pair<Work, absl::Status>> finished;
  for (size_t i = 0; i < slots.size(); ++i) {
    Pending* p = slots[i].pending;
    absl::Status status;
    if (results[i].ok()) {
      p->done += slots[i].take;
      if (p->done < static_cast<int64_t>(p->work.tokens.size())) continue;
    } else {
      status = results[i].status();
    }
    // The head of this key's queue is still `p` (only this thread pops).
    finished.emplace_back(PopHead(queues_[slots[i].key]), std::move(status));
  }
  lock.unlock();
  for (auto& [work, status] : finished) Finish(work, std::move(status));
  lock.lock();
}

}  // namespace ttt::engine
