// Test helper for the tests that run the real gRPC service in-process on the golden llama
// fixture (server_test, server_auth_test, server_quotas_test): the fixture that owns the test's
// folder, the server options and the server and makes each call's client context, and the check
// of a refused call's code and message. Header-only and no heavier than what those tests include
// anyway (server/server.h, grpcpp, the generated stubs): they are slow to compile already.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "server/server.h"
#include "tests/testing/dirs.h"
#include "tttserve/v1/ttt_service.grpc.pb.h"

namespace ttt::testing {

// Options for a server on the golden llama fixture: an ephemeral loopback port, no metrics
// listener, checkpoints under `dir`/ckpt, a short drain so that a test's shutdown stays quick.
inline server::ServerOptions LoopbackServerOptions(const std::filesystem::path& dir) {
  server::ServerOptions options;
  options.model_dir = GoldenLlama().string();
  options.listen = "127.0.0.1:0";
  options.metrics_listen = "";
  options.checkpoint_dir = (dir / "ckpt").string();
  options.drain_timeout_s = 2;
  return options;
}

// Checks a refused call: its code, and a message that contains `fragment`.
inline void ExpectStatus(const grpc::Status& st, grpc::StatusCode code,
                         const std::string& fragment) {
  EXPECT_EQ(st.error_code(), code) << st.error_message();
  EXPECT_NE(st.error_message().find(fragment), std::string::npos)
      << "message '" << st.error_message() << "' lacks '" << fragment << "'";
}

// The body of GET /metrics on the loopback `port` ("" when it could not be read).
inline std::string ScrapeMetrics(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return "";
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string body;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const std::string req = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    if (::send(fd, req.data(), req.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(req.size())) {
      char buf[8192];
      for (ssize_t n; (n = ::recv(fd, buf, sizeof(buf), 0)) > 0;) body.append(buf, n);
    }
  }
  ::close(fd);
  return body;
}

// What a program reads from a failed call's details (grpc-status-details-bin, a
// google.rpc.Status): ErrorInfo's reason, domain and metadata, RetryInfo's delay in ms.
struct StatusDetails {
  std::string reason;
  std::string domain;
  std::map<std::string, std::string> metadata;
  std::optional<int64_t> retry_ms;
};
inline StatusDetails DetailsOf(const grpc::Status& st) {
  StatusDetails out;
  google::rpc::Status details;
  EXPECT_TRUE(details.ParseFromString(st.error_details())) << st.error_message();
  EXPECT_EQ(details.code(), static_cast<int>(st.error_code()));
  for (const google::protobuf::Any& any : details.details()) {
    google::rpc::ErrorInfo info;
    google::rpc::RetryInfo retry;
    if (any.UnpackTo(&info)) {
      out.reason = info.reason();
      out.domain = info.domain();
      out.metadata.insert(info.metadata().begin(), info.metadata().end());
    } else if (any.UnpackTo(&retry)) {
      out.retry_ms = retry.retry_delay().seconds() * 1000 + retry.retry_delay().nanos() / 1000000;
    }
  }
  return out;
}
// Checks a refused call's ErrorInfo reason (domain "ttt-serve") and RetryInfo delay (none:
// nullopt).
inline void ExpectReason(const grpc::Status& st, const std::string& reason,
                         std::optional<int64_t> retry_ms) {
  const StatusDetails details = DetailsOf(st);
  EXPECT_EQ(details.reason, reason) << st.error_message();
  EXPECT_EQ(details.domain, "ttt-serve");
  EXPECT_EQ(details.retry_ms, retry_ms) << st.error_message();
}

// A fresh folder per test (FreshTestDir) and options for a server in it
// (LoopbackServerOptions); a test changes `options_` and starts `server_` itself. TearDown drops
// the client stub, then the server (which drains and may checkpoint into the folder), then the
// folder.
class ServerFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = FreshTestDir();
    options_ = LoopbackServerOptions(dir_);
  }
  void TearDown() override {
    stub_.reset();
    server_.reset();
    std::filesystem::remove_all(dir_);
  }

  // A context for one call as `tenant` (x-tenant-id; "" for the default tenant) with a 60 s
  // deadline, so that a server that stops answering fails the test instead of hanging it.
  static std::unique_ptr<grpc::ClientContext> Ctx(const std::string& tenant = "") {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    if (!tenant.empty()) ctx->AddMetadata("x-tenant-id", tenant);
    return ctx;
  }

  std::filesystem::path dir_;
  server::ServerOptions options_;
  std::unique_ptr<server::Server> server_;
  std::unique_ptr<tttserve::v1::TttService::Stub> stub_;
};

}  // namespace ttt::testing
