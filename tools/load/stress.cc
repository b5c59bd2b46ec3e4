// `ttt stress` (see stress.h): flags, the shared set-up (probe, canaries), the clients' threads,
// the server's liveness and RSS, and the report.
#include "tools/load/stress.h"

#include <signal.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "tools/load/stress_internal.h"
#include "util/error_reason.h"

namespace ttt::cli {
namespace stress {

// ---------------------------------------------------------------------------------------------
// Options, codes, score comparison

absl::StatusOr<Options> ParseOptions(int argc, char** argv) {
  Options o;
  bool tenant_given = false;
  std::string token_flag;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0) return absl::InvalidArgumentError("unexpected argument " + arg);
    arg = arg.substr(2);
    std::string name = arg, value;
    const size_t eq = arg.find('=');
    if (eq != std::string::npos) {
      name = arg.substr(0, eq);
      value = arg.substr(eq + 1);
    } else if (name == "quiet" || name == "tls") {
      value = "true";
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      return absl::InvalidArgumentError("--" + name + " needs a value");
    }
    bool ok = true;
    if (name == "target") {
      o.target = value;
    } else if (name == "clients") {
      ok = absl::SimpleAtoi(value, &o.clients) && o.clients >= 1 && o.clients <= 256;
    } else if (name == "duration_s") {
      ok = absl::SimpleAtod(value, &o.duration_s) && o.duration_s > 0;
    } else if (name == "seed") {
      ok = absl::SimpleAtoi(value, &o.seed);
    } else if (name == "report_json") {
      o.report_json = value;
    } else if (name == "server_pid") {
      ok = absl::SimpleAtoi(value, &o.server_pid) && o.server_pid >= 0;
    } else if (name == "warmup_s") {
      ok = absl::SimpleAtod(value, &o.warmup_s);
    } else if (name == "max_rss_slope_mib_per_min") {
      ok = absl::SimpleAtod(value, &o.max_rss_slope) && o.max_rss_slope >= 0;
    } else if (name == "tenant") {
      o.tenant = value;
      tenant_given = true;
    } else if (name == "tls") {
      o.auth.tls = value != "false" && value != "0";
    } else if (name == "ca_file") {
      o.auth.ca_file = value;
    } else if (name == "cert_file") {
      o.auth.cert_file = value;
    } else if (name == "key_file") {
      o.auth.key_file = value;
    } else if (name == "token") {
      token_flag = value;
    } else if (name == "call_timeout_s") {
      ok = absl::SimpleAtod(value, &o.call_timeout_s) && o.call_timeout_s > 0;
    } else if (name == "quiet") {
      o.quiet = value != "false" && value != "0";
    } else {
      return absl::InvalidArgumentError("unknown flag --" + name);
    }
    if (!ok) return absl::InvalidArgumentError("bad value for --" + name + ": " + value);
  }
  if (o.warmup_s < 0) o.warmup_s = o.duration_s / 3;
  o.auth.token = auth::TokenFromFlagOrEnvironment(token_flag);
  const bool credential = !o.auth.token.empty() || !o.auth.cert_file.empty();
  if (credential && !tenant_given) o.tenant.clear();
  return o;
}

void AddTenant(grpc::ClientContext& ctx, const Options& o) {
  if (!o.tenant.empty()) ctx.AddMetadata("x-tenant-id", o.tenant);
}

std::string CodeName(grpc::StatusCode code) {
  return util::StatusCodeName(static_cast<int>(code), "?");
}

namespace {

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

// Distance in representable floats (both finite, same sign assumed by the caller's message).
int64_t Ulps(float a, float b) {
  auto ordered = [](float f) {
    const int32_t i = static_cast<int32_t>(Bits(f));
    return i < 0 ? int64_t{INT32_MIN} - i : int64_t{i};
  };
  return std::llabs(ordered(a) - ordered(b));
}

}  // namespace

std::string CompareScores(const pb::ScoreResponse& a, const pb::ScoreResponse& b) {
  if (a.token_ids_size() != b.token_ids_size() || a.logprobs_size() != b.logprobs_size()) {
    return absl::StrCat(a.logprobs_size(), " vs ", b.logprobs_size(), " log-probabilities");
  }
  for (int i = 0; i < a.token_ids_size(); ++i) {
    if (a.token_ids(i) != b.token_ids(i)) return absl::StrCat("token ", i, " differs");
  }
  for (int i = 0; i < a.logprobs_size(); ++i) {
    const float x = a.logprobs(i), y = b.logprobs(i);
    if (Bits(x) == Bits(y)) continue;
    const double bound =
        kScoreTolerance * std::max({1.0, std::fabs(double(x)), std::fabs(double(y))});
    if (std::fabs(double(x) - double(y)) <= bound) continue;  // NaN fails here
    return absl::StrFormat("log-probability %d: %.9g vs %.9g (%d ulps; the bound is %.2g)", i, x, y,
                           Ulps(x, y), bound);
  }
  return "";
}

// ---------------------------------------------------------------------------------------------
// Recorder

void Recorder::Call(const std::string& method, const grpc::Status& status) {
  std::lock_guard<std::mutex> lock(mu_);
  ++calls_[method][CodeName(status.error_code())];
  if (!status.ok()) {
    const std::string key = absl::StrCat(method, " ", CodeName(status.error_code()));
    if (first_errors_.count(key) == 0) first_errors_[key] = status.error_message().substr(0, 300);
  }
}

std::map<std::string, std::string> Recorder::first_errors() {
  std::lock_guard<std::mutex> lock(mu_);
  return first_errors_;
}

void Recorder::Violation(const std::string& what) {
  std::lock_guard<std::mutex> lock(mu_);
  ++violation_count_;
  if (violations_.size() < 100) violations_.push_back(what);
  if (!quiet_ && violation_count_ <= 20)
    std::fprintf(stderr, "stress: VIOLATION: %s\n", what.c_str());
}

void Recorder::Doing(int index, const std::string& op) {
  std::lock_guard<std::mutex> lock(mu_);
  doing_[index] = op;
}

void Recorder::Unavailable() {
  std::string now = InFlight();
  std::lock_guard<std::mutex> lock(mu_);
  if (first_unavailable_.empty()) first_unavailable_ = now;
}

std::string Recorder::InFlightAtFirstUnavailable() {
  std::lock_guard<std::mutex> lock(mu_);
  return first_unavailable_.empty() ? "-" : first_unavailable_;
}

std::string Recorder::InFlight() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::string> parts;
  for (const auto& [i, op] : doing_) {
    if (!op.empty()) parts.push_back(absl::StrCat("client ", i, ": ", op));
  }
  return parts.empty() ? "nothing" : absl::StrJoin(parts, "; ");
}

std::map<std::string, std::map<std::string, int64_t>> Recorder::calls() {
  std::lock_guard<std::mutex> lock(mu_);
  return calls_;
}
std::vector<std::string> Recorder::violations() {
  std::lock_guard<std::mutex> lock(mu_);
  return violations_;
}
int64_t Recorder::violation_count() {
  std::lock_guard<std::mutex> lock(mu_);
  return violation_count_;
}

namespace {

// ---------------------------------------------------------------------------------------------
// Liveness and RSS

// The server's resident set in MiB; < 0 when the process is gone (or a zombie).
double ReadRssMib(int pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  double rss = -1;
  while (std::getline(in, line)) {
    if (line.rfind("State:", 0) == 0 && line.find('Z') != std::string::npos) return -1;
    if (line.rfind("VmRSS:", 0) == 0) rss = std::atof(line.c_str() + 6) / 1024.0;
  }
  return rss;
}

// Samples RSS every second and asks the server for its info every 5 s; stops the run, with a
// violation, when the process is gone or the API has not answered for three probes in a row.
class Monitor {
 public:
  Monitor(const Options& o, std::shared_ptr<grpc::Channel> channel, Recorder* recorder)
      : options_(o), stub_(pb::TttService::NewStub(channel)), recorder_(recorder) {}
  void Start() {
    start_ = Clock::now();
    thread_ = std::thread([this] { Loop(); });
  }
  void Stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    wake_.notify_all();
    if (thread_.joinable()) thread_.join();
  }
  const std::vector<std::pair<double, double>>& rss() const { return rss_; }  // after Stop()
  bool server_died() const { return died_; }

 private:
  void Loop() {
    int failed_probes = 0;
    for (int tick = 0;; ++tick) {
      const double t = std::chrono::duration<double>(Clock::now() - start_).count();
      if (options_.server_pid > 0) {
        const double mib = ReadRssMib(options_.server_pid);
        if (mib < 0)
          return Died(absl::StrCat("the server process ", options_.server_pid, " is gone after ",
                                   static_cast<int>(t), " s"));
        rss_.emplace_back(t, mib);
      }
      if (tick % 5 == 0) {
        failed_probes = Probe() ? 0 : failed_probes + 1;
        if (failed_probes >= 3) {
          return Died(
              absl::StrCat("the server has not answered GetServerInfo for 3 probes in a "
                           "row (",
                           static_cast<int>(t), " s into the run)"));
        }
      }
      std::unique_lock<std::mutex> lock(mu_);
      if (wake_.wait_for(lock, std::chrono::seconds(1), [this] { return done_; })) return;
    }
  }
  bool Probe() {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    AddTenant(ctx, options_);
    pb::ServerInfo info;
    return stub_->GetServerInfo(&ctx, pb::GetServerInfoRequest(), &info).ok();
  }
  void Died(const std::string& why) {
    died_ = true;
    recorder_->Violation(absl::StrCat(
        why, "; in flight at the first UNAVAILABLE: ", recorder_->InFlightAtFirstUnavailable(),
        "; in flight now: ", recorder_->InFlight()));
    recorder_->Stop();
  }

  const Options& options_;
  std::unique_ptr<pb::TttService::Stub> stub_;
  Recorder* recorder_;
  Clock::time_point start_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable wake_;
  bool done_ = false;
  std::vector<std::pair<double, double>> rss_;  // (seconds, MiB), written by the thread only
  std::atomic<bool> died_{false};
};

// Least-squares slope of the samples at or after `from` seconds, in MiB per minute (NaN with
// fewer than 3 samples).
double SlopePerMinute(const std::vector<std::pair<double, double>>& samples, double from) {
  double n = 0, st = 0, sv = 0, stt = 0, stv = 0;
  for (const auto& [t, v] : samples) {
    if (t < from) continue;
    n += 1;
    st += t;
    sv += v;
    stt += t * t;
    stv += t * v;
  }
  const double den = n * stt - st * st;
  if (n < 3 || den <= 0) return NAN;
  return 60.0 * (n * stv - st * sv) / den;
}

// ---------------------------------------------------------------------------------------------
// Set-up and report

std::unique_ptr<grpc::ClientContext> Ctx(const Options& o) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::milliseconds(static_cast<int64_t>(o.call_timeout_s * 1e3)));
  AddTenant(*ctx, o);
  return ctx;
}

grpc::Status ScoreProbe(pb::TttService::Stub& stub, const Options& o, const std::string& id,
                        const std::vector<int32_t>& probe, pb::ScoreResponse* out) {
  pb::ScoreRequest req;
  req.set_session_id(id);
  for (int32_t t : probe) req.add_token_ids(t);
  return stub.Score(Ctx(o).get(), req, out);
}

void Delete(pb::TttService::Stub& stub, const Options& o, const std::string& id) {
  pb::DeleteSessionRequest req;
  req.set_session_id(id);
  pb::DeleteSessionResponse resp;
  stub.DeleteSession(Ctx(o).get(), req, &resp);
}

// A channel of its own (one connection per client) with the run's credentials.
absl::StatusOr<std::shared_ptr<grpc::Channel>> NewChannel(const Options& o) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // one connection per client
  args.SetMaxReceiveMessageSize(64 << 20);
  return auth::CreateAuthChannel(o.target, o.auth, args);
}

absl::Status Prepare(const Options& o, std::shared_ptr<grpc::Channel> channel, Shared* shared) {
  auto stub = pb::TttService::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_wait_for_ready(true);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  grpc::Status st = stub->GetServerInfo(&ctx, pb::GetServerInfoRequest(), &shared->info);
  if (!st.ok()) {
    return absl::UnavailableError(absl::StrCat(
        "no answer from ", o.target, ": ", CodeName(st.error_code()), ": ", st.error_message()));
  }
  std::mt19937_64 rng(o.seed);
  const uint64_t vocab = static_cast<uint64_t>(std::max<int64_t>(4, shared->info.vocab_size()));
  for (int i = 0; i < 24; ++i)
    shared->probe.push_back(static_cast<int32_t>(3 + rng() % (vocab - 3)));
  return absl::OkStatus();
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      out += absl::StrFormat("\\u%04x", c);
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

struct Totals {
  double seconds;
  int64_t operations;
  int64_t calls;
  std::map<std::string, int64_t> errors;  // code -> count, OK excluded
  double slope;
};

Totals Summarize(Recorder& recorder, const Monitor& monitor, const Options& o, double seconds) {
  Totals t{seconds, recorder.operations(), 0, {}, SlopePerMinute(monitor.rss(), o.warmup_s)};
  for (const auto& [method, codes] : recorder.calls()) {
    for (const auto& [code, n] : codes) {
      t.calls += n;
      if (code != "OK") t.errors[code] += n;
    }
  }
  return t;
}

void PrintReport(Recorder& recorder, const Monitor& monitor, const Options& o, const Totals& t) {
  std::printf("stress: %d clients, %.1f s against %s (seed %llu)\n", o.clients, t.seconds,
              o.target.c_str(), static_cast<unsigned long long>(o.seed));
  std::printf("operations: %lld (%.1f/s); calls: %lld (%.1f/s)\n",
              static_cast<long long>(t.operations), t.operations / t.seconds,
              static_cast<long long>(t.calls), t.calls / t.seconds);
  std::printf("calls by RPC and code:\n");
  for (const auto& [method, codes] : recorder.calls()) {
    std::vector<std::string> parts;
    for (const auto& [code, n] : codes) parts.push_back(absl::StrCat(code, " ", n));
    std::printf("  %-17s %s\n", method.c_str(), absl::StrJoin(parts, ", ").c_str());
  }
  std::vector<std::string> errors;
  for (const auto& [code, n] : t.errors) errors.push_back(absl::StrCat(code, " ", n));
  std::printf("errors by code: %s\n",
              errors.empty() ? "none" : absl::StrJoin(errors, ", ").c_str());
  for (const auto& [key, message] : recorder.first_errors()) {
    std::printf("  first %s: %s\n", key.c_str(), message.c_str());
  }
  const auto& rss = monitor.rss();
  if (!rss.empty()) {
    std::string line;
    const size_t step = std::max<size_t>(1, rss.size() / 12);
    for (size_t i = 0; i < rss.size(); i += step) {
      absl::StrAppend(&line, absl::StrFormat(" %.0fs:%.1f", rss[i].first, rss[i].second));
    }
    std::printf("server RSS MiB (time:MiB):%s; last %.1f\n", line.c_str(), rss.back().second);
    std::printf("RSS slope after warm-up (t >= %.0f s): %+.2f MiB/min\n", o.warmup_s, t.slope);
  } else {
    std::printf("server RSS: not sampled (no --server_pid)\n");
  }
  const auto violations = recorder.violations();
  std::printf("violations: %lld\n", static_cast<long long>(recorder.violation_count()));
  for (const auto& v : violations) std::printf("  %s\n", v.c_str());
}

void WriteJson(Recorder& recorder, const Monitor& monitor, const Options& o, const Totals& t) {
  std::ostringstream j;
  j << "{\n  \"clients\": " << o.clients << ",\n  \"seconds\": " << t.seconds
    << ",\n  \"seed\": " << o.seed << ",\n  \"operations\": " << t.operations
    << ",\n  \"operations_per_s\": " << t.operations / t.seconds << ",\n  \"calls\": " << t.calls
    << ",\n  \"calls_per_s\": " << t.calls / t.seconds << ",\n  \"calls_by_rpc\": {";
  const char* sep = "";
  for (const auto& [method, codes] : recorder.calls()) {
    j << sep << "\n    " << JsonString(method) << ": {";
    const char* sep2 = "";
    for (const auto& [code, n] : codes) {
      j << sep2 << JsonString(code) << ": " << n;
      sep2 = ", ";
    }
    j << "}";
    sep = ",";
  }
  j << "\n  },\n  \"errors_by_code\": {";
  sep = "";
  for (const auto& [code, n] : t.errors) {
    j << sep << JsonString(code) << ": " << n;
    sep = ", ";
  }
  j << "},\n  \"first_errors\": {";
  sep = "";
  for (const auto& [key, message] : recorder.first_errors()) {
    j << sep << "\n    " << JsonString(key) << ": " << JsonString(message);
    sep = ",";
  }
  j << "\n  },\n  \"rss_mib\": [";
  sep = "";
  for (const auto& [s, mib] : monitor.rss()) {
    j << sep << absl::StrFormat("[%.1f, %.2f]", s, mib);
    sep = ", ";
  }
  j << "],\n  \"warmup_s\": " << o.warmup_s << ",\n  \"rss_slope_mib_per_min\": "
    << (std::isnan(t.slope) ? std::string("null") : absl::StrFormat("%.4f", t.slope))
    << ",\n  \"server_died\": " << (monitor.server_died() ? "true" : "false")
    << ",\n  \"violation_count\": " << recorder.violation_count() << ",\n  \"violations\": [";
  sep = "";
  for (const auto& v : recorder.violations()) {
    j << sep << "\n    " << JsonString(v);
    sep = ",";
  }
  j << "\n  ]\n}\n";
  std::ofstream(o.report_json) << j.str();
}

}  // namespace

// Runs the clients; returns the process exit code.
int Run(const Options& o) {
  auto setup_channel_or = NewChannel(o);
  if (!setup_channel_or.ok()) {  // a credential file that cannot be read: a usage error
    std::fprintf(stderr, "stress: %s\n", std::string(setup_channel_or.status().message()).c_str());
    return 2;
  }
  const std::shared_ptr<grpc::Channel> setup_channel = *setup_channel_or;
  Shared shared;
  if (absl::Status st = Prepare(o, setup_channel, &shared); !st.ok()) {
    std::fprintf(stderr, "stress: %s\n", st.ToString().c_str());
    return 2;
  }
  Recorder recorder(o.quiet);
  std::vector<std::unique_ptr<Client>> clients;
  for (int i = 0; i < o.clients; ++i) {
    auto channel = NewChannel(o);  // the files were read a moment ago; they may have gone
    if (!channel.ok()) {
      std::fprintf(stderr, "stress: %s\n", std::string(channel.status().message()).c_str());
      return 2;
    }
    clients.push_back(std::make_unique<Client>(i, o, *channel, &recorder));
  }
  for (auto& c : clients) {  // one canary per client, made before any load
    auto canary = c->MakeCanary(shared);
    if (!canary.ok()) {
      std::fprintf(stderr, "stress: set-up failed: %s\n", canary.status().ToString().c_str());
      return recorder.violation_count() > 0 ? 1 : 2;
    }
    shared.canaries.push_back(*canary);
  }
  {  // the probe's score on a fresh session: what a reset session must give back
    auto stub = pb::TttService::NewStub(setup_channel);
    pb::Session s;
    if (!stub->CreateSession(Ctx(o).get(), pb::CreateSessionRequest(), &s).ok() ||
        !ScoreProbe(*stub, o, s.session_id(), shared.probe, &shared.fresh).ok()) {
      std::fprintf(stderr, "stress: set-up failed: cannot score a fresh session\n");
      return 2;
    }
    Delete(*stub, o, s.session_id());
  }

  Monitor monitor(o, setup_channel, &recorder);
  monitor.Start();
  const auto start = Clock::now();
  const auto end = start + std::chrono::milliseconds(static_cast<int64_t>(o.duration_s * 1e3));
  std::vector<std::thread> threads;
  for (auto& c : clients) threads.emplace_back([&c, &shared, end] { c->Run(&shared, end); });
  for (auto& t : threads) t.join();
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  threads.clear();
  for (auto& c : clients) threads.emplace_back([&c] { c->Finish(); });
  for (auto& t : threads) t.join();
  if (!recorder.stopping()) {  // the canaries must still score as they did at the start
    auto stub = pb::TttService::NewStub(setup_channel);
    for (const Canary& c : shared.canaries) {
      pb::ScoreResponse got;
      if (ScoreProbe(*stub, o, c.session_id, shared.probe, &got).ok()) {
        const std::string diff = CompareScores(c.baseline, got);
        if (!diff.empty()) {
          recorder.Violation(absl::StrCat("canary ", c.session_id, " at the end: ", diff));
        }
      }
      Delete(*stub, o, c.session_id);
    }
  }
  monitor.Stop();

  const Totals totals = Summarize(recorder, monitor, o, seconds);
  if (o.server_pid > 0 && o.max_rss_slope > 0 && totals.slope > o.max_rss_slope) {
    recorder.Violation(absl::StrFormat("server RSS grows %.2f MiB/min after warm-up (limit %.2f)",
                                       totals.slope, o.max_rss_slope));
  }
  PrintReport(recorder, monitor, o, totals);
  if (!o.report_json.empty()) WriteJson(recorder, monitor, o, totals);
  return recorder.violation_count() > 0 ? 1 : 0;
}

}  // namespace stress

namespace {
constexpr char kUsage[] = R"(usage: ttt stress [flags]
  N clients run a random mix of every RPC against a server for a bounded time and check its
  invariants (docs/robustness.md); exit 0 when all held, 1 on a violation, 2 on bad flags.
  --target=HOST:PORT        server (localhost:50051)
  --clients=N               concurrent clients, 1..256 (4)
  --duration_s=S            length of the run (120)
  --seed=N                  random seed (1)
  --server_pid=PID          sample the server's RSS and watch its process (0: API probes only)
  --warmup_s=S              RSS samples before this are left out of the slope (duration/3)
  --max_rss_slope_mib_per_min=X   RSS growth after warm-up that is a violation (0: report only)
  --report_json=PATH        write the report as JSON
  --tenant=NAME             x-tenant-id of every call (stress; with a token or client
                            certificate: not sent unless given, the credential names it)
  --tls                     connect with TLS (implied by --ca_file, --cert_file)
  --ca_file=PATH            PEM roots that sign the server's certificate
  --cert_file=PATH --key_file=PATH   client certificate and key (mutual TLS)
  --token=TOKEN             bearer token (prefer TTT_TOKEN from the environment)
  --call_timeout_s=S        deadline of each call (60)
  --quiet                   do not print violations as they happen)";
}  // namespace

int RunStress(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h" || a == "--helpfull") {
      std::printf("%s\n", kUsage);
      return 0;
    }
  }
  auto options = stress::ParseOptions(argc, argv);
  if (!options.ok()) {
    std::fprintf(stderr, "ttt stress: %s\n\n%s\n", std::string(options.status().message()).c_str(),
                 kUsage);
    return 2;
  }
  return stress::Run(*options);
}

}  // namespace ttt::cli
