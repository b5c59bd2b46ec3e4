// ttt loadgen N: N concurrent sessions each create, ingest --doc_tokens random tokens and
// generate --max_tokens, then delete; run once with --baseline sessions and once with N.
// Prints aggregate tokens/s, p50/p99 latencies and the N vs baseline throughput ratio.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "cli/client.h"
#include "cli/commands.h"
#include "cli/flags.h"

namespace ttt::cli {

namespace pb = tttserve::v1;
using Clock = std::chrono::steady_clock;

namespace {

struct LoadResult {
  double seconds = 0;
  int64_t tokens = 0;                  // ingested + generated
  std::vector<double> ingest_latency;  // per ingest message
  std::vector<double> ttft;            // per generate: time to first token
  std::vector<double> gen_latency;     // per generate: whole call
  int errors = 0;

  void Add(const LoadResult& r) {
    tokens += r.tokens;
    errors += r.errors;
    ingest_latency.insert(ingest_latency.end(), r.ingest_latency.begin(), r.ingest_latency.end());
    ttft.insert(ttft.end(), r.ttft.begin(), r.ttft.end());
    gen_latency.insert(gen_latency.end(), r.gen_latency.begin(), r.gen_latency.end());
  }
};

double Seconds(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5));
  return v[i];
}

// Ingests --doc_tokens random ids, one message at a time (each timed until its response).
void IngestRandom(pb::TttService::Stub& stub, const std::string& id, int64_t vocab,
                  std::mt19937& rng, LoadResult* mine) {
  const int64_t doc_tokens = absl::GetFlag(FLAGS_doc_tokens);
  const int64_t per = std::max<int64_t>(1, absl::GetFlag(FLAGS_message_tokens) / 4);
  auto ctx = Context();
  auto stream = stub.Ingest(ctx.get());
  for (int64_t pos = 0; pos < doc_tokens; pos += per) {
    pb::IngestRequest r;
    if (pos == 0) r.set_session_id(id);
    for (int64_t j = pos; j < std::min(doc_tokens, pos + per); ++j) {
      r.add_token_ids(3 + static_cast<int32_t>(rng() % (vocab - 3)));
    }
    const auto t0 = Clock::now();
    pb::IngestResponse resp;
    if (!stream->Write(r) || !stream->Read(&resp)) break;
    mine->ingest_latency.push_back(Seconds(t0));
    mine->tokens += r.token_ids_size();
  }
  stream->WritesDone();
  if (!stream->Finish().ok()) ++mine->errors;
}

void GenerateTimed(pb::TttService::Stub& stub, const std::string& id, int seed,
                   LoadResult* mine) {
  auto ctx = Context();
  pb::GenerateRequest g;
  g.set_session_id(id);
  g.set_max_tokens(absl::GetFlag(FLAGS_max_tokens));
  g.set_temperature(0.8);
  g.set_seed(seed);
  g.set_ignore_eos(true);
  const auto t0 = Clock::now();
  auto reader = stub.Generate(ctx.get(), g);
  pb::GenerateResponse resp;
  bool first = true;
  while (reader->Read(&resp)) {
    if (!resp.has_token_id()) continue;
    if (first) mine->ttft.push_back(Seconds(t0));
    first = false;
    ++mine->tokens;
  }
  if (!reader->Finish().ok()) ++mine->errors;
  mine->gen_latency.push_back(Seconds(t0));
}

// One client's whole life: create, ingest, generate, delete.
LoadResult RunClient(pb::TttService::Stub& stub, int i, int64_t vocab) {
  LoadResult mine;
  std::mt19937 rng(1234 + i);
  pb::Session s;
  grpc::Status st = stub.CreateSession(Context().get(), pb::CreateSessionRequest(), &s);
  if (!st.ok()) {
    Fail(st);
    ++mine.errors;
    return mine;
  }
  IngestRandom(stub, s.session_id(), vocab, rng, &mine);
  GenerateTimed(stub, s.session_id(), i, &mine);
  pb::DeleteSessionRequest d;
  d.set_session_id(s.session_id());
  pb::DeleteSessionResponse dr;
  stub.DeleteSession(Context().get(), d, &dr);
  return mine;
}

LoadResult RunLoad(pb::TttService::Stub& stub, int n, int64_t vocab) {
  LoadResult total;
  std::mutex mu;
  const auto start = Clock::now();
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      LoadResult mine = RunClient(stub, i, vocab);
      std::lock_guard<std::mutex> lock(mu);
      total.Add(mine);
    });
  }
  for (auto& t : threads) t.join();
  total.seconds = Seconds(start);
  return total;
}

void Report(int n, const LoadResult& r) {
  std::printf("N=%-3d %8.0f tokens/s  (%lld tokens in %.2fs, %d errors)  ingest msg p50 %.1fms "
              "p99 %.1fms  TTFT p50 %.1fms p99 %.1fms  generate p50 %.1fms p99 %.1fms\n",
              n, r.tokens / r.seconds, static_cast<long long>(r.tokens), r.seconds, r.errors,
              1e3 * Percentile(r.ingest_latency, 0.5), 1e3 * Percentile(r.ingest_latency, 0.99),
              1e3 * Percentile(r.ttft, 0.5), 1e3 * Percentile(r.ttft, 0.99),
              1e3 * Percentile(r.gen_latency, 0.5), 1e3 * Percentile(r.gen_latency, 0.99));
}

}  // namespace

int RunLoadgen(int argc, char** argv) {
  int n = 0;
  if (!absl::SimpleAtoi(Arg(argc, argv, 1), &n) || n < 1 || n > 1024) {
    return Usage("loadgen needs a session count N in [1, 1024]");
  }
  auto stub = Stub();
  pb::ServerInfo info;
  grpc::Status st = stub->GetServerInfo(Context().get(), pb::GetServerInfoRequest(), &info);
  if (!st.ok()) return Fail(st);
  const int base = static_cast<int>(std::max<int64_t>(1, absl::GetFlag(FLAGS_baseline)));
  LoadResult one = RunLoad(*stub, base, info.vocab_size());
  Report(base, one);
  LoadResult many = RunLoad(*stub, n, info.vocab_size());
  Report(n, many);
  std::printf("throughput ratio N=%d / N=%d: %.2fx\n", n, base,
              (many.tokens / many.seconds) / (one.tokens / one.seconds));
  return one.errors + many.errors == 0 ? 0 : 1;
}

}  // namespace ttt::cli
