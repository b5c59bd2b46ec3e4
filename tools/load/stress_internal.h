// The pieces of `ttt stress` (tools/load/stress.h): its options, the recorder every client
// reports to, and one client's loop of random operations with their invariant checks.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "auth/client_credentials.h"
#include "tttserve/v1/ttt_service.grpc.pb.h"

namespace ttt::cli::stress {

namespace pb = tttserve::v1;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string target = "localhost:50051";
  int clients = 4;
  double duration_s = 120;
  uint64_t seed = 1;
  std::string report_json;
  int server_pid = 0;        // 0: no RSS samples, liveness from the API alone
  double warmup_s = -1;      // < 0: a third of the duration
  double max_rss_slope = 0;  // MiB per minute after warm-up; 0: report only
  std::string tenant = "stress";
  double call_timeout_s = 60;
  bool quiet = false;
  // A secured server (the other subcommands' --tls, --ca_file, --cert_file/--key_file,
  // --token or TTT_TOKEN). With a credential, x-tenant-id is sent only when --tenant is given:
  // the credential names the tenant.
  auth::ClientAuthOptions auth;
};

// x-tenant-id (unless the credential names the tenant, see Options::auth).
void AddTenant(grpc::ClientContext& ctx, const Options& o);

// INVALID_ARGUMENT naming the flag that is wrong.
absl::StatusOr<Options> ParseOptions(int argc, char** argv);

// The canonical name of a gRPC code ("OK", "INTERNAL", ...).
std::string CodeName(grpc::StatusCode code);

// How far two scorings of the same state may differ: docs/contract.md promises bit-identical
// results for a given split and batch and agreement within float tolerance across batch
// compositions (1-3 float32 ulps measured: the rounding of the BLAS's products depends on how many
// rows a product has and where a row sits in it, on some CPUs' kernels), and concurrent clients
// change the batches. A lost or stale chunk update moves log-probabilities by 1e-3 and more.
inline constexpr double kScoreTolerance = 4e-6;  // relative to max(1, |log-probability|)

// "" when `a` and `b` hold the same token ids and log-probabilities equal within kScoreTolerance,
// else where they first differ (index, both values, their distance in float ulps).
std::string CompareScores(const pb::ScoreResponse& a, const pb::ScoreResponse& b);

// What every client reports: calls by RPC and code, invariant violations, the stop flag.
// Thread-safe.
class Recorder {
 public:
  explicit Recorder(bool quiet) : quiet_(quiet) {}

  // Counts a call's outcome; keeps the first error message of each RPC and code.
  void Call(const std::string& method, const grpc::Status& status);
  // One operation of the mix completed (an operation is one or more calls).
  void Operation() { operations_.fetch_add(1, std::memory_order_relaxed); }
  void Violation(const std::string& what);
  // What client `index` is doing now, named in the report if the server dies meanwhile.
  void Doing(int index, const std::string& op);
  std::string InFlight();
  // The first UNAVAILABLE: remembers what was in flight then (the server's last moments).
  void Unavailable();
  std::string InFlightAtFirstUnavailable();

  void Stop() { stop_.store(true); }
  bool stopping() const { return stop_.load(); }

  int64_t operations() const { return operations_.load(); }
  std::map<std::string, std::map<std::string, int64_t>> calls();
  std::vector<std::string> violations();
  // "RPC CODE" -> the first message seen.
  std::map<std::string, std::string> first_errors();
  int64_t violation_count();

 private:
  const bool quiet_;
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> operations_{0};
  std::mutex mu_;
  std::map<std::string, std::map<std::string, int64_t>> calls_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::string> first_errors_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> violations_ ABSL_GUARDED_BY(mu_);  // the first 100
  int64_t violation_count_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<int, std::string> doing_ ABSL_GUARDED_BY(mu_);
  std::string first_unavailable_ ABSL_GUARDED_BY(mu_);
};

// A session no writer touches, with its score of the probe taken when it was made.
struct Canary {
  std::string session_id;
  pb::ScoreResponse baseline;
};

// Read-only once the clients run.
struct Shared {
  pb::ServerInfo info;
  std::vector<int32_t> probe;  // the continuation every score check uses
  pb::ScoreResponse fresh;     // the probe scored on a fresh, empty session
  std::vector<Canary> canaries;
};

// One client: a thread of random operations over its own sessions (it is their only writer)
// and the canaries (which nobody writes). Not thread-safe: one thread drives it.
class Client {
 public:
  Client(int index, const Options& options, std::shared_ptr<grpc::Channel> channel,
         Recorder* recorder);

  // Makes a canary: a session with some text or tokens in it, and its probe score.
  absl::StatusOr<Canary> MakeCanary(const Shared& shared);
  // Random operations until `end` or the recorder stops.
  void Run(const Shared* shared, Clock::time_point end);
  // Verifies the checkpoints not yet verified and deletes what this client made.
  void Finish();

 private:
  struct Pending {  // an acknowledged checkpoint and the session's score when it was taken
    std::string checkpoint_id;
    pb::ScoreResponse expected;
  };

  // A call's context (deadline, tenant); tells the recorder which RPC is in flight.
  std::unique_ptr<grpc::ClientContext> Context(const char* rpc);
  // Records the call's outcome; INTERNAL and UNKNOWN are violations.
  grpc::Status Check(const std::string& method, grpc::Status status);
  void Expect(bool ok, const std::string& what);
  // Compares two scores of what must be the same state; a difference is a violation.
  void ExpectSameScore(const pb::ScoreResponse& want, const pb::ScoreResponse& got,
                       const std::string& what);

  // Runs a writer call on an own session, retrying ABORTED with backoff only while the server
  // may still be winding down a writer call this client cancelled (see AsWriter's comment).
  grpc::Status AsWriter(const std::string& id, const std::function<grpc::Status()>& call);

  // Calls (each records its outcome).
  bool Create(std::string* id);
  bool Score(const std::string& id, pb::ScoreResponse* out);
  bool ScoreText(const std::string& id);
  bool Ingest(const std::string& id, bool text, bool cancel);
  grpc::Status IngestOnce(const std::string& id, bool text, bool cancel);
  bool Generate(const std::string& id, bool commit, bool cancel, bool stall);
  grpc::Status GenerateOnce(const std::string& id, bool commit, bool cancel, bool stall);
  bool Checkpoint(const std::string& id, std::string* checkpoint_id);
  bool Restore(const std::string& checkpoint_id, const std::string& over, std::string* id);
  bool Fork(const std::string& id, std::string* fork_id);
  bool Export(const std::string& session_id, const std::string& checkpoint_id, bool stall,
              bool cancel, std::string* bytes);
  bool Import(const std::string& bytes, std::string* id);
  bool Delete(const std::string& id);
  bool Reset(const std::string& id);
  bool DeleteCheckpoint(const std::string& checkpoint_id);
  void Listings();
  void BadInputs();

  // Operations of the mix (each checks its invariants).
  void OpCheckpoint();
  void OpVerifyCheckpoint(bool over_owned);
  void OpCopy(bool fork);  // fork or export+import, of an own session or a canary
  void OpReset();
  void OpReadCanary();
  void OneOperation();

  std::string RandomOwned();
  const Canary& RandomCanary();
  void Adopt(const std::string& id);
  std::vector<int32_t> RandomTokens(int n);
  std::string RandomText(int words);

  const int index_;
  const Options& options_;
  std::unique_ptr<pb::TttService::Stub> stub_;
  Recorder* const recorder_;
  const Shared* shared_ = nullptr;
  std::mt19937_64 rng_;
  std::vector<std::string> owned_;   // sessions this client writes (at most kMaxOwned)
  std::set<std::string> lingering_;  // own sessions whose last writer call the client ended
  std::vector<Pending> pending_;     // checkpoints not yet verified
  std::vector<std::string> made_checkpoints_;
  std::string operation_ = "set-up";  // the operation of the mix in progress
};

}  // namespace ttt::cli::stress
