// Names the session layer hands out or accepts (session, checkpoint and tenant ids).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace ttt::session::internal {

// `digits` random lowercase hex digits (ids: "s-" + 16, "ck-" + 12).
std::string RandomHex(int digits);

// INVALID_ARGUMENT unless `name` is [A-Za-z0-9._-]{1,max_len} and does not start with '.'
// (so it is safe as a file name); `what` names the field in the message.
absl::Status ValidateName(const std::string& name, const char* what, size_t max_len);

// A client's string as error messages echo it: single-quoted, at most `max_bytes` of it, bytes
// outside printable ASCII (and the quote and the backslash) as \xNN; a longer string is cut
// and followed by its length: 'abc...' (1048576 bytes). Every message of session/ that echoes
// client input goes through it, so a message stays short and printable whatever was sent.
std::string Quote(std::string_view s, size_t max_bytes = 64);

}  // namespace ttt::session::internal
