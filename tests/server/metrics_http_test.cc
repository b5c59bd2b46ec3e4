// server/metrics_http: the /metrics endpoint against hostile clients over real loopback sockets.
// Functional checks only (no timed assertions): a scrape is answered while slow and idle
// connections are still open; a client that trickles bytes is cut off by the request deadline
// although it is never idle; an oversized header gets 431; routes and methods; /readyz.
#include "server/metrics_http.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace ttt::server {
namespace {

using std::chrono::milliseconds;

int Connect(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    ADD_FAILURE() << "connect to port " << port << ": " << std::strerror(errno);
  }
  return fd;
}

void SendAll(int fd, const std::string& s) {
  size_t sent = 0;
  while (sent < s.size()) {
    const ssize_t n = send(fd, s.data() + sent, s.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return;
    sent += static_cast<size_t>(n);
  }
}

// Reads until the server closes (the responses carry Connection: close or we asked for it).
std::string ReadAll(int fd) {
  std::string out;
  char buf[4096];
  for (;;) {
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) return out;
    out.append(buf, static_cast<size_t>(n));
  }
}

std::string Request(int port, const std::string& request) {
  const int fd = Connect(port);
  SendAll(fd, request);
  std::string response = ReadAll(fd);
  close(fd);
  return response;
}

std::string Get(int port, const std::string& path) {
  return Request(port, "GET " + path + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
}

// True while the server has neither closed nor reset `fd` (nothing to read, no EOF).
bool StillOpen(int fd) {
  pollfd p{fd, POLLIN, 0};
  if (poll(&p, 1, 0) == 0) return true;
  char c;
  return recv(fd, &c, 1, MSG_DONTWAIT | MSG_PEEK) > 0;
}

HttpExposer::Render Body(const std::string& body) {
  return [body] { return body; };
}

TEST(HttpExposerTest, ServesTheRenderedBodyOnMetricsAndRoot) {
  auto exposer = HttpExposer::Start("127.0.0.1:0", Body("tttserve_up 1\n"));
  ASSERT_TRUE(exposer.ok()) << exposer.status();
  const int port = (*exposer)->port();
  ASSERT_GT(port, 0);
  for (const char* path : {"/metrics", "/", "/metrics?x=1"}) {
    const std::string r = Get(port, path);
    EXPECT_EQ(r.rfind("HTTP/1.1 200", 0), 0u) << path << ": " << r;
    EXPECT_NE(r.find("Content-Type: text/plain; version=0.0.4"), std::string::npos) << r;
    EXPECT_NE(r.find("\r\n\r\ntttserve_up 1\n"), std::string::npos) << r;
  }
  const std::string head =
      Request(port, "HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(head.rfind("HTTP/1.1 200", 0), 0u) << head;
  EXPECT_EQ(head.find("tttserve_up"), std::string::npos) << head;
}

// Prometheus keeps its connection between scrapes: two requests on one connection, two answers.
TEST(HttpExposerTest, KeepsTheConnectionOpenBetweenScrapes) {
  auto exposer = HttpExposer::Start("127.0.0.1:0", Body("tttserve_up 1\n"));
  ASSERT_TRUE(exposer.ok()) << exposer.status();
  const int fd = Connect((*exposer)->port());
  SendAll(fd, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  std::string first;
  char buf[4096];
  while (first.find("tttserve_up 1\n") == std::string::npos) {
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    ASSERT_GT(n, 0) << "closed after " << first;
    first.append(buf, static_cast<size_t>(n));
  }
  EXPECT_EQ(first.find("Connection: close"), std::string::npos) << first;
  SendAll(fd, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  const std::string second = ReadAll(fd);
  close(fd);
  EXPECT_EQ(second.rfind("HTTP/1.1 200", 0), 0u) << second;
  EXPECT_NE(second.find("tttserve_up 1\n"), std::string::npos) << second;
}

TEST(HttpExposerTest, AnswersNotFoundAndMethodNotAllowed) {
  auto exposer = HttpExposer::Start("127.0.0.1:0", Body("x 1\n"));
  ASSERT_TRUE(exposer.ok()) << exposer.status();
  const std::string missing = Get((*exposer)->port(), "/metricz");
  EXPECT_EQ(missing.rfind("HTTP/1.1 404", 0), 0u) << missing;
  EXPECT_NE(missing.find("try /metrics"), std::string::npos) << missing;
  const std::string post = Request(
      (*exposer)->port(),
      "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(post.rfind("HTTP/1.1 405", 0), 0u) << post;
  EXPECT_NE(post.find("Allow: GET, HEAD"), std::string::npos) << post;
}

// /readyz follows options.ready (SIGTERM: 503 while the server still answers calls) and is not
// behind the scrape's authorization: probes carry no token.
TEST(HttpExposerTest, ReadyzAnswersFromTheReadyCallbackWithoutAuthorization) {
  std::atomic<bool> ready{true};
  HttpExposerOptions options;
  options.ready = [&ready] { return ready.load(); };
  options.authorize = [](const std::optional<std::string>&) {
    return absl::UnauthenticatedError("no token");
  };
  auto exposer = HttpExposer::Start("127.0.0.1:0", Body("x 1\n"), options);
  ASSERT_TRUE(exposer.ok()) << exposer.status();
  const int port = (*exposer)->port();
  const std::string serving = Get(port, "/readyz");
  EXPECT_EQ(serving.rfind("HTTP/1.1 200", 0), 0u) << serving;
  EXPECT_NE(serving.find("\r\n\r\nready\n"), std::string::npos) << serving;
  ready = false;
  const std::string draining = Get(port, "/readyz");
  EXPECT_EQ(draining.rfind("HTTP/1.1 503", 0), 0u) << draining;
  EXPECT_NE(draining.find("\r\n\r\nnot ready\n"), std::string::npos) << draining;
  EXPECT_EQ(Get(port, "/metrics").rfind("HTTP/1.1 401", 0), 0u);
}

TEST(HttpExposerTest, ReadyzIsNotFoundWithoutAReadyCallback) {
  auto exposer = HttpExposer::Start("127.0.0.1:0", Body("x 1\n"));
  ASSERT_TRUE(exposer.ok()) << exposer.status();
  const std::string r = Get((*exposer)->port(), "/readyz");
  EXPECT_EQ(r.rfind("HTTP/1.1 404", 0), 0u) << r;
}

TEST(HttpExposerTest, OversizedHeaderGets431) {
  auto exposer = HttpExposer::Start("127.0.0.1:0", Body("x 1\n"));
  ASSERT_TRUE(exposer.ok()) << exposer.status();
  const std::string big(64 * 1024, 'a');
  const std::string r =
      Request((*exposer)->port(), "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + big + "\r\n\r\n");
  EXPECT_EQ(r.rfind("HTTP/1.1 431", 0), 0u) << r.substr(0, 200);
  // The server is still serving.
  EXPECT_EQ(Get((*exposer)->port(), "/metrics").rfind("HTTP/1.1 200", 0), 0u);
}

// The hand-written responder this replaced served one connection at a time: 20 idle
// connections delayed a scrape by 40 s, a byte-a-second client held it for hours. Here the
// scrape must be answered while all of them are still connected.
TEST(HttpExposerTest, ScrapeIsAnsweredWhileSlowAndIdleConnectionsStayOpen) {
  auto exposer = HttpExposer::Start("127.0.0.1:0", Body("x 1\n"));
  ASSERT_TRUE(exposer.ok()) << exposer.status();
  const int port = (*exposer)->port();
  std::vector<int> idle;
  for (int i = 0; i < 20; ++i) idle.push_back(Connect(port));
  const int slow = Connect(port);
  std::atomic<bool> done{false};
  std::thread trickle([&] {
    const std::string req = "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    for (size_t i = 0; !done; ++i) {
      SendAll(slow, std::string(1, i < req.size() ? req[i] : 'z'));
      std::this_thread::sleep_for(milliseconds(200));
    }
  });
  std::this_thread::sleep_for(milliseconds(500));  // the slow client is mid-header

  const std::string r = Get(port, "/metrics");
  EXPECT_EQ(r.rfind("HTTP/1.1 200", 0), 0u) << r;
  for (int fd : idle) EXPECT_TRUE(StillOpen(fd)) << "an idle connection was closed first";
  EXPECT_TRUE(StillOpen(slow)) << "the slow connection was closed before the scrape";

  done = true;
  trickle.join();
  for (int fd : idle) close(fd);
  close(slow);
}

// 200 idle connections against a cap of 128 (idle timeout and deadline far away): each newcomer
// past the cap closes the connection idle longest, so a scrape is still answered (before, the cap
// left it unanswered until idle connections timed out), and the newest connections stay open.
TEST(HttpExposerTest, ScrapeIsAnsweredWithTheConnectionCapFullOfIdleClients) {
  HttpExposerOptions options;
  options.max_connections = 128;
  options.idle_timeout_s = 600;
  options.request_deadline = std::chrono::seconds(600);
  auto exposer = HttpExposer::Start("127.0.0.1:0", Body("x 1\n"), options);
  ASSERT_TRUE(exposer.ok()) << exposer.status();
  const int port = (*exposer)->port();
  std::vector<int> idle;
  for (int i = 0; i < 200; ++i) idle.push_back(Connect(port));

  const int scrape = Connect(port);
  const timeval wait{60, 0};  // far less than the idle timeout that freed slots before
  setsockopt(scrape, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof(wait));
  SendAll(scrape, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  const std::string r = ReadAll(scrape);
  close(scrape);
  EXPECT_EQ(r.rfind("HTTP/1.1 200", 0), 0u) << "no answer with 200 idle connections: " << r;

  // The oldest were closed to make room, never the newest; at most the cap stays open.
  int open = 0;
  for (int fd : idle) open += StillOpen(fd) ? 1 : 0;
  EXPECT_LE(open, 128);
  EXPECT_FALSE(StillOpen(idle.front())) << "the connection idle longest is still open";
  EXPECT_TRUE(StillOpen(idle.back())) << "the newest idle connection was closed";
  for (int fd : idle) close(fd);
}

// True once the server has closed `fd` (EOF or reset), waiting up to 60 s for it.
bool ClosedByServer(int fd) {
  pollfd p{fd, POLLIN, 0};
  if (poll(&p, 1, 60000) != 1) return false;
  char c;
  return recv(fd, &c, 1, MSG_DONTWAIT | MSG_PEEK) <= 0;
}

// A connection with a response in flight is never the one closed to make room: with the cap
// (1) taken by a client that has not read its 32 MiB answer yet, the newcomer is closed; once
// the answer is read, that connection is idle and the next newcomer closes it instead.
TEST(HttpExposerTest, AtTheCapAResponseInFlightIsKeptAndTheNewcomerClosed) {
  HttpExposerOptions options;
  options.max_connections = 1;
  options.idle_timeout_s = 600;
  options.request_deadline = std::chrono::seconds(600);
  std::atomic<int> renders{0};
  auto exposer = HttpExposer::Start(
      "127.0.0.1:0",
      [&renders] {
        ++renders;
        return std::string(32 << 20, 'x');  // more than the loopback socket buffers hold
      },
      options);
  ASSERT_TRUE(exposer.ok()) << exposer.status();
  const int port = (*exposer)->port();
  const int busy = Connect(port);
  SendAll(busy, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  for (int i = 0; i < 6000 && renders == 0; ++i) std::this_thread::sleep_for(milliseconds(10));
  ASSERT_EQ(renders, 1);

  const int newcomer = Connect(port);
  EXPECT_TRUE(ClosedByServer(newcomer)) << "the newcomer past the cap was kept";
  close(newcomer);
  EXPECT_TRUE(StillOpen(busy)) << "a connection with its response in flight was closed";

  EXPECT_GE(ReadAll(busy).size(), size_t{32 << 20});  // the server closes it after the answer
  close(busy);
  const int next = Connect(port);
  const std::string r = Get(port, "/metrics");  // room again: `next` is idle, so this one stays
  EXPECT_EQ(r.rfind("HTTP/1.1 200", 0), 0u) << r.substr(0, 100);
  EXPECT_TRUE(ClosedByServer(next)) << "the idle connection was kept over a scrape";
  close(next);
}

TEST(HttpExposerTest, RequestDeadlineCutsOffAClientThatIsNeverIdle) {
  HttpExposerOptions options;
  options.idle_timeout_s = 60;
  options.request_deadline = milliseconds(1000);
  auto exposer = HttpExposer::Start("127.0.0.1:0", Body("x 1\n"), options);
  ASSERT_TRUE(exposer.ok()) << exposer.status();
  const int fd = Connect((*exposer)->port());
  // One byte every 100 ms, never a whole header, until the server closes (bounded: 600 bytes).
  bool closed = false;
  for (int i = 0; i < 600 && !closed; ++i) {
    if (send(fd, "a", 1, MSG_NOSIGNAL) != 1) closed = true;
    if (!StillOpen(fd)) closed = true;
    std::this_thread::sleep_for(milliseconds(100));
  }
  EXPECT_TRUE(closed) << "a client trickling a header for 60 s was never cut off";
  close(fd);
}

TEST(HttpExposerTest, IdleConnectionIsClosedAfterTheIdleTimeout) {
  HttpExposerOptions options;
  options.idle_timeout_s = 1;
  auto exposer = HttpExposer::Start("127.0.0.1:0", Body("x 1\n"), options);
  ASSERT_TRUE(exposer.ok()) << exposer.status();
  const int fd = Connect((*exposer)->port());
  pollfd p{fd, POLLIN, 0};
  ASSERT_EQ(poll(&p, 1, 60000), 1) << "an idle connection was kept for 60 s";
  char c;
  EXPECT_LE(recv(fd, &c, 1, 0), 0);
  close(fd);
}

TEST(HttpExposerTest, StopsWithConnectionsOpen) {
  auto exposer = HttpExposer::Start("127.0.0.1:0", Body("x 1\n"));
  ASSERT_TRUE(exposer.ok()) << exposer.status();
  const int fd = Connect((*exposer)->port());
  SendAll(fd, "GET /met");
  exposer->reset();  // must not wait for the client
  EXPECT_EQ(ReadAll(fd), "");
  close(fd);
}

TEST(HttpExposerTest, UnusableAddressIsFailedPrecondition) {
  auto bad = HttpExposer::Start("no-such-host.invalid:80", Body(""));
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(bad.status().message().find("cannot serve metrics on no-such-host.invalid:80"),
            std::string::npos)
      << bad.status();

  auto first = HttpExposer::Start("127.0.0.1:0", Body(""));
  ASSERT_TRUE(first.ok()) << first.status();
  const std::string taken = "127.0.0.1:" + std::to_string((*first)->port());
  auto second = HttpExposer::Start(taken, Body(""));
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(second.status().message().find("Address already in use"), std::string::npos)
      << second.status();
}

TEST(HttpExposerTest, ServesOnIpv6Loopback) {
  auto exposer = HttpExposer::Start("[::1]:0", Body("x 1\n"));
  if (!exposer.ok() && exposer.status().message().find("Cannot assign") != std::string::npos) {
    GTEST_SKIP() << "no IPv6 loopback here: " << exposer.status();
  }
  ASSERT_TRUE(exposer.ok()) << exposer.status();
  const int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in6 a{};
  a.sin6_family = AF_INET6;
  a.sin6_port = htons(static_cast<uint16_t>((*exposer)->port()));
  a.sin6_addr = in6addr_loopback;
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0) << std::strerror(errno);
  SendAll(fd, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  const std::string r = ReadAll(fd);
  close(fd);
  EXPECT_EQ(r.rfind("HTTP/1.1 200", 0), 0u) << r;
}

}  // namespace
}  // namespace ttt::server
