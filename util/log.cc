// The process's log (see log.h).
#include "util/log.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <ctime>
#include <mutex>

#include "absl/strings/ascii.h"
#include "absl/strings/str_format.h"

namespace ttt::util {
namespace {

struct LogSink {
  std::mutex mu;
  LogOptions options;                                             // guarded by mu
  std::atomic<int> min_level{static_cast<int>(LogLevel::kInfo)};  // options' copies, read
  std::atomic<int> format{static_cast<int>(LogFormat::kText)};    // without mu
};

LogSink& Sink() {
  static LogSink* sink = new LogSink;  // never destroyed: threads may log during exit
  return *sink;
}

const char* LevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarning:
      return "warning";
    case LogLevel::kError:
      return "error";
  }
  return "info";
}

// RFC 3339 in UTC with microseconds: sorts as text, and every log pipeline parses it.
std::string Timestamp(int64_t micros_since_epoch) {
  const std::time_t seconds = static_cast<std::time_t>(micros_since_epoch / 1000000);
  std::tm utc{};
  gmtime_r(&seconds, &utc);
  return absl::StrFormat("%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", utc.tm_year + 1900, utc.tm_mon + 1,
                         utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec,
                         static_cast<int>(micros_since_epoch % 1000000));
}

// Appends `s` escaped as the inside of a JSON string (`quotes`: also '"' and '\\'); the text
// format uses the same escapes, so no value or message can break a line.
void AppendEscaped(std::string& out, absl::string_view s, bool quotes = true) {
  for (const char c : s) {
    switch (c) {
      case '"':
        out += quotes ? "\\\"" : "\"";
        break;
      case '\\':
        out += quotes ? "\\\\" : "\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          absl::StrAppendFormat(&out, "\\u%04x", static_cast<int>(c));
        } else {
          out += c;
        }
    }
  }
}

void AppendJsonString(std::string& out, absl::string_view s) {
  out += '"';
  AppendEscaped(out, s);
  out += '"';
}

// logfmt: bare when the value has no space, quote, '=' or control character.
void AppendTextValue(std::string& out, absl::string_view s) {
  const bool bare = !s.empty() && std::none_of(s.begin(), s.end(), [](char c) {
    return c == ' ' || c == '"' || c == '=' || static_cast<unsigned char>(c) < 0x20;
  });
  if (bare) {
    out.append(s.data(), s.size());
  } else {
    AppendJsonString(out, s);
  }
}

std::string JsonLine(const std::string& ts, LogLevel level, absl::string_view component,
                     absl::string_view message, std::initializer_list<LogField> fields) {
  std::string out = "{\"ts\":\"" + ts + "\",\"level\":\"" + LevelName(level) + "\",\"component\":";
  AppendJsonString(out, component);
  out += ",\"msg\":";
  AppendJsonString(out, message);
  for (const LogField& f : fields) {
    out += ',';
    AppendJsonString(out, f.key());
    out += ':';
    if (f.quoted()) {
      AppendJsonString(out, f.value());
    } else {
      out += f.value();
    }
  }
  out += "}\n";
  return out;
}

std::string TextLine(const std::string& ts, LogLevel level, absl::string_view component,
                     absl::string_view message, std::initializer_list<LogField> fields) {
  std::string level_name = absl::AsciiStrToUpper(LevelName(level));
  level_name.resize(7, ' ');  // aligned columns: "WARNING" is the longest
  std::string out = absl::StrCat(ts, " ", level_name, " ", component, ": ");
  AppendEscaped(out, message, /*quotes=*/false);  // the message is not quoted: only controls
  for (const LogField& f : fields) {
    absl::StrAppend(&out, " ", f.key(), "=");
    AppendTextValue(out, f.value());
  }
  out += '\n';
  return out;
}

}  // namespace

absl::StatusOr<LogLevel> ParseLogLevel(absl::string_view name) {
  const std::string lower = absl::AsciiStrToLower(name);
  if (lower == "debug") return LogLevel::kDebug;
  if (lower == "info") return LogLevel::kInfo;
  if (lower == "warning" || lower == "warn") return LogLevel::kWarning;
  if (lower == "error") return LogLevel::kError;
  return absl::InvalidArgumentError(
      absl::StrCat("log level must be debug, info, warning or error, got '", name, "'"));
}

absl::StatusOr<LogFormat> ParseLogFormat(absl::string_view name) {
  if (name == "text") return LogFormat::kText;
  if (name == "json") return LogFormat::kJson;
  return absl::InvalidArgumentError(
      absl::StrCat("log format must be text or json, got '", name, "'"));
}

void ConfigureLog(const LogOptions& options) {
  LogSink& sink = Sink();
  std::lock_guard<std::mutex> lock(sink.mu);
  sink.options = options;
  sink.min_level.store(static_cast<int>(options.min_level), std::memory_order_relaxed);
  sink.format.store(static_cast<int>(options.format), std::memory_order_relaxed);
}

bool LogEnabled(LogLevel level) {
  return static_cast<int>(level) >= Sink().min_level.load(std::memory_order_relaxed);
}

std::string FormatLogLine(LogFormat format, int64_t micros_since_epoch, LogLevel level,
                          absl::string_view component, absl::string_view message,
                          std::initializer_list<LogField> fields) {
  const std::string ts = Timestamp(micros_since_epoch);
  return format == LogFormat::kJson ? JsonLine(ts, level, component, message, fields)
                                    : TextLine(ts, level, component, message, fields);
}

void Log(LogLevel level, absl::string_view component, absl::string_view message,
         std::initializer_list<LogField> fields) {
  if (!LogEnabled(level)) return;
  const int64_t now = std::chrono::duration_cast<std::chrono::microseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  LogSink& sink = Sink();
  const auto format = static_cast<LogFormat>(sink.format.load(std::memory_order_relaxed));
  const std::string line = FormatLogLine(format, now, level, component, message, fields);
  std::lock_guard<std::mutex> lock(sink.mu);
  std::fwrite(line.data(), 1, line.size(), sink.options.out);
  std::fflush(sink.options.out);
}

}  // namespace ttt::util
