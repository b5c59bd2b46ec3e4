// A bound, listening TCP socket for an address flag ("host:port", "[v6]:port" or ":port"; port 0
// picks a free one), handed to libmicrohttpd (MHD_OPTION_LISTEN_SOCKET) so the port can be read
// back before the server starts: one address syntax for the metrics endpoint and the HTTP front
// door.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace ttt::util {

// The socket's descriptor (the caller owns it), or FAILED_PRECONDITION naming `what` and the
// address when it cannot be resolved, bound or listened on.
absl::StatusOr<int> ListenOn(const std::string& address, const std::string& what);

// The local port a bound socket got.
int BoundPort(int fd);

}  // namespace ttt::util
