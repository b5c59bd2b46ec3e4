// A bound, listening TCP socket for an address flag ("host:port", "[v6]:port" or ":port"; port 0
// picks a free one), handed to libmicrohttpd (MHD_OPTION_LISTEN_SOCKET) so the port can be read
// back before the server starts. Same syntax as the metrics endpoint's (server/metrics_http.cc
// keeps its own copy; the two can share this one when its owner moves to it).
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace ttt::http::internal {

// The socket's descriptor (the caller owns it), or FAILED_PRECONDITION naming `what` and the
// address when it cannot be resolved, bound or listened on.
absl::StatusOr<int> ListenOn(const std::string& address, const std::string& what);

// The local port a bound socket got.
int BoundPort(int fd);

}  // namespace ttt::http::internal
