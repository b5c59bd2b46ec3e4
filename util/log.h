// The process's log: one line per event on stderr with a UTC timestamp, a level, the component
// that speaks and typed fields, as text (logfmt-like, for a terminal) or JSON (one object per
// line, for a log pipeline): `--log_format=text|json`, `--log_level`. Every module logs through
// it; server/access_log.h routes gRPC's own lines here too, so one stream has one format.
//
// Text:  2026-12-06T23:08:23.123456Z INFO  access: call method=Score code=OK duration_ms=3.2
// JSON:  {"ts":"2026-12-06T23:08:23.123456Z","level":"info","component":"access","msg":"call",
//         "method":"Score","code":"OK","duration_ms":3.2}
//
// What never goes into a field: tokens, prompt or generated text, credentials. Values are
// escaped (a value cannot start a new line or end the JSON object), so ids that come from
// clients are safe to log.
//
// Thread-safety: thread-safe; each line is written whole (one write under a mutex).
#pragma once

#include <cstdint>
#include <cstdio>
#include <initializer_list>
#include <string>
#include <type_traits>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace ttt::util {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };
enum class LogFormat { kText, kJson };

// "debug", "info", "warning" (or "warn"), "error"; INVALID_ARGUMENT naming the choices.
absl::StatusOr<LogLevel> ParseLogLevel(absl::string_view name);
// "text" or "json"; INVALID_ARGUMENT naming the choices.
absl::StatusOr<LogFormat> ParseLogFormat(absl::string_view name);

struct LogOptions {
  LogFormat format = LogFormat::kText;
  LogLevel min_level = LogLevel::kInfo;  // lines below it are dropped
  std::FILE* out = stderr;               // not owned; must outlive its use (tests: a tmpfile)
};
// Replaces the options (the defaults above until called). Lines being written finish first.
void ConfigureLog(const LogOptions& options);
// Whether a line of `level` would be written (to skip building costly fields).
bool LogEnabled(LogLevel level);

// One typed field of a line: strings are quoted in JSON, numbers and booleans are not.
class LogField {
 public:
  LogField(absl::string_view key, absl::string_view value)
      : key_(key), value_(value), quoted_(true) {}
  LogField(absl::string_view key, const char* value) : LogField(key, absl::string_view(value)) {}
  LogField(absl::string_view key, const std::string& value)
      : LogField(key, absl::string_view(value)) {}
  LogField(absl::string_view key, bool value)
      : key_(key), value_(value ? "true" : "false"), quoted_(false) {}
  template <
      typename Number,
      std::enable_if_t<std::is_arithmetic_v<Number> && !std::is_same_v<Number, bool>, int> = 0>
  LogField(absl::string_view key, Number value) : key_(key), value_(absl::StrCat(value)) {
    // inf and nan are not JSON numbers: such a value is written as a string.
    quoted_ = value_.find_first_not_of("0123456789.-+e") != std::string::npos;
  }

  absl::string_view key() const { return key_; }
  const std::string& value() const { return value_; }
  bool quoted() const { return quoted_; }

 private:
  absl::string_view key_;  // a literal at every call site
  std::string value_;
  bool quoted_ = false;
};

// Writes one line when `level` is enabled. `component` names the module ("server", "access",
// "grpc", "auth"); `message` says what happened in a few words; `fields` carry the details.
void Log(LogLevel level, absl::string_view component, absl::string_view message,
         std::initializer_list<LogField> fields = {});

inline void LogInfo(absl::string_view component, absl::string_view message,
                    std::initializer_list<LogField> fields = {}) {
  Log(LogLevel::kInfo, component, message, fields);
}
inline void LogWarning(absl::string_view component, absl::string_view message,
                       std::initializer_list<LogField> fields = {}) {
  Log(LogLevel::kWarning, component, message, fields);
}
inline void LogError(absl::string_view component, absl::string_view message,
                     std::initializer_list<LogField> fields = {}) {
  Log(LogLevel::kError, component, message, fields);
}

// The line Log writes, without writing it (tests; `micros_since_epoch` fixes the timestamp).
std::string FormatLogLine(LogFormat format, int64_t micros_since_epoch, LogLevel level,
                          absl::string_view component, absl::string_view message,
                          std::initializer_list<LogField> fields);

}  // namespace ttt::util
