// See http_client.h.
#include "tools/load/http_client.h"

#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace ttt::cli {

namespace {

// A connected TCP socket to "host:port", or UNAVAILABLE.
absl::StatusOr<int> Connect(const std::string& address) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("--http_address '", address, "' is not host:port"));
  }
  const std::string host = address.substr(0, colon), port = address.substr(colon + 1);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (getaddrinfo(host.c_str(), port.c_str(), &hints, &found) != 0 || found == nullptr) {
    return absl::UnavailableError(absl::StrCat("cannot resolve ", address));
  }
  int fd = -1;
  for (addrinfo* a = found; a != nullptr && fd < 0; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
    if (fd >= 0 && connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(found);
  if (fd < 0) return absl::UnavailableError(absl::StrCat("cannot connect to ", address));
  return fd;
}

bool SendAll(int fd, const std::string& data) {
  for (size_t sent = 0; sent < data.size();) {
    const ssize_t n = send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return false;
    sent += static_cast<size_t>(n);
  }
  return true;
}

}  // namespace

absl::StatusOr<int> PostStreaming(const std::string& address, const std::string& path,
                                  const std::vector<std::pair<std::string, std::string>>& headers,
                                  const std::string& body,
                                  const std::function<void(std::string_view)>& on_event) {
  absl::StatusOr<int> fd = Connect(address);
  if (!fd.ok()) return fd.status();
  // HTTP/1.0: the server answers without chunked encoding and closes the connection at the end.
  std::string request =
      absl::StrCat("POST ", path, " HTTP/1.0\r\nHost: ", address,
                   "\r\nContent-Type: application/json\r\nContent-Length: ", body.size(), "\r\n");
  for (const auto& [name, value] : headers) absl::StrAppend(&request, name, ": ", value, "\r\n");
  absl::StrAppend(&request, "\r\n", body);
  if (!SendAll(*fd, request)) {
    close(*fd);
    return absl::UnavailableError(absl::StrCat("cannot send to ", address));
  }
  std::string buffer;
  int status = 0;
  size_t body_start = std::string::npos;
  char chunk[16384];
  while (true) {
    const ssize_t n = recv(*fd, chunk, sizeof(chunk), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    buffer.append(chunk, static_cast<size_t>(n));
    if (body_start == std::string::npos) {
      const size_t end = buffer.find("\r\n\r\n");
      if (end == std::string::npos) continue;
      // "HTTP/1.x NNN reason"
      const size_t space = buffer.find(' ');
      if (space == std::string::npos || !absl::SimpleAtoi(buffer.substr(space + 1, 3), &status)) {
        close(*fd);
        return absl::UnavailableError(absl::StrCat("malformed HTTP answer from ", address));
      }
      buffer.erase(0, end + 4);
      body_start = 0;
    }
    if (status / 100 != 2) continue;  // an error body is passed whole at the end
    size_t line_end;
    while ((line_end = buffer.find('\n')) != std::string::npos) {
      std::string_view line(buffer.data(), line_end);
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (line.substr(0, 6) == "data: ") on_event(line.substr(6));
      buffer.erase(0, line_end + 1);
    }
  }
  close(*fd);
  if (status == 0) return absl::UnavailableError(absl::StrCat("no HTTP answer from ", address));
  if (status / 100 != 2) on_event(buffer);
  return status;
}

}  // namespace ttt::cli
