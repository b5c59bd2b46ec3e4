// Id generation and validation (see names.h).
#include "session/internal/names.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <random>

#include "absl/strings/str_cat.h"

namespace ttt::session::internal {

std::string RandomHex(int digits) {
  static thread_local std::mt19937_64 rng(
      std::random_device{}() ^
      static_cast<uint64_t>(std::chrono::system_clock::now().time_since_epoch().count()));
  static const char* kHex = "0123456789abcdef";
  std::string s;
  for (int i = 0; i < digits; ++i) s.push_back(kHex[rng() & 15]);
  return s;
}

absl::Status ValidateName(const std::string& name, const char* what, size_t max_len) {
  if (name.empty() || name.size() > max_len) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " must be 1..", max_len, " characters, got ", name.size()));
  }
  if (name[0] == '.') {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " ", Quote(name), " must not start with '.'"));
  }
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " ", Quote(name), " has a character outside [A-Za-z0-9._-]"));
    }
  }
  return absl::OkStatus();
}

std::string Quote(std::string_view s, size_t max_bytes) {
  std::string out = "'";
  const size_t n = std::min(s.size(), max_bytes);
  for (size_t i = 0; i < n; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\'' && c != '\\') {
      out.push_back(static_cast<char>(c));
    } else {
      absl::StrAppend(&out, "\\x", absl::Hex(c, absl::kZeroPad2));
    }
  }
  out.push_back('\'');
  if (s.size() > n) absl::StrAppend(&out, "... (", s.size(), " bytes)");
  return out;
}

}  // namespace ttt::session::internal
