// Real etcd processes for tests (Debian's etcd-server, installed by deploy/install-deps.sh test):
// one member or a cluster on loopback ports, each killed (SIGKILL) at destruction and by the
// kernel should the test process die first; clients for them; bounded waits.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "coord/etcd_client.h"

namespace ttt::testing {

using coord::EtcdClient;
using coord::EtcdClientOptions;
using coord::MemberStatus;

#ifndef TTT_ETCD_BINARY
#define TTT_ETCD_BINARY "/usr/bin/etcd"
#endif

// Bound on waiting for etcd to come up, elect a leader or expire a lease: generous, since a
// loaded CI machine is slow; a healthy run waits a few seconds at most.
inline constexpr auto kPatience = std::chrono::seconds(30);

// A loopback port free at the time of the call (etcd binds it a moment later).
inline int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(address);
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    ADD_FAILURE() << "no free loopback port";
  }
  close(fd);
  return ntohs(address.sin_port);
}

// Polls `done` until it holds or kPatience passes. Returns whether it held.
inline bool WaitFor(const std::function<bool()>& done) {
  const std::chrono::steady_clock::time_point give_up =
      std::chrono::steady_clock::now() + kPatience;
  while (std::chrono::steady_clock::now() < give_up) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return done();
}

inline std::string ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// TLS for a member's client port: its server certificate and key, and the CA its clients'
// certificates must be signed by (etcd's --client-cert-auth).
struct MemberTls {
  std::filesystem::path cert;
  std::filesystem::path key;
  std::filesystem::path client_ca;
};

// One etcd member on loopback, its data and log in `dir`. Killed (SIGKILL) at destruction, and by
// the kernel should the test process die first.
class EtcdMember {
 public:
  EtcdMember(std::string name, std::filesystem::path dir, std::optional<MemberTls> tls = {})
      : name_(std::move(name)),
        dir_(std::move(dir)),
        tls_(std::move(tls)),
        client_port_(FreePort()),
        peer_port_(FreePort()) {}
  ~EtcdMember() { Kill(); }

  std::string endpoint() const {
    return absl::StrCat(tls_ ? "https://" : "", "127.0.0.1:", client_port_);
  }
  std::string peer() const { return absl::StrCat(name_, "=http://127.0.0.1:", peer_port_); }
  std::string log() const { return ReadFile(dir_ / (name_ + ".log")); }

  // `cluster`: every member's peer(), comma-separated.
  void Start(const std::string& cluster, const std::string& token) {
    ASSERT_EQ(access(TTT_ETCD_BINARY, X_OK), 0)
        << "etcd not found at " TTT_ETCD_BINARY
           "; deploy/install-deps.sh test installs etcd-server";
    std::filesystem::create_directories(dir_);
    const std::string client_url =
        absl::StrCat(tls_ ? "https" : "http", "://127.0.0.1:", client_port_);
    const std::string peer_url = absl::StrCat("http://127.0.0.1:", peer_port_);
    std::vector<std::string> args = {TTT_ETCD_BINARY};
    auto flag = [&args](const char* name, std::string value) {
      args.push_back(name);
      args.push_back(std::move(value));
    };
    flag("--name", name_);
    flag("--data-dir", (dir_ / (name_ + ".etcd")).string());
    flag("--listen-client-urls", client_url);
    flag("--advertise-client-urls", client_url);
    flag("--listen-peer-urls", peer_url);
    flag("--initial-advertise-peer-urls", peer_url);
    flag("--initial-cluster", cluster);
    flag("--initial-cluster-token", token);
    flag("--initial-cluster-state", "new");
    flag("--logger", "zap");
    flag("--log-outputs", "stderr");
    if (tls_) {
      flag("--cert-file", tls_->cert.string());
      flag("--key-file", tls_->key.string());
      flag("--trusted-ca-file", tls_->client_ca.string());
      args.push_back("--client-cert-auth");
    }
    const std::string log_path = (dir_ / (name_ + ".log")).string();
    const int log = open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    ASSERT_GE(log, 0) << "cannot write " << log_path;
    std::vector<char*> argv;
    for (std::string& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);
    pid_ = fork();
    if (pid_ == 0) {
      // Only async-signal-safe calls between fork and exec: this process has threads (gRPC's).
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (dup2(log, STDOUT_FILENO) < 0 || dup2(log, STDERR_FILENO) < 0) _exit(126);
      execv(argv[0], argv.data());
      _exit(127);
    }
    close(log);
    ASSERT_GT(pid_, 0) << "fork failed";
  }

  void Kill() {
    if (pid_ <= 0) return;
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
  void Pause() { ASSERT_EQ(kill(pid_, SIGSTOP), 0); }
  void Resume() { ASSERT_EQ(kill(pid_, SIGCONT), 0); }

 private:
  const std::string name_;
  const std::filesystem::path dir_;
  const std::optional<MemberTls> tls_;
  const int client_port_;
  const int peer_port_;
  pid_t pid_ = -1;
};

// `options` with `endpoints`; a failed Create fails the test.
inline std::unique_ptr<EtcdClient> MakeClient(EtcdClientOptions options,
                                              std::vector<std::string> endpoints) {
  options.endpoints = std::move(endpoints);
  absl::StatusOr<std::unique_ptr<EtcdClient>> client = EtcdClient::Create(std::move(options));
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? *std::move(client) : nullptr;
}

inline std::unique_ptr<EtcdClient> MakeClient(std::vector<std::string> endpoints,
                                              absl::Duration call_timeout = absl::Seconds(5),
                                              absl::Duration attempt_timeout = absl::Seconds(2)) {
  EtcdClientOptions options;
  options.call_timeout = call_timeout;
  options.attempt_timeout = attempt_timeout;
  return MakeClient(std::move(options), std::move(endpoints));
}

// Members of one cluster, started together; healthy (a leader elected) when Start returns.
// `tls`: the members' client ports take TLS, and `probe_options` (its TLS files) is how the
// cluster's own health probes connect.
class EtcdCluster {
 public:
  EtcdCluster(int size, const std::filesystem::path& dir, std::optional<MemberTls> tls = {},
              EtcdClientOptions probe_options = {})
      : probe_options_(std::move(probe_options)) {
    for (int i = 0; i < size; ++i) {
      members_.push_back(std::make_unique<EtcdMember>(absl::StrCat("m", i), dir, tls));
    }
  }

  void Start() {
    std::vector<std::string> peers;
    for (const auto& member : members_) peers.push_back(member->peer());
    const std::string token = absl::StrCat("coord-test-", getpid(), "-", FreePort());
    for (const auto& member : members_) {
      ASSERT_NO_FATAL_FAILURE(member->Start(absl::StrJoin(peers, ","), token));
    }
    for (const auto& member : members_) {
      std::unique_ptr<EtcdClient> probe = MakeClient(probe_options_, {member->endpoint()});
      absl::StatusOr<MemberStatus> status;
      ASSERT_TRUE(WaitFor([&] {
        status = probe->Status(member->endpoint());
        return status.ok() && status->leader_id != 0;
      })) << "etcd member at "
          << member->endpoint() << " never became healthy (" << status.status() << "); its log:\n"
          << member->log();
    }
  }

  EtcdMember& member(int i) { return *members_[i]; }
  std::vector<std::string> endpoints() const {
    std::vector<std::string> result;
    for (const auto& member : members_) result.push_back(member->endpoint());
    return result;
  }
  // The index of the member that leads, as the members that answer report it; -1 while one of
  // them has no leader.
  int Leader() const {
    std::unique_ptr<EtcdClient> probe = MakeClient(probe_options_, endpoints());
    int leader = -1;
    for (size_t i = 0; i < members_.size(); ++i) {
      absl::StatusOr<MemberStatus> status = probe->Status(members_[i]->endpoint());
      if (!status.ok()) continue;  // killed
      if (status->leader_id == 0) return -1;
      if (status->leader_id == status->member_id) leader = static_cast<int>(i);
    }
    return leader;
  }

 private:
  const EtcdClientOptions probe_options_;
  std::vector<std::unique_ptr<EtcdMember>> members_;
};

// <tmp>/ttt-etcd_test-<name>-<pid>, empty at construction, removed at destruction (declare it
// before the members that write into it).
class TempDir {
 public:
  explicit TempDir(const std::string& name)
      : path_(std::filesystem::temp_directory_path() /
              absl::StrCat("ttt-etcd_test-", name, "-", getpid())) {
    std::filesystem::remove_all(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::filesystem::path& path() const { return path_; }

 private:
  const std::filesystem::path path_;
};

// What a server process holds on a cluster: a client, and its lease kept alive (its identity).
struct ClusterIdentity {
  std::shared_ptr<EtcdClient> etcd;
  std::shared_ptr<coord::KeptLease> lease;
};

inline ClusterIdentity JoinCluster(const std::vector<std::string>& endpoints,
                                   absl::Duration ttl = absl::Seconds(20)) {
  ClusterIdentity identity;
  identity.etcd = MakeClient(endpoints);
  if (identity.etcd == nullptr) return identity;
  auto lease = identity.etcd->GrantKept(ttl);
  EXPECT_TRUE(lease.ok()) << lease.status();
  if (lease.ok()) identity.lease = std::move(*lease);
  return identity;
}

// `options` (a server's) joined to `cluster` as replica `name`: its own client and lease.
template <typename ServerOptions>
ServerOptions OnCluster(ServerOptions options, const EtcdCluster& cluster,
                        const std::string& name) {
  ClusterIdentity identity = JoinCluster(cluster.endpoints());
  options.etcd = identity.etcd;
  options.etcd_lease = identity.lease;
  options.replica_id = name;
  return options;
}

}  // namespace ttt::testing
