// engine_bench --only=cache: bench/cache_rows.h.
#include "bench/cache_rows.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <memory>
#include <random>
#include <vector>

#include "engine/scheduler.h"
#include "session/session.h"

namespace ttt::bench {
namespace {

namespace fs = std::filesystem;

void Check(const absl::Status& status) {
  if (!status.ok()) {
    std::fprintf(stderr, "cache rows: %s\n", status.ToString().c_str());
    std::exit(1);
  }
}

std::vector<int32_t> Document(int64_t n, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> v;
  for (int64_t i = 0; i < n; ++i) v.push_back(3 + static_cast<int32_t>(rng() % (vocab - 3)));
  return v;
}

// A session manager over `model` with the state cache on (`cache_bytes` > 0) or off, its files
// in a folder of its own, removed with it.
class Manager {
 public:
  Manager(const engine::Model& model, int64_t cache_bytes) {
    auto scheduler = engine::Scheduler::Create(&model, engine::SchedulerOptions{});
    Check(scheduler.status());
    scheduler_ = std::move(*scheduler);
    dir_ = fs::temp_directory_path() /
           ("ttt-cache-bench-" + std::to_string(::getpid()) + "-" + std::to_string(cache_bytes));
    session::ManagerOptions options;
    options.checkpoint_dir = dir_;
    options.memory_budget_bytes = int64_t{64} << 30;  // nothing evicted
    options.persist_interval_ms = 0;                  // nothing written while timed
    options.reaper_interval_ms = 3600 * 1000;
    options.state_cache.budget_bytes = cache_bytes;
    auto manager = session::SessionManager::Create(&model, scheduler_.get(), options);
    Check(manager.status());
    manager_ = std::move(*manager);
  }
  ~Manager() {
    manager_.reset();
    scheduler_.reset();
    fs::remove_all(dir_);
  }

  // Seconds on `now`'s clock that a new session's Ingest of `document` takes.
  double TimeIngest(const std::vector<int32_t>& document, const std::function<double()>& now) {
    auto info = manager_->CreateSession("bench", session::SessionOptions{});
    Check(info.status());
    auto writer = manager_->OpenWriter("bench", info->id, "bench");
    Check(writer.status());
    std::promise<absl::Status> done;
    const double start = now();
    Check((*writer)->Ingest(
        document, false, nullptr,
        [&](absl::StatusOr<session::IngestProgress> r) { done.set_value(r.status()); }));
    Check(done.get_future().get());
    const double seconds = now() - start;
    writer->reset();
    Check(manager_->DeleteSession("bench", info->id));
    return seconds;
  }

 private:
  std::unique_ptr<engine::Scheduler> scheduler_;
  fs::path dir_;
  std::unique_ptr<session::SessionManager> manager_;
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

void CacheTableHeader() {
  std::printf(
      "\n| model | tokens | cache off | computed (populates) | adopted | computed / adopted | "
      "populating vs off |\n|---|---|---|---|---|---|---|\n");
}

void CacheTable(const std::string& label, const engine::Model& model, int64_t tokens, int rounds,
                const std::function<double()>& now) {
  const int64_t chunk = model.config().ttt_chunk;
  tokens = std::max<int64_t>(chunk, tokens / chunk * chunk);
  Manager off(model, 0), on(model, int64_t{16} << 30);
  std::vector<double> t_off, t_computed, t_adopted;
  // One round first, untimed: the engine's workspaces and the allocator warm up.
  for (int round = -1; round < rounds; ++round) {
    const std::vector<int32_t> document =
        Document(tokens, model.config().vocab_size, 1000 + static_cast<uint32_t>(round + 1));
    const double a = off.TimeIngest(document, now);
    const double b = on.TimeIngest(document, now);  // the first reader: a miss, then inserts
    const double c = on.TimeIngest(document, now);  // the next: a hit
    if (round < 0) continue;
    t_off.push_back(a);
    t_computed.push_back(b);
    t_adopted.push_back(c);
  }
  const double off_s = Median(t_off), computed = Median(t_computed), adopted = Median(t_adopted);
  std::printf("| %s | %lld | %.4f s | %.4f s | %.5f s | %.0fx | %.3f |\n", label.c_str(),
              static_cast<long long>(tokens), off_s, computed, adopted, computed / adopted,
              computed / off_s);
}

}  // namespace ttt::bench
