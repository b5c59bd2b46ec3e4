// ttt: command-line client of ttt-serve, one subcommand per RPC, plus `health` (exit 0 when
// SERVING: the container health check) and `loadgen` (N concurrent sessions ingesting and
// generating; aggregate tokens/s, p50/p99 latencies, and the N vs 1 throughput ratio).
// Speaks only the public API (tttserve_proto): no engine, no LibTorch.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "tttserve/v1/ttt_service.grpc.pb.h"

ABSL_FLAG(std::string, address, "localhost:50051", "ttt-serve gRPC address");
ABSL_FLAG(std::string, tenant, "", "tenant (sent as x-tenant-id; empty = server default)");
ABSL_FLAG(double, timeout_s, 600, "deadline of each call in seconds");
ABSL_FLAG(std::string, text, "", "text input (score, generate prompt)");
ABSL_FLAG(std::string, tokens, "", "token ids input, separated by spaces or commas");
ABSL_FLAG(bool, token_file, false, "ingest: FILE holds token ids (whitespace separated), not text");
ABSL_FLAG(bool, end_of_document, true, "ingest: mark the end of a document after the file");
ABSL_FLAG(int64_t, message_tokens, 512, "ingest: token ids per message");
ABSL_FLAG(int64_t, message_bytes, 65536, "ingest: text bytes per message (split at newlines)");
ABSL_FLAG(bool, reset_at_document_end, false, "create: reset fast weights at document ends");
ABSL_FLAG(std::string, labels, "", "create/list: labels k=v,k2=v2");
ABSL_FLAG(int64_t, idle_ttl_s, 0, "create: idle TTL in seconds (0 = server default)");
ABSL_FLAG(int32_t, max_tokens, 64, "generate: tokens to generate");
ABSL_FLAG(double, temperature, 1.0, "generate: temperature (0 = greedy)");
ABSL_FLAG(int32_t, top_k, 0, "generate: top-k (0 = all)");
ABSL_FLAG(double, top_p, 1.0, "generate: nucleus mass");
ABSL_FLAG(uint64_t, seed, 0, "generate: random seed");
ABSL_FLAG(std::vector<std::string>, stop, {}, "generate: stop strings (comma separated)");
ABSL_FLAG(bool, commit, false, "generate: append prompt and output to the session");
ABSL_FLAG(bool, ignore_eos, false, "generate: keep going past the eos token");
ABSL_FLAG(std::string, checkpoint_id, "", "checkpoint id (checkpoint, export)");
ABSL_FLAG(std::string, session, "", "restore: restore over this session instead of a new one");
ABSL_FLAG(std::string, out, "", "export: output file");
ABSL_FLAG(std::string, service, "", "health: service name (\"\" = whole server)");
ABSL_FLAG(int64_t, doc_tokens, 1024, "loadgen: tokens each session ingests");
ABSL_FLAG(int64_t, baseline, 1, "loadgen: the session count to compare against");

namespace {

namespace pb = tttserve::v1;
using Clock = std::chrono::steady_clock;

constexpr char kUsage[] = R"(ttt: client for ttt-serve.

  ttt info                              server and model information
  ttt create [--labels=k=v] [--reset_at_document_end] [--idle_ttl_s=N]
  ttt get ID | ttt list [--labels=k=v] | ttt delete ID
  ttt ingest ID FILE [--token_file] [--end_of_document=false]   (progress bar on stderr)
  ttt generate ID [--text=PROMPT | --tokens=IDS] [--max_tokens --temperature --top_k --top_p
               --seed --stop=a,b --commit --ignore_eos]
  ttt score ID (--text=TEXT | --tokens=IDS)
  ttt checkpoint ID [--checkpoint_id=NAME] | ttt checkpoints | ttt delete-checkpoint NAME
  ttt restore NAME [--session=ID] | ttt reset ID | ttt fork ID
  ttt export (ID | --checkpoint_id=NAME) --out=FILE | ttt import FILE
  ttt health [--service=NAME]           exit 0 when SERVING
  ttt loadgen N [--doc_tokens=1024 --max_tokens=64 --baseline=1]
Common flags: --address=HOST:PORT (default localhost:50051) --tenant=NAME --timeout_s=S)";

std::shared_ptr<grpc::Channel> g_channel;

std::unique_ptr<grpc::ClientContext> Context() {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::milliseconds(
                        static_cast<int64_t>(absl::GetFlag(FLAGS_timeout_s) * 1000)));
  if (!absl::GetFlag(FLAGS_tenant).empty()) {
    ctx->AddMetadata("x-tenant-id", absl::GetFlag(FLAGS_tenant));
  }
  return ctx;
}

int Fail(const grpc::Status& s) {
  static const char* kNames[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT",
                                 "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
                                 "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
                                 "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
                                 "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
  const int code = static_cast<int>(s.error_code());
  std::fprintf(stderr, "ttt: %s: %s\n", code >= 0 && code <= 16 ? kNames[code] : "?",
               s.error_message().c_str());
  return 1;
}

int Usage(const std::string& why) {
  std::fprintf(stderr, "ttt: %s\n\n%s\n", why.c_str(), kUsage);
  return 2;
}

bool ParseIds(const std::string& s, std::vector<int32_t>* out) {
  for (absl::string_view piece : absl::StrSplit(s, absl::ByAnyChar(" ,\n\t"), absl::SkipEmpty())) {
    int32_t v;
    if (!absl::SimpleAtoi(piece, &v)) return false;
    out->push_back(v);
  }
  return true;
}

std::map<std::string, std::string> ParseLabels(const std::string& s) {
  std::map<std::string, std::string> out;
  for (absl::string_view kv : absl::StrSplit(s, ',', absl::SkipEmpty())) {
    std::pair<std::string, std::string> p = absl::StrSplit(kv, absl::MaxSplits('=', 1));
    out[p.first] = p.second;
  }
  return out;
}

void PrintCounters(const pb::SessionCounters& c) {
  std::printf("  tokens received %lld, applied %lld, pending %lld; chunks %lld; position %lld; "
              "documents %lld; generated %lld\n",
              static_cast<long long>(c.tokens_received()), static_cast<long long>(c.tokens_applied()),
              static_cast<long long>(c.tokens_pending()), static_cast<long long>(c.chunks_applied()),
              static_cast<long long>(c.position()), static_cast<long long>(c.documents_completed()),
              static_cast<long long>(c.tokens_generated()));
}

void PrintSession(const pb::Session& s) {
  std::printf("session %s (tenant %s)%s%s\n", s.session_id().c_str(), s.tenant().c_str(),
              s.resident() ? "" : " [on disk]", s.writer_active() ? " [writer active]" : "");
  PrintCounters(s.counters());
  std::printf("  memory %lld bytes; reset_at_document_end %s; idle_ttl_s %lld\n",
              static_cast<long long>(s.memory_bytes()),
              s.options().reset_at_document_end() ? "true" : "false",
              static_cast<long long>(s.options().idle_ttl_seconds()));
  for (const auto& d : s.deltas()) {
    std::printf("  layer %lld: |delta W_down| = %.6g\n", static_cast<long long>(d.layer()),
                d.delta_norm());
  }
  for (const auto& [k, v] : s.options().labels()) std::printf("  label %s=%s\n", k.c_str(), v.c_str());
}

void PrintCheckpoint(const pb::CheckpointInfo& c) {
  std::printf("checkpoint %s: session %s, %lld bytes, position %lld, model %s\n",
              c.checkpoint_id().c_str(), c.session_id().c_str(),
              static_cast<long long>(c.size_bytes()),
              static_cast<long long>(c.counters().position()), c.model_fingerprint().c_str());
}

// Sets text or token ids from --text / --tokens. Returns false on malformed ids.
template <typename Req>
bool SetInput(Req* req, void (Req::*set_text)(const std::string&),
              google::protobuf::RepeatedField<int32_t>* ids) {
  if (!absl::GetFlag(FLAGS_text).empty()) (req->*set_text)(absl::GetFlag(FLAGS_text));
  std::vector<int32_t> v;
  if (!ParseIds(absl::GetFlag(FLAGS_tokens), &v)) return false;
  for (int32_t t : v) ids->Add(t);
  return true;
}

// ------------------------------------------------------------------------------------------
// ingest with a progress bar

int Ingest(pb::TttService::Stub& stub, const std::string& id, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Usage("cannot open " + path);
  std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<pb::IngestRequest> msgs;
  std::vector<int64_t> ends;  // input units (bytes or tokens) covered after each message
  if (absl::GetFlag(FLAGS_token_file)) {
    std::vector<int32_t> ids;
    if (!ParseIds(content, &ids)) return Usage(path + " does not hold token ids");
    const int64_t per = std::max<int64_t>(1, absl::GetFlag(FLAGS_message_tokens));
    for (size_t i = 0; i < ids.size(); i += per) {
      pb::IngestRequest r;
      for (size_t j = i; j < std::min(ids.size(), i + per); ++j) r.add_token_ids(ids[j]);
      msgs.push_back(std::move(r));
      ends.push_back(static_cast<int64_t>(std::min(ids.size(), i + per)));
    }
  } else {
    // Text goes in blocks ending at a newline; each block is flushed (tokenized) on its own.
    const size_t per = static_cast<size_t>(std::max<int64_t>(1, absl::GetFlag(FLAGS_message_bytes)));
    size_t pos = 0;
    while (pos < content.size()) {
      size_t end = std::min(content.size(), pos + per);
      if (end < content.size()) {
        const size_t nl = content.rfind('\n', end);
        if (nl != std::string::npos && nl > pos) end = nl + 1;
      }
      pb::IngestRequest r;
      r.set_text(content.substr(pos, end - pos));
      r.set_flush(true);
      msgs.push_back(std::move(r));
      ends.push_back(static_cast<int64_t>(end));
      pos = end;
    }
  }
  if (msgs.empty()) {
    msgs.emplace_back();
    ends.push_back(0);
  }
  msgs.front().set_session_id(id);
  if (absl::GetFlag(FLAGS_end_of_document)) msgs.back().set_end_of_document(true);
  if (!msgs.back().end_of_document() && msgs.back().text().empty() &&
      msgs.back().token_ids().empty()) {
    msgs.back().set_flush(true);
  }
  for (auto& m : msgs) m.set_report_loss(true);
  const int64_t total = ends.back();

  auto ctx = Context();
  auto stream = stub.Ingest(ctx.get());
  std::thread writer([&] {
    for (const auto& m : msgs) {
      if (!stream->Write(m)) break;
    }
    stream->WritesDone();
  });
  pb::IngestResponse resp;
  const bool tty = isatty(fileno(stderr));
  const auto start = Clock::now();
  pb::IngestResponse last;
  while (stream->Read(&resp)) {
    last = resp;
    const int64_t done = ends[std::min<size_t>(resp.message_index(), ends.size() - 1)];
    const double frac = total > 0 ? static_cast<double>(done) / static_cast<double>(total) : 1.0;
    const int width = 30;
    const int filled = static_cast<int>(frac * width);
    const double secs = std::chrono::duration<double>(Clock::now() - start).count();
    std::fprintf(stderr, "%s[%s%s] %3.0f%% %lld tokens, %lld chunks, loss %.4f, %.0f tok/s%s",
                 tty ? "\r" : "", std::string(filled, '#').c_str(),
                 std::string(width - filled, '.').c_str(), frac * 100,
                 static_cast<long long>(resp.stream_tokens()),
                 static_cast<long long>(resp.counters().chunks_applied()), resp.loss(),
                 secs > 0 ? static_cast<double>(resp.stream_tokens()) / secs : 0.0,
                 tty ? "" : "\n");
  }
  writer.join();
  grpc::Status st = stream->Finish();
  if (tty) std::fprintf(stderr, "\n");
  if (!st.ok()) return Fail(st);
  std::printf("ingested %lld tokens into %s; loss %.4f (perplexity %.3f over %lld tokens)\n",
              static_cast<long long>(last.stream_tokens()), id.c_str(), last.loss(),
              last.perplexity(), static_cast<long long>(last.loss_tokens()));
  PrintCounters(last.counters());
  return 0;
}

// ------------------------------------------------------------------------------------------
// loadgen

struct LoadResult {
  double seconds = 0;
  int64_t tokens = 0;  // ingested + generated
  std::vector<double> ingest_latency;  // per ingest message
  std::vector<double> ttft;            // per generate: time to first token
  std::vector<double> gen_latency;     // per generate: whole call
  int errors = 0;
};

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5));
  return v[i];
}

LoadResult RunLoad(pb::TttService::Stub& stub, int n, int64_t vocab) {
  LoadResult total;
  std::mutex mu;
  const int64_t doc_tokens = absl::GetFlag(FLAGS_doc_tokens);
  const int64_t per = std::max<int64_t>(1, absl::GetFlag(FLAGS_message_tokens) / 4);
  const auto start = Clock::now();
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      LoadResult mine;
      std::mt19937 rng(1234 + i);
      pb::Session s;
      {
        auto ctx = Context();
        grpc::Status st = stub.CreateSession(ctx.get(), pb::CreateSessionRequest(), &s);
        if (!st.ok()) {
          std::lock_guard<std::mutex> lock(mu);
          ++total.errors;
          Fail(st);
          return;
        }
      }
      {
        auto ctx = Context();
        auto stream = stub.Ingest(ctx.get());
        for (int64_t pos = 0; pos < doc_tokens; pos += per) {
          pb::IngestRequest r;
          if (pos == 0) r.set_session_id(s.session_id());
          for (int64_t j = pos; j < std::min(doc_tokens, pos + per); ++j) {
            r.add_token_ids(3 + static_cast<int32_t>(rng() % (vocab - 3)));
          }
          const auto t0 = Clock::now();
          pb::IngestResponse resp;
          if (!stream->Write(r) || !stream->Read(&resp)) break;
          mine.ingest_latency.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
          mine.tokens += r.token_ids_size();
        }
        stream->WritesDone();
        if (!stream->Finish().ok()) ++mine.errors;
      }
      {
        auto ctx = Context();
        pb::GenerateRequest g;
        g.set_session_id(s.session_id());
        g.set_max_tokens(absl::GetFlag(FLAGS_max_tokens));
        g.set_temperature(0.8);
        g.set_seed(i);
        g.set_ignore_eos(true);
        const auto t0 = Clock::now();
        auto reader = stub.Generate(ctx.get(), g);
        pb::GenerateResponse resp;
        bool first = true;
        while (reader->Read(&resp)) {
          if (resp.has_token_id()) {
            if (first) mine.ttft.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
            first = false;
            ++mine.tokens;
          }
        }
        if (!reader->Finish().ok()) ++mine.errors;
        mine.gen_latency.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
      }
      {
        auto ctx = Context();
        pb::DeleteSessionRequest d;
        d.set_session_id(s.session_id());
        pb::DeleteSessionResponse dr;
        stub.DeleteSession(ctx.get(), d, &dr);
      }
      std::lock_guard<std::mutex> lock(mu);
      total.tokens += mine.tokens;
      total.errors += mine.errors;
      total.ingest_latency.insert(total.ingest_latency.end(), mine.ingest_latency.begin(),
                                  mine.ingest_latency.end());
      total.ttft.insert(total.ttft.end(), mine.ttft.begin(), mine.ttft.end());
      total.gen_latency.insert(total.gen_latency.end(), mine.gen_latency.begin(),
                               mine.gen_latency.end());
    });
  }
  for (auto& t : threads) t.join();
  total.seconds = std::chrono::duration<double>(Clock::now() - start).count();
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

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(kUsage);
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() < 2) return Usage("no command");
  const std::string cmd = args[1];
  auto arg = [&](size_t i) -> std::string { return args.size() > i ? args[i] : ""; };
  g_channel = grpc::CreateChannel(absl::GetFlag(FLAGS_address), grpc::InsecureChannelCredentials());
  auto stub = pb::TttService::NewStub(g_channel);
  grpc::Status st;

  if (cmd == "health") {
    auto health = grpc::health::v1::Health::NewStub(g_channel);
    grpc::health::v1::HealthCheckRequest req;
    req.set_service(absl::GetFlag(FLAGS_service));
    grpc::health::v1::HealthCheckResponse resp;
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    st = health->Check(ctx.get(), req, &resp);
    if (!st.ok()) return Fail(st);
    const bool serving = resp.status() == grpc::health::v1::HealthCheckResponse::SERVING;
    std::printf("%s\n", serving ? "SERVING" : "NOT_SERVING");
    return serving ? 0 : 1;
  }
  if (cmd == "info") {
    pb::ServerInfo info;
    st = stub->GetServerInfo(Context().get(), pb::GetServerInfoRequest(), &info);
    if (!st.ok()) return Fail(st);
    std::printf("%s", info.DebugString().c_str());
    return 0;
  }
  if (cmd == "create") {
    pb::CreateSessionRequest req;
    req.mutable_options()->set_reset_at_document_end(absl::GetFlag(FLAGS_reset_at_document_end));
    req.mutable_options()->set_idle_ttl_seconds(absl::GetFlag(FLAGS_idle_ttl_s));
    for (const auto& [k, v] : ParseLabels(absl::GetFlag(FLAGS_labels))) {
      (*req.mutable_options()->mutable_labels())[k] = v;
    }
    pb::Session s;
    st = stub->CreateSession(Context().get(), req, &s);
    if (!st.ok()) return Fail(st);
    std::printf("%s\n", s.session_id().c_str());
    return 0;
  }
  if (cmd == "get" || cmd == "reset" || cmd == "fork") {
    if (arg(2).empty()) return Usage(cmd + " needs a session id");
    pb::Session s;
    if (cmd == "get") {
      pb::GetSessionRequest req;
      req.set_session_id(arg(2));
      st = stub->GetSession(Context().get(), req, &s);
    } else if (cmd == "reset") {
      pb::ResetRequest req;
      req.set_session_id(arg(2));
      st = stub->Reset(Context().get(), req, &s);
    } else {
      pb::ForkRequest req;
      req.set_session_id(arg(2));
      st = stub->Fork(Context().get(), req, &s);
    }
    if (!st.ok()) return Fail(st);
    PrintSession(s);
    return 0;
  }
  if (cmd == "list") {
    pb::ListSessionsRequest req;
    for (const auto& [k, v] : ParseLabels(absl::GetFlag(FLAGS_labels))) {
      (*req.mutable_label_selector())[k] = v;
    }
    pb::ListSessionsResponse resp;
    st = stub->ListSessions(Context().get(), req, &resp);
    if (!st.ok()) return Fail(st);
    for (const auto& s : resp.sessions()) PrintSession(s);
    return 0;
  }
  if (cmd == "delete") {
    pb::DeleteSessionRequest req;
    req.set_session_id(arg(2));
    pb::DeleteSessionResponse resp;
    st = stub->DeleteSession(Context().get(), req, &resp);
    if (!st.ok()) return Fail(st);
    std::printf("deleted %s\n", arg(2).c_str());
    return 0;
  }
  if (cmd == "ingest") {
    if (arg(2).empty() || arg(3).empty()) return Usage("ingest needs a session id and a file");
    return Ingest(*stub, arg(2), arg(3));
  }
  if (cmd == "generate") {
    pb::GenerateRequest req;
    req.set_session_id(arg(2));
    if (!SetInput(&req, &pb::GenerateRequest::set_prompt_text, req.mutable_prompt_token_ids())) {
      return Usage("--tokens must be integers");
    }
    req.set_max_tokens(absl::GetFlag(FLAGS_max_tokens));
    req.set_temperature(absl::GetFlag(FLAGS_temperature));
    req.set_top_k(absl::GetFlag(FLAGS_top_k));
    req.set_top_p(absl::GetFlag(FLAGS_top_p));
    req.set_seed(absl::GetFlag(FLAGS_seed));
    for (const auto& s : absl::GetFlag(FLAGS_stop)) req.add_stop(s);
    req.set_commit(absl::GetFlag(FLAGS_commit));
    req.set_ignore_eos(absl::GetFlag(FLAGS_ignore_eos));
    auto ctx = Context();
    auto reader = stub->Generate(ctx.get(), req);
    pb::GenerateResponse resp;
    std::vector<int32_t> ids;
    bool any_text = false;
    pb::FinishReason reason = pb::FINISH_REASON_UNSPECIFIED;
    while (reader->Read(&resp)) {
      if (resp.has_token_id()) ids.push_back(resp.token_id());
      if (!resp.text().empty()) {
        any_text = true;
        std::fwrite(resp.text().data(), 1, resp.text().size(), stdout);
        std::fflush(stdout);
      }
      if (resp.finish_reason() != pb::FINISH_REASON_UNSPECIFIED) reason = resp.finish_reason();
    }
    st = reader->Finish();
    if (!st.ok()) return Fail(st);
    if (any_text) std::printf("\n");
    std::string joined;
    for (int32_t t : ids) absl::StrAppend(&joined, joined.empty() ? "" : " ", t);
    std::fprintf(any_text ? stderr : stdout, "tokens: %s\nfinish: %s\n", joined.c_str(),
                 pb::FinishReason_Name(reason).c_str());
    return 0;
  }
  if (cmd == "score") {
    pb::ScoreRequest req;
    req.set_session_id(arg(2));
    if (!SetInput(&req, &pb::ScoreRequest::set_text, req.mutable_token_ids())) {
      return Usage("--tokens must be integers");
    }
    pb::ScoreResponse resp;
    st = stub->Score(Context().get(), req, &resp);
    if (!st.ok()) return Fail(st);
    for (int i = 0; i < resp.token_ids_size(); ++i) {
      std::printf("%d\t%.6f\n", resp.token_ids(i), resp.logprobs(i));
    }
    std::printf("total logprob %.6f, mean nll %.6f, perplexity %.4f\n", resp.total_logprob(),
                resp.mean_nll(), resp.perplexity());
    return 0;
  }
  if (cmd == "checkpoint") {
    pb::CheckpointRequest req;
    req.set_session_id(arg(2));
    req.set_checkpoint_id(absl::GetFlag(FLAGS_checkpoint_id));
    pb::CheckpointInfo resp;
    st = stub->Checkpoint(Context().get(), req, &resp);
    if (!st.ok()) return Fail(st);
    PrintCheckpoint(resp);
    return 0;
  }
  if (cmd == "checkpoints") {
    pb::ListCheckpointsResponse resp;
    st = stub->ListCheckpoints(Context().get(), pb::ListCheckpointsRequest(), &resp);
    if (!st.ok()) return Fail(st);
    for (const auto& c : resp.checkpoints()) PrintCheckpoint(c);
    return 0;
  }
  if (cmd == "delete-checkpoint") {
    pb::DeleteCheckpointRequest req;
    req.set_checkpoint_id(arg(2));
    pb::DeleteCheckpointResponse resp;
    st = stub->DeleteCheckpoint(Context().get(), req, &resp);
    if (!st.ok()) return Fail(st);
    std::printf("deleted checkpoint %s\n", arg(2).c_str());
    return 0;
  }
  if (cmd == "restore") {
    pb::RestoreRequest req;
    req.set_checkpoint_id(arg(2));
    req.set_session_id(absl::GetFlag(FLAGS_session));
    pb::Session s;
    st = stub->Restore(Context().get(), req, &s);
    if (!st.ok()) return Fail(st);
    PrintSession(s);
    return 0;
  }
  if (cmd == "export") {
    if (absl::GetFlag(FLAGS_out).empty()) return Usage("export needs --out=FILE");
    pb::ExportSessionRequest req;
    req.set_session_id(arg(2));
    req.set_checkpoint_id(absl::GetFlag(FLAGS_checkpoint_id));
    auto ctx = Context();
    auto reader = stub->ExportSession(ctx.get(), req);
    std::string data;
    pb::ExportSessionResponse resp;
    while (reader->Read(&resp)) data += resp.data();
    st = reader->Finish();
    if (!st.ok()) return Fail(st);
    std::ofstream out(absl::GetFlag(FLAGS_out), std::ios::binary);
    out << data;
    if (!out) return Usage("cannot write " + absl::GetFlag(FLAGS_out));
    std::printf("exported %zu bytes to %s\n", data.size(), absl::GetFlag(FLAGS_out).c_str());
    return 0;
  }
  if (cmd == "import") {
    std::ifstream in(arg(2), std::ios::binary);
    if (!in) return Usage("cannot open " + arg(2));
    std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    auto ctx = Context();
    pb::Session s;
    auto writer = stub->ImportSession(ctx.get(), &s);
    for (size_t i = 0; i < data.size(); i += 1 << 20) {
      pb::ImportSessionRequest req;
      req.set_data(data.substr(i, 1 << 20));
      if (!writer->Write(req)) break;
    }
    writer->WritesDone();
    st = writer->Finish();
    if (!st.ok()) return Fail(st);
    PrintSession(s);
    return 0;
  }
  if (cmd == "loadgen") {
    int n = 0;
    if (!absl::SimpleAtoi(arg(2), &n) || n < 1 || n > 1024) {
      return Usage("loadgen needs a session count N in [1, 1024]");
    }
    pb::ServerInfo info;
    st = stub->GetServerInfo(Context().get(), pb::GetServerInfoRequest(), &info);
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
  return Usage("unknown command '" + cmd + "'");
}
