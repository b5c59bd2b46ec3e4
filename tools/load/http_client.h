// A minimal plaintext HTTP/1.0 client for `ttt loadgen --protocol=http`: one POST whose response
// is read as it arrives and split into server-sent events, so a load generator can time each
// token of an OpenAI-compatible completions stream. No TLS and no keep-alive: it measures the
// HTTP port's own cost against the gRPC port's on a test deployment, nothing more.
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace ttt::cli {

// POSTs `body` (JSON) to http://`address``path` (address "host:port") with `headers`, and calls
// `on_event` with the payload of each "data: " line of the response as it arrives. Returns the
// HTTP status code (the body of a non-2xx answer is passed to on_event whole), or UNAVAILABLE
// when the connection fails.
absl::StatusOr<int> PostStreaming(const std::string& address, const std::string& path,
                                  const std::vector<std::pair<std::string, std::string>>& headers,
                                  const std::string& body,
                                  const std::function<void(std::string_view)>& on_event);

}  // namespace ttt::cli
