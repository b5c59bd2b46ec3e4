// See error_reason.h. The payload is text: the reason, then one "key=value" line per metadata
// entry.
#include "util/error_reason.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_split.h"

namespace ttt::util {
namespace {
constexpr char kPayloadUrl[] = "type.googleapis.com/ttt.ErrorReason";
}  // namespace

absl::Status WithReason(absl::Status status, std::string_view reason,
                        std::initializer_list<std::pair<std::string_view, std::string>> metadata) {
  if (status.ok()) return status;
  std::string payload(reason);
  for (const auto& [key, value] : metadata) {
    std::string one_line = value;
    std::replace(one_line.begin(), one_line.end(), '\n', ' ');
    payload.append("\n").append(key).append("=").append(one_line);
  }
  status.SetPayload(kPayloadUrl, absl::Cord(payload));
  return status;
}

std::optional<ErrorReason> ReasonOf(const absl::Status& status) {
  const auto payload = status.GetPayload(kPayloadUrl);  // absl's optional
  if (!payload) return std::nullopt;
  ErrorReason out;
  bool first = true;
  for (absl::string_view line : absl::StrSplit(std::string(*payload), '\n')) {
    if (first) {
      out.reason = std::string(line);
      first = false;
      continue;
    }
    const size_t eq = line.find('=');
    if (eq == absl::string_view::npos) continue;
    out.metadata[std::string(line.substr(0, eq))] = std::string(line.substr(eq + 1));
  }
  return out;
}

std::string StatusCodeName(int code, std::string_view unknown) {
  std::string name = absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
  return name.empty() ? std::string(unknown) : name;
}

}  // namespace ttt::util
