// ttt loadgen N: N concurrent sessions each create, ingest --doc_tokens random tokens and
// generate --max_tokens, then delete; run once with N and before that as a baseline: the same
// number of sessions, --baseline at a time.
// Prints aggregate tokens/s, p50/p99 latencies (ingest message, time to first token, inter-token)
// and the N vs baseline throughput ratio. --mix=decode is the decode-heavy mix (ingest 256,
// generate 128). --background_ingest_tokens=T instead runs the N sessions alone, then again
// while one more session ingests T tokens, and prints the inter-token latency ratio: how much
// a long ingest slows decoding (continuous batching keeps it small). --protocol=http generates
// through the OpenAI-compatible endpoint (SSE) instead of gRPC's Generate, for the cost of the
// HTTP front door against gRPC under the same load (bench/RESULTS.md). --measure=decode times
// only the generation phase (all sessions ingested first, then all generate greedily at once):
// the server's decode tokens/s, which bench/server_overhead.sh puts against engine_bench's.
// --mix=shared_document: the N sessions read one document (the first alone, then the others at
// once), then diverge; it prints the time of the first read against the others' (with
// ttt-serve --state_cache_mb they adopt the first one's state) and the sessions' memory.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <future>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/flags/flag.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "auth/client_credentials.h"
#include "cli/client.h"
#include "cli/flags.h"
#include "tools/load/http_client.h"
#include "tools/load/loadgen.h"

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
  std::vector<double> itl;             // inter-token latency: between consecutive tokens
  int errors = 0;

  void Add(const LoadResult& r) {
    tokens += r.tokens;
    errors += r.errors;
    ingest_latency.insert(ingest_latency.end(), r.ingest_latency.begin(), r.ingest_latency.end());
    ttft.insert(ttft.end(), r.ttft.begin(), r.ttft.end());
    gen_latency.insert(gen_latency.end(), r.gen_latency.begin(), r.gen_latency.end());
    itl.insert(itl.end(), r.itl.begin(), r.itl.end());
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

// What each session does.
struct Mix {
  int64_t doc_tokens;  // ingested first
  int32_t gen_tokens;  // then generated
};

absl::StatusOr<Mix> MixFromFlags() {
  const std::string mix = absl::GetFlag(FLAGS_mix);
  if (mix == "default") {
    return Mix{absl::GetFlag(FLAGS_doc_tokens), absl::GetFlag(FLAGS_max_tokens)};
  }
  if (mix == "decode") return Mix{256, 128};
  if (mix == "shared_document") {
    return Mix{absl::GetFlag(FLAGS_doc_tokens), absl::GetFlag(FLAGS_max_tokens)};
  }
  return absl::InvalidArgumentError("--mix must be default, decode or shared_document");
}

int32_t RandomToken(std::mt19937& rng, int64_t vocab) {
  return 3 + static_cast<int32_t>(rng() % (vocab - 3));
}

// Ingests `doc` into `id` in messages of --message_tokens/4 ids, each timed until its answer;
// returns the seconds from the first write to the last answer.
double IngestDocument(pb::TttService::Stub& stub, const std::string& id,
                      const std::vector<int32_t>& doc, LoadResult* mine) {
  const size_t per =
      static_cast<size_t>(std::max<int64_t>(1, absl::GetFlag(FLAGS_message_tokens) / 4));
  const auto start = Clock::now();
  auto ctx = Context();
  auto stream = stub.Ingest(ctx.get());
  for (size_t pos = 0; pos < doc.size(); pos += per) {
    pb::IngestRequest r;
    if (pos == 0) r.set_session_id(id);
    for (size_t j = pos; j < std::min(doc.size(), pos + per); ++j) r.add_token_ids(doc[j]);
    const auto t0 = Clock::now();
    pb::IngestResponse resp;
    if (!stream->Write(r) || !stream->Read(&resp)) break;
    mine->ingest_latency.push_back(Seconds(t0));
    mine->tokens += r.token_ids_size();
  }
  stream->WritesDone();
  if (!stream->Finish().ok()) ++mine->errors;
  return Seconds(start);
}

// Ingests `doc_tokens` random ids, one message at a time (each timed until its response).
void IngestRandom(pb::TttService::Stub& stub, const std::string& id, int64_t vocab,
                  int64_t doc_tokens, std::mt19937& rng, LoadResult* mine) {
  std::vector<int32_t> doc(doc_tokens);
  for (int32_t& t : doc) t = RandomToken(rng, vocab);
  IngestDocument(stub, id, doc, mine);
}

// `greedy`: temperature 0 (the cheapest sampling: what engine_bench's decode rows compare with).
void GenerateTimed(pb::TttService::Stub& stub, const std::string& id, int32_t gen_tokens, int seed,
                   LoadResult* mine, bool greedy = false) {
  auto ctx = Context();
  pb::GenerateRequest g;
  g.set_session_id(id);
  g.set_max_tokens(gen_tokens);
  g.set_temperature(greedy ? 0.0 : 0.8);
  g.set_seed(seed);
  g.set_ignore_eos(true);
  const auto t0 = Clock::now();
  auto reader = stub.Generate(ctx.get(), g);
  pb::GenerateResponse resp;
  std::optional<Clock::time_point> last;
  while (reader->Read(&resp)) {
    if (!resp.has_token_id()) continue;
    const auto now = Clock::now();
    if (last) {
      mine->itl.push_back(std::chrono::duration<double>(now - *last).count());
    } else {
      mine->ttft.push_back(std::chrono::duration<double>(now - t0).count());
    }
    last = now;
    ++mine->tokens;
  }
  if (!reader->Finish().ok()) ++mine->errors;
  mine->gen_latency.push_back(Seconds(t0));
}

// GenerateTimed through POST /v1/completions (stream, logprobs 1: one event per token), the
// session chosen by x-session-id, timed per event as GenerateTimed times responses.
void GenerateOverHttp(const std::string& id, int32_t gen_tokens, int seed, LoadResult* mine) {
  std::vector<std::pair<std::string, std::string>> headers = {{"x-session-id", id}};
  if (!absl::GetFlag(FLAGS_tenant).empty()) {
    headers.emplace_back("x-tenant-id", absl::GetFlag(FLAGS_tenant));
  }
  const std::string token = auth::TokenFromFlagOrEnvironment(absl::GetFlag(FLAGS_token));
  if (!token.empty()) headers.emplace_back("Authorization", "Bearer " + token);
  const nlohmann::json body = {{"max_tokens", gen_tokens}, {"temperature", 0.8}, {"seed", seed},
                               {"ignore_eos", true},       {"stream", true},     {"logprobs", 1}};
  const auto t0 = Clock::now();
  std::optional<Clock::time_point> last;
  std::string failure;
  auto status =
      PostStreaming(absl::GetFlag(FLAGS_http_address), "/v1/completions", headers, body.dump(),
                    [&](std::string_view data) {
                      if (data == "[DONE]") return;
                      const nlohmann::json event = nlohmann::json::parse(data, nullptr, false);
                      if (event.is_discarded() || !event.contains("choices")) {
                        failure = std::string(data.substr(0, 200));
                        return;
                      }
                      for (const auto& choice : event["choices"]) {
                        if (!choice.contains("logprobs") || !choice["logprobs"].is_object())
                          continue;
                        const size_t n = choice["logprobs"]["token_logprobs"].size();
                        for (size_t k = 0; k < n; ++k) {
                          const auto now = Clock::now();
                          if (last) {
                            mine->itl.push_back(std::chrono::duration<double>(now - *last).count());
                          } else {
                            mine->ttft.push_back(std::chrono::duration<double>(now - t0).count());
                          }
                          last = now;
                          ++mine->tokens;
                        }
                      }
                    });
  if (!status.ok() || *status != 200 || !failure.empty()) {
    std::fprintf(stderr, "ttt: loadgen over HTTP: %s\n",
                 !status.ok() ? std::string(status.status().message()).c_str() : failure.c_str());
    ++mine->errors;
  }
  mine->gen_latency.push_back(Seconds(t0));
}

std::optional<std::string> CreateSession(pb::TttService::Stub& stub) {
  pb::Session s;
  grpc::Status st = stub.CreateSession(Context().get(), pb::CreateSessionRequest(), &s);
  if (!st.ok()) {
    Fail(st);
    return std::nullopt;
  }
  return s.session_id();
}

void DeleteSession(pb::TttService::Stub& stub, const std::string& id) {
  pb::DeleteSessionRequest d;
  d.set_session_id(id);
  pb::DeleteSessionResponse dr;
  stub.DeleteSession(Context().get(), d, &dr);
}

// One client's whole life: create, ingest, generate, delete.
LoadResult RunClient(pb::TttService::Stub& stub, int i, int64_t vocab, const Mix& mix) {
  LoadResult mine;
  std::mt19937 rng(1234 + i);
  std::optional<std::string> id = CreateSession(stub);
  if (!id) {
    ++mine.errors;
    return mine;
  }
  IngestRandom(stub, *id, vocab, mix.doc_tokens, rng, &mine);
  if (absl::GetFlag(FLAGS_protocol) == "http") {
    GenerateOverHttp(*id, mix.gen_tokens, i, &mine);
  } else {
    GenerateTimed(stub, *id, mix.gen_tokens, i, &mine);
  }
  DeleteSession(stub, *id);
  return mine;
}

// The long ingest that runs beside the generating sessions: all of it written at once (messages
// of 4096 tokens, without waiting for answers), so the server holds one long run to split.
struct BackgroundIngest {
  double seconds = 0;  // from its first write to its last answer
  bool ok = false;
};

BackgroundIngest IngestLong(pb::TttService::Stub& stub, int64_t vocab, int64_t tokens,
                            std::promise<void>* started) {
  BackgroundIngest out;
  std::optional<std::string> id = CreateSession(stub);
  if (!id) {
    started->set_value();
    return out;
  }
  std::mt19937 rng(99);
  constexpr int64_t kPerMessage = 4096;
  auto ctx = Context();
  auto stream = stub.Ingest(ctx.get());
  const auto t0 = Clock::now();
  int64_t messages = 0;
  for (int64_t pos = 0; pos < tokens; pos += kPerMessage, ++messages) {
    pb::IngestRequest r;
    if (pos == 0) r.set_session_id(*id);
    for (int64_t j = pos; j < std::min(tokens, pos + kPerMessage); ++j) {
      r.add_token_ids(RandomToken(rng, vocab));
    }
    if (!stream->Write(r)) break;
    if (pos == 0) started->set_value();
  }
  if (messages == 0) started->set_value();
  stream->WritesDone();
  pb::IngestResponse resp;
  while (stream->Read(&resp)) {
  }
  out.ok = stream->Finish().ok();
  out.seconds = Seconds(t0);
  DeleteSession(stub, *id);
  return out;
}

// n concurrent clients, each living `rounds` sessions one after another.
LoadResult RunLoad(pb::TttService::Stub& stub, int n, int64_t vocab, const Mix& mix,
                   int rounds = 1) {
  LoadResult total;
  std::mutex mu;
  const auto start = Clock::now();
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      for (int round = 0; round < rounds; ++round) {
        LoadResult mine = RunClient(stub, i * rounds + round, vocab, mix);
        std::lock_guard<std::mutex> lock(mu);
        total.Add(mine);
      }
    });
  }
  for (auto& t : threads) t.join();
  total.seconds = Seconds(start);
  return total;
}

// --measure=decode: n sessions are created and ingest their document (untimed); then all of them
// generate at once, greedily, and only that phase is timed. tokens: the generated ones.
LoadResult RunDecodePhase(pb::TttService::Stub& stub, int n, int64_t vocab, const Mix& mix) {
  std::vector<std::optional<std::string>> ids(n);
  LoadResult untimed;
  std::mutex mu;
  auto in_parallel = [n](const std::function<void(int)>& each) {
    std::vector<std::thread> threads;
    for (int i = 0; i < n; ++i) threads.emplace_back(each, i);
    for (auto& t : threads) t.join();
  };
  in_parallel([&](int i) {
    std::mt19937 rng(1234 + i);
    LoadResult mine;
    ids[i] = CreateSession(stub);
    if (ids[i]) IngestRandom(stub, *ids[i], vocab, mix.doc_tokens, rng, &mine);
    std::lock_guard<std::mutex> lock(mu);
    untimed.errors += mine.errors + (ids[i] ? 0 : 1);
  });
  LoadResult total;
  total.errors = untimed.errors;
  const auto start = Clock::now();
  in_parallel([&](int i) {
    if (!ids[i]) return;
    LoadResult mine;
    GenerateTimed(stub, *ids[i], mix.gen_tokens, i, &mine, /*greedy=*/true);
    std::lock_guard<std::mutex> lock(mu);
    total.Add(mine);
  });
  total.seconds = Seconds(start);
  in_parallel([&](int i) {
    if (ids[i]) DeleteSession(stub, *ids[i]);
  });
  return total;
}

int CompareDecode(pb::TttService::Stub& stub, int n, int base, int64_t vocab, const Mix& mix) {
  const LoadResult one = RunDecodePhase(stub, base, vocab, mix);
  const LoadResult many = RunDecodePhase(stub, n, vocab, mix);
  for (const auto& [count, r] : {std::pair<int, const LoadResult&>(base, one), {n, many}}) {
    std::printf(
        "decode N=%-3d %8.0f tokens/s  (%lld generated in %.2fs, %d errors)  ITL p50 "
        "%.2fms p99 %.2fms\n",
        count, r.tokens / r.seconds, static_cast<long long>(r.tokens), r.seconds, r.errors,
        1e3 * Percentile(r.itl, 0.5), 1e3 * Percentile(r.itl, 0.99));
  }
  std::printf("decode throughput ratio N=%d / N=%d: %.2fx\n", n, base,
              (many.tokens / many.seconds) / (one.tokens / one.seconds));
  return one.errors + many.errors == 0 ? 0 : 1;
}

// The N sessions while one more session ingests `tokens` (started first, so it is queued when
// the sessions' own work arrives).
LoadResult RunLoadBesideIngest(pb::TttService::Stub& stub, int n, int64_t vocab, const Mix& mix,
                               int64_t tokens) {
  std::promise<void> started;
  auto started_future = started.get_future();
  BackgroundIngest bg;
  std::thread ingest([&] { bg = IngestLong(stub, vocab, tokens, &started); });
  started_future.wait();
  LoadResult r = RunLoad(stub, n, vocab, mix);
  ingest.join();
  if (!bg.ok) ++r.errors;
  std::printf("background ingest of %lld tokens: %.2fs (%s); the %d sessions took %.2fs\n",
              static_cast<long long>(tokens), bg.seconds, bg.ok ? "ok" : "FAILED", n, r.seconds);
  return r;
}

void Report(int n, const LoadResult& r) {
  std::printf(
      "N=%-3d %8.0f tokens/s  (%lld tokens in %.2fs, %d errors)  ingest msg p50 %.1fms "
      "p99 %.1fms  TTFT p50 %.1fms p99 %.1fms  ITL p50 %.1fms p99 %.1fms  "
      "generate p50 %.1fms p99 %.1fms\n",
      n, r.tokens / r.seconds, static_cast<long long>(r.tokens), r.seconds, r.errors,
      1e3 * Percentile(r.ingest_latency, 0.5), 1e3 * Percentile(r.ingest_latency, 0.99),
      1e3 * Percentile(r.ttft, 0.5), 1e3 * Percentile(r.ttft, 0.99), 1e3 * Percentile(r.itl, 0.5),
      1e3 * Percentile(r.itl, 0.99), 1e3 * Percentile(r.gen_latency, 0.5),
      1e3 * Percentile(r.gen_latency, 0.99));
}

// N sessions alone, then beside a long ingest; the ratios say what the ingest costs them.
int CompareBesideIngest(pb::TttService::Stub& stub, int n, int64_t vocab, const Mix& mix,
                        int64_t tokens) {
  LoadResult alone = RunLoad(stub, n, vocab, mix);
  Report(n, alone);
  LoadResult beside = RunLoadBesideIngest(stub, n, vocab, mix, tokens);
  Report(n, beside);
  std::printf(
      "beside a %lld-token ingest vs alone: ITL p50 %.2fx, p99 %.2fx; TTFT p50 %.2fx, "
      "p99 %.2fx\n",
      static_cast<long long>(tokens), Percentile(beside.itl, 0.5) / Percentile(alone.itl, 0.5),
      Percentile(beside.itl, 0.99) / Percentile(alone.itl, 0.99),
      Percentile(beside.ttft, 0.5) / Percentile(alone.ttft, 0.5),
      Percentile(beside.ttft, 0.99) / Percentile(alone.ttft, 0.99));
  return alone.errors + beside.errors == 0 ? 0 : 1;
}

// The bytes the sessions' states hold (GetSession.memory_bytes: each its share of what it
// shares with other sessions, so the sum counts shared buffers once).
int64_t SessionBytes(pb::TttService::Stub& stub,
                     const std::vector<std::optional<std::string>>& ids) {
  int64_t bytes = 0;
  for (const auto& id : ids) {
    if (!id) continue;
    pb::GetSessionRequest g;
    g.set_session_id(*id);
    pb::Session s;
    if (stub.GetSession(Context().get(), g, &s).ok()) bytes += s.memory_bytes();
  }
  return bytes;
}

// --mix=shared_document: the first session reads the document alone (with the server's state
// cache: computed and cached), then the other n - 1 read it at once (adopted), then every
// session ingests 256 tokens of its own and generates.
int RunSharedDocument(pb::TttService::Stub& stub, int n, int64_t vocab, const Mix& mix) {
  // A document no earlier run read (the server's cache may hold those), and turns of their own.
  const uint32_t seed = std::random_device{}();
  std::mt19937 doc_rng(seed);
  std::vector<int32_t> doc(static_cast<size_t>(mix.doc_tokens));
  for (int32_t& t : doc) t = RandomToken(doc_rng, vocab);
  std::vector<std::optional<std::string>> ids(n);
  for (int i = 0; i < n; ++i) ids[i] = CreateSession(stub);
  LoadResult first;
  const double first_seconds = ids[0] ? IngestDocument(stub, *ids[0], doc, &first) : 0;
  std::vector<double> later(n - 1);
  LoadResult readers;
  std::mutex mu;
  const auto start = Clock::now();
  std::vector<std::thread> threads;
  for (int i = 1; i < n; ++i) {
    threads.emplace_back([&, i] {
      LoadResult mine;
      if (ids[i]) later[i - 1] = IngestDocument(stub, *ids[i], doc, &mine);
      std::lock_guard<std::mutex> lock(mu);
      readers.Add(mine);
    });
  }
  for (auto& t : threads) t.join();
  const double readers_seconds = Seconds(start);
  const int64_t read_bytes = SessionBytes(stub, ids);
  LoadResult diverged;
  const auto diverge_start = Clock::now();
  threads.clear();
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      LoadResult mine;
      std::mt19937 rng(seed + 1 + i);
      if (ids[i]) {
        IngestRandom(stub, *ids[i], vocab, 256, rng, &mine);
        GenerateTimed(stub, *ids[i], mix.gen_tokens, i, &mine);
      }
      std::lock_guard<std::mutex> lock(mu);
      diverged.Add(mine);
    });
  }
  for (auto& t : threads) t.join();
  const double diverge_seconds = Seconds(diverge_start);
  const int64_t diverged_bytes = SessionBytes(stub, ids);
  for (const auto& id : ids) {
    if (id) DeleteSession(stub, *id);
  }
  std::printf("shared document of %lld tokens, N=%d sessions\n",
              static_cast<long long>(mix.doc_tokens), n);
  std::printf("first read: %.3fs (%.0f tokens/s)\n", first_seconds, mix.doc_tokens / first_seconds);
  if (n > 1) {
    std::printf(
        "the other %d reads at once: %.3fs in all; each p50 %.3fs p99 %.3fs (%.1fx faster than "
        "the first at p50)\n",
        n - 1, readers_seconds, Percentile(later, 0.5), Percentile(later, 0.99),
        first_seconds / Percentile(later, 0.5));
  }
  std::printf("diverge (each ingests 256 of its own, generates %d): %.3fs  ITL p50 %.1fms\n",
              mix.gen_tokens, diverge_seconds, 1e3 * Percentile(diverged.itl, 0.5));
  std::printf("sessions' memory: %.1f MiB after the reads, %.1f MiB after diverging\n",
              read_bytes / 1048576.0, diverged_bytes / 1048576.0);
  const int errors = first.errors + readers.errors + diverged.errors;
  return errors == 0 ? 0 : 1;
}

}  // namespace

int RunLoadgen(int argc, char** argv) {
  int n = 0;
  if (!absl::SimpleAtoi(Arg(argc, argv, 1), &n) || n < 1 || n > 1024) {
    return Usage("loadgen needs a session count N in [1, 1024]");
  }
  absl::StatusOr<Mix> mix = MixFromFlags();
  if (!mix.ok()) return Usage(std::string(mix.status().message()));
  const std::string protocol = absl::GetFlag(FLAGS_protocol);
  if (protocol != "grpc" && protocol != "http") {
    return Usage("--protocol must be grpc or http, not '" + protocol + "'");
  }
  const int64_t background = absl::GetFlag(FLAGS_background_ingest_tokens);
  if (background < 0) return Usage("--background_ingest_tokens must be >= 0");
  auto stub = Stub();
  pb::ServerInfo info;
  grpc::Status st = stub->GetServerInfo(Context().get(), pb::GetServerInfoRequest(), &info);
  if (!st.ok()) return Fail(st);
  if (background > 0) return CompareBesideIngest(*stub, n, info.vocab_size(), *mix, background);
  if (absl::GetFlag(FLAGS_mix) == "shared_document") {
    return RunSharedDocument(*stub, n, info.vocab_size(), *mix);
  }
  const int base = static_cast<int>(std::max<int64_t>(1, absl::GetFlag(FLAGS_baseline)));
  const std::string measure = absl::GetFlag(FLAGS_measure);
  if (measure == "decode") return CompareDecode(*stub, n, base, info.vocab_size(), *mix);
  if (measure != "all") return Usage("--measure must be all or decode, not '" + measure + "'");
  // The baseline serves as many sessions as the N run, `base` at a time: the same work, so that
  // its figure is not a fraction of a second of one session (noise on a busy machine).
  const int rounds = (n + base - 1) / base;
  LoadResult one = RunLoad(*stub, base, info.vocab_size(), *mix, rounds);
  std::printf("(N=%d: %d sessions, %d at a time)\n", base, base * rounds, base);
  Report(base, one);
  LoadResult many = RunLoad(*stub, n, info.vocab_size(), *mix);
  Report(n, many);
  std::printf("throughput ratio N=%d / N=%d: %.2fx\n", n, base,
              (many.tokens / many.seconds) / (one.tokens / one.seconds));
  return one.errors + many.errors == 0 ? 0 : 1;
}

}  // namespace ttt::cli
