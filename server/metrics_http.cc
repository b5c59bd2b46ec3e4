// The /metrics HTTP endpoint on libmicrohttpd (see metrics_http.h for why not civetweb).
#include "server/metrics_http.h"

#include <microhttpd.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <condition_variable>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "util/listen_socket.h"

namespace ttt::server {
namespace {

using Clock = std::chrono::steady_clock;
constexpr char kContentType[] = "text/plain; version=0.0.4; charset=utf-8";

}  // namespace

// libmicrohttpd has an idle timeout but no whole-request deadline, so this keeps one: every
// open connection with its deadline, and a thread that shuts down the socket of any connection
// past it (libmicrohttpd then sees EOF and closes it). The same table enforces
// options.max_connections by closing the connection idle longest when a new one comes past it
// (libmicrohttpd's own limit, set higher, would refuse the newcomer instead: a scraper locked out
// by idle clients). The table entry is removed in the CLOSED notification, which libmicrohttpd
// sends before it closes the socket, under `mu`: a socket is never shut down after its
// descriptor could have been reused.
struct HttpExposer::State {
  Render render;
  HttpExposerOptions options;
  MHD_Daemon* daemon = nullptr;

  struct Connection {
    int fd;
    Clock::time_point deadline;
    Clock::time_point idle_since;  // opened, or its last response sent
    bool busy = false;             // a request's header is in, its response not yet sent
    bool cut = false;              // shut down; closing
  };
  std::mutex mu;
  std::condition_variable wake;
  bool stop ABSL_GUARDED_BY(mu) = false;
  std::unordered_map<MHD_Connection*, Connection> connections ABSL_GUARDED_BY(mu);
  std::thread deadlines;

  void Opened(MHD_Connection* c) {
    const MHD_ConnectionInfo* info = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (info == nullptr) return;
    const Clock::time_point now = Clock::now();
    std::lock_guard<std::mutex> lock(mu);
    connections[c] = Connection{info->connect_fd, now + options.request_deadline, now};
    MakeRoomFor(c);
  }
  // Past max_connections (not counting those already closing): closes the connection idle
  // longest other than `newcomer`, or the newcomer when every other one has a request in flight.
  void MakeRoomFor(MHD_Connection* newcomer) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    size_t open = 0;
    Connection* idlest = nullptr;
    for (auto& [c, conn] : connections) {
      if (conn.cut) continue;
      ++open;
      if (c == newcomer || conn.busy) continue;
      if (idlest == nullptr || conn.idle_since < idlest->idle_since) idlest = &conn;
    }
    if (open <= options.max_connections) return;
    Connection& victim = idlest != nullptr ? *idlest : connections[newcomer];
    shutdown(victim.fd, SHUT_RDWR);
    victim.cut = true;
  }
  void Closed(MHD_Connection* c) {
    std::lock_guard<std::mutex> lock(mu);
    connections.erase(c);
  }
  // A request's header is in: it gets a fresh deadline for its response (a reader that stalls
  // is cut off too) and the next request on the connection.
  void RequestArrived(MHD_Connection* c) {
    std::lock_guard<std::mutex> lock(mu);
    auto it = connections.find(c);
    if (it == connections.end()) return;
    it->second.deadline = Clock::now() + options.request_deadline;
    it->second.busy = true;
  }
  // Its response is sent (or the request failed): the connection is idle until the next one.
  void RequestDone(MHD_Connection* c) {
    std::lock_guard<std::mutex> lock(mu);
    auto it = connections.find(c);
    if (it == connections.end()) return;
    it->second.busy = false;
    it->second.idle_since = Clock::now();
  }
  void EnforceDeadlines() {
    std::unique_lock<std::mutex> lock(mu);
    while (!stop) {
      wake.wait_for(lock, std::chrono::milliseconds(100));
      const Clock::time_point now = Clock::now();
      for (auto& [c, conn] : connections) {
        if (conn.cut || conn.deadline > now) continue;
        shutdown(conn.fd, SHUT_RDWR);
        conn.cut = true;
      }
    }
  }

  static void OnConnection(void* cls, MHD_Connection* c, void** socket_context,
                           MHD_ConnectionNotificationCode toe) {
    auto* s = static_cast<State*>(cls);
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) s->Opened(c);
    if (toe == MHD_CONNECTION_NOTIFY_CLOSED) s->Closed(c);
  }
  static void OnRequestCompleted(void* cls, MHD_Connection* c, void**, MHD_RequestTerminationCode) {
    static_cast<State*>(cls)->RequestDone(c);
  }
  static MHD_Result Answer(void* cls, MHD_Connection* c, const char* url, const char* method,
                           const char* version, const char* upload_data, size_t* upload_data_size,
                           void** request_context);
};

namespace {

MHD_Result Respond(MHD_Connection* c, unsigned code, const std::string& body) {
  MHD_Response* response = MHD_create_response_from_buffer(
      body.size(), const_cast<char*>(body.data()), MHD_RESPMEM_MUST_COPY);
  if (response == nullptr) return MHD_NO;  // out of memory: libmicrohttpd closes the connection
  MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, kContentType);
  if (code == MHD_HTTP_METHOD_NOT_ALLOWED) {
    MHD_add_response_header(response, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
  }
  if (code == MHD_HTTP_UNAUTHORIZED) {
    MHD_add_response_header(response, MHD_HTTP_HEADER_WWW_AUTHENTICATE,
                            "Bearer realm=\"ttt-serve metrics\"");
  }
  const MHD_Result queued = MHD_queue_response(c, code, response);
  MHD_destroy_response(response);
  return queued;
}

}  // namespace

// libmicrohttpd calls this once when a request's header is in, then with the body's pieces,
// then once more with none left: a GET is answered on that last call, so the connection can
// stay open for the scraper's next request (answering earlier makes libmicrohttpd close it).
MHD_Result HttpExposer::State::Answer(void* cls, MHD_Connection* c, const char* url,
                                      const char* method, const char*, const char*,
                                      size_t* upload_data_size, void** request_context) {
  static int header_seen;  // any non-null marker
  auto* s = static_cast<State*>(cls);
  const std::string m = method, path = url;
  const bool get = m == MHD_HTTP_METHOD_GET || m == MHD_HTTP_METHOD_HEAD;
  if (*request_context == nullptr) {
    s->RequestArrived(c);
    *request_context = &header_seen;
    // Other methods are refused before their body is read; the connection then closes.
    return get ? MHD_YES : Respond(c, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET and HEAD\n");
  }
  if (*upload_data_size != 0) {  // a body sent with a GET: read and dropped
    *upload_data_size = 0;
    return MHD_YES;
  }
  try {  // nothing may unwind through libmicrohttpd's C frames
    if (path == "/readyz" && s->options.ready) {
      return s->options.ready() ? Respond(c, MHD_HTTP_OK, "ready\n")
                                : Respond(c, MHD_HTTP_SERVICE_UNAVAILABLE, "not ready\n");
    }
    if (path != "/metrics" && path != "/") {
      return Respond(c, MHD_HTTP_NOT_FOUND, "try /metrics\n");
    }
    if (s->options.authorize) {
      const char* header =
          MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
      const absl::Status allowed = s->options.authorize(
          header == nullptr ? std::nullopt : std::optional<std::string>(header));
      if (!allowed.ok()) {
        const bool who = allowed.code() == absl::StatusCode::kUnauthenticated;
        return Respond(c, who ? MHD_HTTP_UNAUTHORIZED : MHD_HTTP_FORBIDDEN,
                       absl::StrCat(allowed.message(), "\n"));
      }
    }
    return Respond(c, MHD_HTTP_OK, s->render());
  } catch (const std::exception& e) {
    return Respond(c, MHD_HTTP_INTERNAL_SERVER_ERROR,
                   absl::StrCat("cannot render metrics: ", e.what(), "\n"));
  }
}

namespace {
// libmicrohttpd's own limit: room above ours for the connections State::MakeRoomFor has shut down
// but libmicrohttpd has not closed yet, so a newcomer reaches MakeRoomFor instead of being refused.
unsigned MhdConnectionLimit(unsigned max_connections) { return 2 * max_connections + 16; }

absl::Status CheckTls(const HttpExposerOptions& options) {
  if (options.tls_cert_pem.empty() && options.tls_key_pem.empty()) return absl::OkStatus();
  if (options.tls_cert_pem.empty() || options.tls_key_pem.empty()) {
    return absl::InvalidArgumentError(
        "--metrics_tls_cert_file and --metrics_tls_key_file go together (the certificate and "
        "its key)");
  }
  if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES) {
    return absl::FailedPreconditionError(
        "TLS on the metrics port was asked for (--metrics_tls_cert_file), but this "
        "libmicrohttpd was built without TLS (GnuTLS): install one with TLS, or leave the "
        "metrics port plaintext behind a mesh");
  }
  return absl::OkStatus();
}
}  // namespace

absl::StatusOr<std::unique_ptr<HttpExposer>> HttpExposer::Start(const std::string& address,
                                                                Render render,
                                                                const HttpExposerOptions& options) {
  absl::Status tls = CheckTls(options);
  if (!tls.ok()) return tls;
  absl::StatusOr<int> fd = util::ListenOn(address, "metrics");
  if (!fd.ok()) return fd.status();
  std::unique_ptr<HttpExposer> exposer(new HttpExposer());
  exposer->port_ = util::BoundPort(*fd);
  exposer->state_ = std::make_unique<State>();
  State* s = exposer->state_.get();
  s->render = std::move(render);
  s->options = options;
  const bool https = !s->options.tls_cert_pem.empty();
  // libmicrohttpd keeps pointers to the PEM strings: they live in s->options.
  MHD_OptionItem tls_options[] = {
      {https ? MHD_OPTION_HTTPS_MEM_CERT : MHD_OPTION_END, 0,
       const_cast<char*>(s->options.tls_cert_pem.c_str())},
      {MHD_OPTION_HTTPS_MEM_KEY, 0, const_cast<char*>(s->options.tls_key_pem.c_str())},
      {MHD_OPTION_END, 0, nullptr}};
  s->daemon = MHD_start_daemon(
      MHD_USE_EPOLL_INTERNAL_THREAD | (https ? MHD_USE_TLS : 0), 0, nullptr, nullptr,
      &State::Answer, s, MHD_OPTION_LISTEN_SOCKET, *fd, MHD_OPTION_CONNECTION_LIMIT,
      MhdConnectionLimit(options.max_connections), MHD_OPTION_CONNECTION_TIMEOUT,
      options.idle_timeout_s, MHD_OPTION_CONNECTION_MEMORY_LIMIT, options.connection_memory_bytes,
      MHD_OPTION_NOTIFY_CONNECTION, &State::OnConnection, s, MHD_OPTION_NOTIFY_COMPLETED,
      &State::OnRequestCompleted, s, MHD_OPTION_ARRAY, tls_options, MHD_OPTION_END);
  if (s->daemon == nullptr) {
    close(*fd);
    if (https) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cannot serve metrics over TLS on ", address,
          ": libmicrohttpd refused the certificate and key (not PEM, or not a pair?)"));
    }
    return absl::FailedPreconditionError(
        absl::StrCat("cannot serve metrics on ", address, ": libmicrohttpd did not start"));
  }
  s->deadlines = std::thread([s] { s->EnforceDeadlines(); });
  return exposer;
}

HttpExposer::~HttpExposer() {
  if (state_ == nullptr) return;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->stop = true;
  }
  state_->wake.notify_all();
  if (state_->deadlines.joinable()) state_->deadlines.join();
  MHD_stop_daemon(state_->daemon);  // closes the listening socket and every connection
}

}  // namespace ttt::server
