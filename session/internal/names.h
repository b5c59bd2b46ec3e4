// Names the session layer hands out or accepts (session, checkpoint and tenant ids).
#pragma once

#include <cstddef>
#include <string>

#include "absl/status/status.h"

namespace ttt::session::internal {

// `digits` random lowercase hex digits (ids: "s-" + 16, "ck-" + 12).
std::string RandomHex(int digits);

// INVALID_ARGUMENT unless `name` is [A-Za-z0-9._-]{1,max_len} and does not start with '.'
// (so it is safe as a file name); `what` names the field in the message.
absl::Status ValidateName(const std::string& name, const char* what, size_t max_len);

}  // namespace ttt::session::internal
