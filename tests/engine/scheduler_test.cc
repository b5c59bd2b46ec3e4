// The batching scheduler against a fake batch runner: token budget, round-robin fairness,
// per-key order, bounded queues, cancellation, failure isolation.
#include "engine/scheduler.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "engine/internal/sequence_tensors.h"

namespace ttt::engine {
namespace {

// Records every batch; "applies" tokens by advancing the state's position. Token 999 is
// refused (INVALID_ARGUMENT for the whole batch, like the model does for a bad id).
class FakeRunner {
 public:
  BatchRunner runner() {
    return [this](absl::Span<IngestItem> items) -> absl::StatusOr<std::vector<IngestLogProbs>> {
      std::unique_lock<std::mutex> lock(mu_);
      gate_cv_.wait(lock, [this] { return open_; });
      for (const auto& item : items) {
        for (int32_t t : item.tokens) {
          if (t == 999) return absl::InvalidArgumentError("token 999 is outside the vocabulary");
        }
      }
      std::vector<IngestLogProbs> out;
      Batch batch;
      for (auto& item : items) {
        batch.push_back({item.state, static_cast<int64_t>(item.tokens.size())});
        TensorsOf(*item.state).position += static_cast<int64_t>(item.tokens.size());
        IngestLogProbs lp;
        for (int32_t t : item.tokens) lp.push_back(static_cast<float>(t));
        out.push_back(std::move(lp));
      }
      batches_.push_back(batch);
      return out;
    };
  }
  void Close() {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = false;
  }
  void Open() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      open_ = true;
    }
    gate_cv_.notify_all();
  }
  using Batch = std::vector<std::pair<SequenceState*, int64_t>>;
  std::vector<Batch> batches() {
    std::lock_guard<std::mutex> lock(mu_);
    return batches_;
  }

 private:
  std::mutex mu_;
  std::condition_variable gate_cv_;
  bool open_ = true;
  std::vector<Batch> batches_;
};

std::vector<int32_t> Range(int32_t from, int32_t n) {
  std::vector<int32_t> v;
  for (int32_t i = 0; i < n; ++i) v.push_back(from + i);
  return v;
}

struct Result {
  std::promise<absl::Status> done;
  std::vector<float> logprobs;
};

Work TokenWork(uint64_t key, SequenceState* state, std::vector<int32_t> tokens, Result* r) {
  Work w;
  w.key = key;
  w.state = state;
  w.tokens = std::move(tokens);
  w.on_progress = [r](absl::Span<const float> lp, int64_t) {
    r->logprobs.insert(r->logprobs.end(), lp.begin(), lp.end());
  };
  w.on_done = [r](absl::Status s) { r->done.set_value(s); };
  return w;
}

TEST(SchedulerTest, BatchesStayWithinTheTokenBudgetAndKeepOrder) {
  FakeRunner fake;
  SchedulerOptions opt;
  opt.max_batch_tokens = 64;
  auto sched = Scheduler::Create(fake.runner(), opt);
  ASSERT_TRUE(sched.ok()) << sched.status();
  SequenceState states[3];
  Result results[3];
  fake.Close();  // let all three queue up before the first batch
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(
        (*sched)->Submit(TokenWork(i + 1, &states[i], Range(100 * i, 100), &results[i])).ok());
  }
  fake.Open();
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(results[i].done.get_future().get().ok());
    EXPECT_EQ(states[i].position(), 100);
    std::vector<float> expected;
    for (int32_t t : Range(100 * i, 100)) expected.push_back(static_cast<float>(t));
    EXPECT_EQ(results[i].logprobs, expected);  // in order, each token once
  }
  for (const auto& batch : fake.batches()) {
    int64_t tokens = 0;
    for (const auto& [state, n] : batch) tokens += n;
    EXPECT_LE(tokens, 64);
  }
  // Several sequences shared batches.
  bool shared = false;
  for (const auto& batch : fake.batches()) shared = shared || batch.size() > 1;
  EXPECT_TRUE(shared);
}

TEST(SchedulerTest, ShortWorkIsNotStarvedByALongRun) {
  FakeRunner fake;
  SchedulerOptions opt;
  opt.max_batch_tokens = 32;
  auto sched = Scheduler::Create(fake.runner(), opt);
  ASSERT_TRUE(sched.ok());
  SequenceState long_state, short_state;
  Result long_r, short_r;
  fake.Close();
  ASSERT_TRUE((*sched)->Submit(TokenWork(1, &long_state, Range(1000, 3200), &long_r)).ok());
  ASSERT_TRUE((*sched)->Submit(TokenWork(2, &short_state, Range(0, 8), &short_r)).ok());
  fake.Open();
  ASSERT_TRUE(short_r.done.get_future().get().ok());
  ASSERT_TRUE(long_r.done.get_future().get().ok());
  // The short run finished in the first batch or two, not after the 100 batches of the long one.
  const auto batches = fake.batches();
  size_t short_done_at = batches.size();
  for (size_t i = 0; i < batches.size(); ++i) {
    for (const auto& [state, n] : batches[i]) {
      if (state == &short_state) short_done_at = i;
    }
  }
  EXPECT_LE(short_done_at, 1u);
  EXPECT_EQ(long_state.position(), 3200);
}

// Continuous batching (issue 11). A generation submits its next one-token decode step when the
// previous one is done, as session/generate.cc does.
class Generation {
 public:
  Generation(Scheduler* sched, uint64_t key, int steps) : sched_(sched), key_(key), left_(steps) {}
  void Start() { SubmitStep(); }
  std::future<void> Finished() { return finished_.get_future(); }
  const SequenceState* state() const { return &state_; }

 private:
  void SubmitStep() {
    Work w;
    w.key = key_;
    w.state = &state_;
    w.tokens = {static_cast<int32_t>(left_)};
    w.pace = Work::Pace::kDecode;
    w.on_done = [this](absl::Status s) {
      if (!s.ok() || --left_ == 0) return finished_.set_value();
      SubmitStep();
    };
    ASSERT_TRUE(sched_->Submit(std::move(w), /*bypass_limits=*/true).ok());
  }
  Scheduler* const sched_;
  const uint64_t key_;
  int left_;
  SequenceState state_;
  std::promise<void> finished_;
};

// Holds the engine thread in a task until Release, so that everything submitted meanwhile is
// planned together in the next batch.
class EngineHold {
 public:
  explicit EngineHold(Scheduler* sched) {
    Work w;
    w.key = 0;
    w.task = [this] { release_.get_future().wait(); };
    w.on_done = [](absl::Status) {};
    EXPECT_TRUE(sched->Submit(std::move(w)).ok());
  }
  void Release() { release_.set_value(); }

 private:
  std::promise<void> release_;
};

int64_t TokensOf(const FakeRunner::Batch& batch) {
  int64_t tokens = 0;
  for (const auto& [state, n] : batch) tokens += n;
  return tokens;
}

bool Holds(const FakeRunner::Batch& batch, const SequenceState* state) {
  return std::any_of(batch.begin(), batch.end(), [&](const auto& e) { return e.first == state; });
}

TEST(ContinuousBatchingTest, EveryStepServesEveryDecodeWhileALongIngestRunsInPieces) {
  FakeRunner fake;
  SchedulerOptions opt;
  opt.max_batch_tokens = 2048;
  opt.max_decode_batch_tokens = 64;
  auto sched = Scheduler::Create(fake.runner(), opt);
  ASSERT_TRUE(sched.ok()) << sched.status();
  constexpr int kGenerations = 8, kSteps = 20, kIngest = 5000;
  EngineHold hold(sched->get());
  SequenceState ingest_state;
  Result ingest;
  ASSERT_TRUE((*sched)->Submit(TokenWork(100, &ingest_state, Range(1000, kIngest), &ingest)).ok());
  std::vector<std::unique_ptr<Generation>> gens;
  for (int g = 0; g < kGenerations; ++g) {
    gens.push_back(std::make_unique<Generation>(sched->get(), g + 1, kSteps));
    gens.back()->Start();
  }
  hold.Release();
  for (auto& g : gens) g->Finished().wait();
  ASSERT_TRUE(ingest.done.get_future().get().ok());
  EXPECT_EQ(ingest_state.position(), kIngest);

  const auto batches = fake.batches();
  ASSERT_GE(batches.size(), static_cast<size_t>(kSteps));
  // Each of the first kSteps steps carried one token of every generation plus an ingest piece,
  // within the decode-step budget: the ingest never stalled a decode, nor inflated its step.
  for (int i = 0; i < kSteps; ++i) {
    for (const auto& g : gens) EXPECT_TRUE(Holds(batches[i], g->state())) << "step " << i;
    EXPECT_TRUE(Holds(batches[i], &ingest_state)) << "step " << i;
    EXPECT_EQ(TokensOf(batches[i]), opt.max_decode_batch_tokens) << "step " << i;
  }
  // Once the decodes are done, the ingest takes whole batches of the full budget.
  for (size_t i = kSteps; i < batches.size(); ++i) {
    EXPECT_LE(TokensOf(batches[i]), opt.max_batch_tokens);
  }
  ASSERT_GT(batches.size(), static_cast<size_t>(kSteps));
  EXPECT_EQ(TokensOf(batches[kSteps]), opt.max_batch_tokens);
  for (const auto& g : gens) EXPECT_EQ(g->state()->position(), kSteps);
}

TEST(ContinuousBatchingTest, DecodesGoFirstWhenTheBudgetIsTight) {
  FakeRunner fake;
  SchedulerOptions opt;
  opt.max_batch_tokens = 4;
  opt.max_decode_batch_tokens = 4;
  auto sched = Scheduler::Create(fake.runner(), opt);
  ASSERT_TRUE(sched.ok());
  EngineHold hold(sched->get());
  // The ingest is queued first, so plain round-robin order would serve it before the decodes.
  SequenceState ingest_state;
  Result ingest;
  ASSERT_TRUE((*sched)->Submit(TokenWork(100, &ingest_state, Range(0, 10), &ingest)).ok());
  std::vector<std::unique_ptr<Generation>> gens;
  for (int g = 0; g < 4; ++g) {
    gens.push_back(std::make_unique<Generation>(sched->get(), g + 1, 1));
    gens.back()->Start();
  }
  hold.Release();
  for (auto& g : gens) g->Finished().wait();
  ASSERT_TRUE(ingest.done.get_future().get().ok());
  const auto batches = fake.batches();
  ASSERT_FALSE(batches.empty());
  for (const auto& g : gens) EXPECT_TRUE(Holds(batches[0], g->state()));
  EXPECT_FALSE(Holds(batches[0], &ingest_state));
  for (const auto& batch : batches) EXPECT_LE(TokensOf(batch), 4);
}

TEST(ContinuousBatchingTest, DecodesPastTheBudgetGoFirstInTheNextStep) {
  FakeRunner fake;
  SchedulerOptions opt;
  opt.max_batch_tokens = 3;
  opt.max_decode_batch_tokens = 3;
  auto sched = Scheduler::Create(fake.runner(), opt);
  ASSERT_TRUE(sched.ok());
  EngineHold hold(sched->get());
  std::vector<std::unique_ptr<Generation>> gens;
  for (int g = 0; g < 5; ++g) {
    gens.push_back(std::make_unique<Generation>(sched->get(), g + 1, 2));
    gens.back()->Start();
  }
  hold.Release();
  for (auto& g : gens) g->Finished().wait();
  const auto batches = fake.batches();
  ASSERT_GE(batches.size(), 2u);
  for (const auto& batch : batches) EXPECT_LE(TokensOf(batch), 3);
  // The two left out of the first step are in the second.
  for (const auto& g : gens) {
    EXPECT_TRUE(Holds(batches[0], g->state()) || Holds(batches[1], g->state()));
  }
}

TEST(ContinuousBatchingTest, ManyDecodesAreNotCappedAndTheIngestStillAdvances) {
  FakeRunner fake;
  SchedulerOptions opt;
  opt.max_batch_tokens = 2048;
  opt.max_decode_batch_tokens = 8;
  auto sched = Scheduler::Create(fake.runner(), opt);
  ASSERT_TRUE(sched.ok());
  EngineHold hold(sched->get());
  SequenceState ingest_state;
  Result ingest;
  ASSERT_TRUE((*sched)->Submit(TokenWork(100, &ingest_state, Range(1000, 50), &ingest)).ok());
  std::vector<std::unique_ptr<Generation>> gens;
  for (int g = 0; g < 20; ++g) {
    gens.push_back(std::make_unique<Generation>(sched->get(), g + 1, 3));
    gens.back()->Start();
  }
  hold.Release();
  for (auto& g : gens) g->Finished().wait();
  ASSERT_TRUE(ingest.done.get_future().get().ok());
  const auto batches = fake.batches();
  ASSERT_GE(batches.size(), 3u);
  // 20 decodes in each of the first three steps, beyond the decode-step budget of 8, and the
  // ingest got its quarter of that budget (2 tokens) in each.
  for (int i = 0; i < 3; ++i) {
    for (const auto& g : gens) EXPECT_TRUE(Holds(batches[i], g->state())) << "step " << i;
    EXPECT_EQ(TokensOf(batches[i]), 22) << "step " << i;
  }
}

// A short run (a score of the same tokens on the same state) must give the same bits whatever
// decodes share its step: it goes whole instead of being split to fit the decode-step budget.
TEST(ContinuousBatchingTest, AShortRunGoesWholeBesideDecodes) {
  FakeRunner fake;
  SchedulerOptions opt;
  opt.max_batch_tokens = 2048;
  opt.max_decode_batch_tokens = 16;
  auto sched = Scheduler::Create(fake.runner(), opt);
  ASSERT_TRUE(sched.ok());
  EngineHold hold(sched->get());
  std::vector<std::unique_ptr<Generation>> gens;
  for (int g = 0; g < 8; ++g) {
    gens.push_back(std::make_unique<Generation>(sched->get(), g + 1, 2));
    gens.back()->Start();
  }
  SequenceState short_state, long_state;
  Result short_r, long_r;
  ASSERT_TRUE((*sched)->Submit(TokenWork(100, &long_state, Range(1000, 500), &long_r)).ok());
  ASSERT_TRUE((*sched)->Submit(TokenWork(101, &short_state, Range(2000, 16), &short_r)).ok());
  hold.Release();
  for (auto& g : gens) g->Finished().wait();
  ASSERT_TRUE(short_r.done.get_future().get().ok());
  ASSERT_TRUE(long_r.done.get_future().get().ok());
  const auto batches = fake.batches();
  ASSERT_FALSE(batches.empty());
  // Step 0: 8 decodes, the short run whole (16), the long one its quarter of the budget (4).
  for (const auto& [state, n] : batches[0]) {
    if (state == &short_state) {
      EXPECT_EQ(n, 16);
    }
    if (state == &long_state) {
      EXPECT_EQ(n, 4);
    }
  }
  EXPECT_TRUE(Holds(batches[0], &short_state));
  EXPECT_EQ(TokensOf(batches[0]), 8 + 16 + 4);
}

// An ingest of `ingest` tokens queued before an interactive run (a prompt) of `prompt` tokens,
// planned together; runs both to the end and returns the steps.
std::vector<FakeRunner::Batch> IngestBesidePrompt(const SchedulerOptions& opt, int ingest,
                                                  int prompt, SequenceState* ingest_state,
                                                  SequenceState* prompt_state) {
  FakeRunner fake;
  auto sched = Scheduler::Create(fake.runner(), opt);
  EXPECT_TRUE(sched.ok()) << sched.status();
  if (!sched.ok()) return {};
  EngineHold hold(sched->get());
  Result ingest_r, prompt_r;
  EXPECT_TRUE((*sched)->Submit(TokenWork(100, ingest_state, Range(1000, ingest), &ingest_r)).ok());
  Work w = TokenWork(101, prompt_state, Range(9000, prompt), &prompt_r);
  w.pace = Work::Pace::kInteractive;
  EXPECT_TRUE((*sched)->Submit(std::move(w)).ok());
  hold.Release();
  EXPECT_TRUE(prompt_r.done.get_future().get().ok());
  EXPECT_TRUE(ingest_r.done.get_future().get().ok());
  EXPECT_EQ(ingest_state->position(), ingest);
  EXPECT_EQ(prompt_state->position(), prompt);
  return fake.batches();
}

// Time to first token beside a long ingest: a prompt or a score (interactive) must not ride in
// an ingest step of the full budget, and once it is done the ingest gets whole steps again.
TEST(ContinuousBatchingTest, AnInteractiveRunKeepsItsStepShort) {
  SchedulerOptions opt;
  opt.max_batch_tokens = 2048;
  opt.max_decode_batch_tokens = 64;
  SequenceState ingest_state, prompt_state;
  const auto batches = IngestBesidePrompt(opt, 6000, 24, &ingest_state, &prompt_state);
  ASSERT_GE(batches.size(), 2u);
  // Step 0: the prompt whole (24) and an ingest piece up to the decode-step budget (40).
  EXPECT_TRUE(Holds(batches[0], &prompt_state));
  EXPECT_EQ(TokensOf(batches[0]), 64);
  EXPECT_EQ(TokensOf(batches[1]), opt.max_batch_tokens);
}

// A long interactive run (a 1000-token prompt) is planned before the ingests, as a prefill, and
// takes what the step has; the ingest keeps its quarter of the decode-step budget.
TEST(ContinuousBatchingTest, ALongPromptGoesBeforeTheIngests) {
  SchedulerOptions opt;
  opt.max_batch_tokens = 512;
  opt.max_decode_batch_tokens = 64;
  SequenceState ingest_state, prompt_state;
  const auto batches = IngestBesidePrompt(opt, 3000, 1000, &ingest_state, &prompt_state);
  ASSERT_GE(batches.size(), 3u);
  // The prompt's 1000 tokens: 496 + 496 (+ 8), each step topped up to the budget by the ingest's
  // quarter (16).
  for (int i = 0; i < 2; ++i) {
    for (const auto& [state, n] : batches[i]) {
      EXPECT_EQ(n, state == &prompt_state ? 496 : 16) << "step " << i;
    }
  }
}

TEST(ContinuousBatchingTest, RejectsAnEmptyDecodeBudget) {
  FakeRunner fake;
  SchedulerOptions opt;
  opt.max_decode_batch_tokens = 0;
  auto sched = Scheduler::Create(fake.runner(), opt);
  EXPECT_EQ(sched.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(sched.status().message().find("max_decode_batch_tokens"), std::string::npos);
}

TEST(SchedulerTest, FullQueueAnswersResourceExhausted) {
  FakeRunner fake;
  SchedulerOptions opt;
  opt.max_queued_items = 2;
  auto sched = Scheduler::Create(fake.runner(), opt);
  ASSERT_TRUE(sched.ok());
  fake.Close();
  SequenceState s[4];
  Result r[4];
  ASSERT_TRUE((*sched)->Submit(TokenWork(1, &s[0], {1}, &r[0])).ok());
  // Wait until the engine thread holds the first item in the (closed) runner.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_TRUE((*sched)->Submit(TokenWork(2, &s[1], {1}, &r[1])).ok());
  absl::Status third = (*sched)->Submit(TokenWork(3, &s[2], {1}, &r[2]));
  EXPECT_EQ(third.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(third.message().find("queue is full"), std::string::npos) << third;
  fake.Open();
  EXPECT_TRUE(r[0].done.get_future().get().ok());
  EXPECT_TRUE(r[1].done.get_future().get().ok());
}

TEST(SchedulerTest, CancelledWorkIsDroppedBeforeItRuns) {
  FakeRunner fake;
  auto sched = Scheduler::Create(fake.runner(), SchedulerOptions{});
  ASSERT_TRUE(sched.ok());
  fake.Close();
  SequenceState a, b;
  Result ra, rb;
  ASSERT_TRUE((*sched)->Submit(TokenWork(1, &a, {1, 2}, &ra)).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  Work w = TokenWork(2, &b, {3, 4}, &rb);
  w.cancel = std::make_shared<CancelToken>();
  auto cancel = w.cancel;
  ASSERT_TRUE((*sched)->Submit(std::move(w)).ok());
  cancel->Cancel();
  fake.Open();
  EXPECT_TRUE(ra.done.get_future().get().ok());
  EXPECT_EQ(rb.done.get_future().get().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(b.position(), 0);
}

// Records the queue waits the scheduler reports; Await blocks until `n` have come.
class WaitRecorder : public Scheduler::Observer {
 public:
  void OnQueueWait(const char* kind, double seconds) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      waits_.emplace_back(kind, seconds);
    }
    cv_.notify_all();
  }
  std::vector<std::pair<std::string, double>> Await(size_t n) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return waits_.size() >= n; });
    return waits_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::pair<std::string, double>> waits_;
};

TEST(SchedulerTest, ReportsEachWorkItemsQueueWaitOnceWithItsKind) {
  FakeRunner fake;
  WaitRecorder waits;
  auto sched = Scheduler::Create(fake.runner(), SchedulerOptions{}, &waits);
  ASSERT_TRUE(sched.ok());
  fake.Close();
  SequenceState a, d;
  Result ra, rd;
  ASSERT_TRUE((*sched)->Submit(TokenWork(1, &a, Range(1, 40), &ra)).ok());
  waits.Await(1);  // the engine thread took the ingest up and now waits in the closed runner
  std::promise<absl::Status> task_done;
  Work task;
  task.key = 2;
  task.task = [] {};
  task.on_done = [&task_done](absl::Status st) { task_done.set_value(st); };
  ASSERT_TRUE((*sched)->Submit(std::move(task)).ok());
  Work decode = TokenWork(3, &d, {7}, &rd);
  decode.pace = Work::Pace::kDecode;
  ASSERT_TRUE((*sched)->Submit(std::move(decode)).ok());
  const auto queued = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const double held =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - queued).count();
  fake.Open();  // only now can the engine thread reach the task and the decode
  EXPECT_TRUE(ra.done.get_future().get().ok());
  EXPECT_TRUE(task_done.get_future().get().ok());
  EXPECT_TRUE(rd.done.get_future().get().ok());
  const auto seen = waits.Await(3);
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen[0].first, "ingest");
  std::vector<std::string> later = {seen[1].first, seen[2].first};
  std::sort(later.begin(), later.end());
  EXPECT_EQ(later, (std::vector<std::string>{"decode", "task"}));
  EXPECT_GE(seen[1].second, held);  // both waited at least while the runner was closed
  EXPECT_GE(seen[2].second, held);
}

TEST(SchedulerTest, ABadItemDoesNotFailItsBatchNeighbours) {
  FakeRunner fake;
  auto sched = Scheduler::Create(fake.runner(), SchedulerOptions{});
  ASSERT_TRUE(sched.ok());
  fake.Close();
  SequenceState good, bad;
  Result rg, rb;
  ASSERT_TRUE((*sched)->Submit(TokenWork(1, &good, {1, 2, 3}, &rg)).ok());
  ASSERT_TRUE((*sched)->Submit(TokenWork(2, &bad, {4, 999}, &rb)).ok());
  fake.Open();
  EXPECT_TRUE(rg.done.get_future().get().ok());
  absl::Status bad_status = rb.done.get_future().get();
  EXPECT_EQ(bad_status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad_status.message().find("999"), std::string::npos);
  EXPECT_EQ(good.position(), 3);
  EXPECT_EQ(bad.position(), 0);
}

TEST(SchedulerTest, TasksRunInOrderWithTheKeysTokenWork) {
  FakeRunner fake;
  auto sched = Scheduler::Create(fake.runner(), SchedulerOptions{});
  ASSERT_TRUE(sched.ok());
  fake.Close();
  SequenceState s;
  Result r;
  ASSERT_TRUE((*sched)->Submit(TokenWork(7, &s, {1, 2, 3, 4}, &r)).ok());
  int64_t seen = -1;
  std::promise<void> ran;
  Work task;
  task.key = 7;
  task.task = [&] { seen = s.position(); };
  task.on_done = [&](absl::Status) { ran.set_value(); };
  ASSERT_TRUE((*sched)->Submit(std::move(task)).ok());
  fake.Open();
  ran.get_future().wait();
  EXPECT_EQ(seen, 4);  // after the token run queued before it
}

TEST(SchedulerTest, PrepareFailureFinishesTheWorkWithItsStatus) {
  FakeRunner fake;
  auto sched = Scheduler::Create(fake.runner(), SchedulerOptions{});
  ASSERT_TRUE(sched.ok());
  SequenceState s;
  Result r;
  Work w = TokenWork(1, &s, {1, 2}, &r);
  w.prepare = [] { return absl::DataLossError("spill file corrupt"); };
  ASSERT_TRUE((*sched)->Submit(std::move(w)).ok());
  EXPECT_EQ(r.done.get_future().get().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(s.position(), 0);
}

// The state cache's hook (session/ingest.cc): prepare adopts a state that holds a run's first
// tokens and asks for a batch to end at a chunk boundary, where the state is cached.
TEST(SchedulerTest, APlanSkipsTokensPrepareAppliedAndEndsABatchAtItsStop) {
  FakeRunner fake;
  auto sched = Scheduler::Create(fake.runner(), SchedulerOptions{});
  ASSERT_TRUE(sched.ok());
  SequenceState s;
  Result r;
  std::vector<int64_t> offsets;
  Work w = TokenWork(1, &s, Range(0, 20), &r);
  w.plan = std::make_shared<Work::Plan>();
  w.prepare = [plan = w.plan] {
    plan->applied = 5;
    plan->stop_at = 12;
    return absl::OkStatus();
  };
  w.on_progress = [&r, &offsets](absl::Span<const float> lp, int64_t offset) {
    r.logprobs.insert(r.logprobs.end(), lp.begin(), lp.end());
    offsets.push_back(offset);
  };
  ASSERT_TRUE((*sched)->Submit(std::move(w)).ok());
  ASSERT_TRUE(r.done.get_future().get().ok());
  EXPECT_EQ(offsets, (std::vector<int64_t>{5, 12}));
  std::vector<float> expected;
  for (int32_t t : Range(5, 15)) expected.push_back(static_cast<float>(t));
  EXPECT_EQ(r.logprobs, expected);
  EXPECT_EQ(s.position(), 15);  // the fake applied only what was not skipped

  // A run whose every token prepare applied completes without a batch.
  const size_t batches = fake.batches().size();
  Result all;
  Work whole = TokenWork(2, &s, Range(0, 8), &all);
  whole.plan = std::make_shared<Work::Plan>();
  whole.prepare = [plan = whole.plan] {
    plan->applied = 8;
    return absl::OkStatus();
  };
  ASSERT_TRUE((*sched)->Submit(std::move(whole)).ok());
  EXPECT_TRUE(all.done.get_future().get().ok());
  EXPECT_TRUE(all.logprobs.empty());
  EXPECT_EQ(fake.batches().size(), batches);
}

TEST(SchedulerTest, ShutdownAnswersQueuedWorkUnavailable) {
  FakeRunner fake;
  auto sched = Scheduler::Create(fake.runner(), SchedulerOptions{});
  ASSERT_TRUE(sched.ok());
  fake.Close();
  SequenceState a, b;
  Result ra, rb;
  ASSERT_TRUE((*sched)->Submit(TokenWork(1, &a, {1}, &ra)).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_TRUE((*sched)->Submit(TokenWork(2, &b, {1}, &rb)).ok());
  std::thread stopper([&] { (*sched)->Shutdown(); });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  fake.Open();
  stopper.join();
  EXPECT_TRUE(ra.done.get_future().get().ok());
  EXPECT_EQ(rb.done.get_future().get().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ((*sched)->Submit(TokenWork(3, &b, {1}, &rb)).code(), absl::StatusCode::kUnavailable);
}

// Issue 9 #1: a token run submitted to a key that the current round had already passed (here
// from another key's prepare or task, which run with the queue unlocked) must not be batched
// before its own prepare has run: for Score and Generate, prepare copies the session into the
// state the batch runs on, and the model crashed on the empty state.
class PrepareOrderTest : public ::testing::TestWithParam<bool> {
 protected:
  // Records "prepare <key>" and "batch <key>" events in the order they happen.
  BatchRunner Runner() {
    return [this](absl::Span<IngestItem> items) -> absl::StatusOr<std::vector<IngestLogProbs>> {
      std::vector<IngestLogProbs> out;
      for (auto& item : items) {
        Record("batch " + std::to_string(item.state->position()));
        out.push_back(IngestLogProbs(item.tokens.size(), 0.0f));
      }
      return out;
    };
  }
  void Record(std::string event) {
    std::lock_guard<std::mutex> lock(mu_);
    events_.push_back(std::move(event));
  }
  std::vector<std::string> events() {
    std::lock_guard<std::mutex> lock(mu_);
    return events_;
  }

 private:
  std::mutex mu_;
  std::vector<std::string> events_;
};

TEST_P(PrepareOrderTest, ATokenRunIsNeverBatchedBeforeItsPrepareRan) {
  const bool from_task = GetParam();
  auto sched = Scheduler::Create(Runner(), SchedulerOptions{});
  ASSERT_TRUE(sched.ok()) << sched.status();
  // Each state's position names its key (the fake runner records it); prepare sets it.
  SequenceState state1, state2;
  Result r1, r2;

  // Hold the engine thread in a task of key 2, so that key 1's work queues behind it and the
  // round visits key 2 (now empty) before key 1.
  std::promise<void> holding, release;
  std::shared_future<void> released = release.get_future().share();
  Work hold;
  hold.key = 2;
  hold.task = [&holding, released] {
    holding.set_value();
    released.wait();
  };
  hold.on_done = [](absl::Status) {};
  ASSERT_TRUE((*sched)->Submit(std::move(hold)).ok());
  holding.get_future().wait();

  // Key 1's prepare (or task) submits a token run with a prepare to key 2, already passed.
  auto submit_to_2 = [&] {
    Work w = TokenWork(2, &state2, {5, 6}, &r2);
    w.prepare = [&] {
      Record("prepare 2");
      TensorsOf(state2).position = 2;
      return absl::OkStatus();
    };
    EXPECT_TRUE((*sched)->Submit(std::move(w)).ok());
  };
  Work w1 = TokenWork(1, &state1, {1, 2, 3}, &r1);
  w1.prepare = [&] {
    Record("prepare 1");
    TensorsOf(state1).position = 1;
    if (!from_task) submit_to_2();
    return absl::OkStatus();
  };
  if (from_task) {
    Work task;
    task.key = 1;
    task.task = submit_to_2;
    task.on_done = [](absl::Status) {};
    ASSERT_TRUE((*sched)->Submit(std::move(task)).ok());
  }
  ASSERT_TRUE((*sched)->Submit(std::move(w1)).ok());
  release.set_value();

  EXPECT_TRUE(r1.done.get_future().get().ok());
  EXPECT_TRUE(r2.done.get_future().get().ok());
  const auto ev = events();
  const std::string trace = ::testing::PrintToString(ev);
  for (const std::string key : {"1", "2"}) {
    const auto prepared = std::find(ev.begin(), ev.end(), "prepare " + key) - ev.begin();
    const auto batched = std::find(ev.begin(), ev.end(), "batch " + key) - ev.begin();
    EXPECT_LT(prepared, static_cast<ptrdiff_t>(ev.size()))
        << "key " << key << " was never prepared: " << trace;
    EXPECT_LT(batched, static_cast<ptrdiff_t>(ev.size()))
        << "key " << key << " was never batched: " << trace;
    EXPECT_LT(prepared, batched) << "key " << key << " was batched before its prepare: " << trace;
  }
  // No batch ran on an unprepared state (position 0).
  EXPECT_EQ(std::count(ev.begin(), ev.end(), "batch 0"), 0)
      << "a token run was batched before its prepare ran: " << trace;
}

INSTANTIATE_TEST_SUITE_P(SubmittedFrom, PrepareOrderTest, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "Task" : "Prepare"; });

}  // namespace
}  // namespace ttt::engine
