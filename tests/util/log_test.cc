// util/log.h: the text and JSON lines (exact for a fixed time), escaping that keeps one event on
// one line, the level filter, and the flag parsers' messages.
#include "util/log.h"

#include <cstdio>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace ttt::util {
namespace {

constexpr int64_t kNoonMicros = 1796558400123456;  // 2026-12-06T12:00:00.123456Z

TEST(LogTest, TextLineHasTimestampLevelComponentAndFields) {
  EXPECT_EQ(FormatLogLine(LogFormat::kText, kNoonMicros, LogLevel::kWarning, "access", "call",
                          {{"method", "Score"},
                           {"code", "OK"},
                           {"duration_ms", 3.25},
                           {"bytes_in", 42},
                           {"cancelled", false}}),
            "2026-12-06T12:00:00.123456Z WARNING access: call method=Score code=OK "
            "duration_ms=3.25 bytes_in=42 cancelled=false\n");
}

TEST(LogTest, JsonLineIsOneObjectWithTypedFields) {
  const std::string line =
      FormatLogLine(LogFormat::kJson, kNoonMicros, LogLevel::kInfo, "server", "listening",
                    {{"port", 50051}, {"address", "0.0.0.0:50051"}, {"ratio", 0.5}});
  ASSERT_EQ(line.back(), '\n');
  const auto json = nlohmann::json::parse(line);
  EXPECT_EQ(json["ts"], "2026-12-06T12:00:00.123456Z");
  EXPECT_EQ(json["level"], "info");
  EXPECT_EQ(json["component"], "server");
  EXPECT_EQ(json["msg"], "listening");
  EXPECT_EQ(json["port"], 50051);
  EXPECT_EQ(json["address"], "0.0.0.0:50051");
  EXPECT_EQ(json["ratio"], 0.5);
}

TEST(LogTest, ValuesFromClientsCannotStartALineOrEndTheObject) {
  const std::string hostile = "s-1\"} \n2026-01-01T00:00:00Z ERROR forged=1\x01";
  const std::string json = FormatLogLine(LogFormat::kJson, kNoonMicros, LogLevel::kInfo, "access",
                                         "call", {{"session", hostile}});
  EXPECT_EQ(json.find('\n'), json.size() - 1);
  EXPECT_EQ(nlohmann::json::parse(json)["session"], hostile);
  const std::string text = FormatLogLine(LogFormat::kText, kNoonMicros, LogLevel::kInfo, "access",
                                         "call", {{"session", hostile}, {"empty", ""}});
  EXPECT_EQ(text.find('\n'), text.size() - 1);
  EXPECT_NE(text.find(R"(session="s-1\"} \n2026-01-01T00:00:00Z ERROR forged=1\u0001")"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find(R"(empty="")"), std::string::npos) << text;
  // A text line's message keeps its quotes; a newline in it is still escaped.
  EXPECT_EQ(FormatLogLine(LogFormat::kText, kNoonMicros, LogLevel::kError, "server",
                          "see \"Authentication\"\nnext", {}),
            "2026-12-06T12:00:00.123456Z ERROR   server: see \"Authentication\"\\nnext\n");
}

TEST(LogTest, NonFiniteNumbersStayValidJson) {
  const std::string line = FormatLogLine(LogFormat::kJson, kNoonMicros, LogLevel::kInfo, "x", "y",
                                         {{"value", 1.0 / 0.0}, {"negative", -2}});
  const auto json = nlohmann::json::parse(line);
  EXPECT_EQ(json["value"], "inf");
  EXPECT_EQ(json["negative"], -2);
}

TEST(LogTest, LinesBelowTheLevelAreDroppedAndTheFormatApplies) {
  std::FILE* out = std::tmpfile();
  ASSERT_NE(out, nullptr);
  ConfigureLog({LogFormat::kJson, LogLevel::kWarning, out});
  EXPECT_FALSE(LogEnabled(LogLevel::kInfo));
  LogInfo("server", "dropped");
  LogWarning("server", "kept", {{"n", 1}});
  ConfigureLog({});  // back to text on stderr before `out` closes
  std::rewind(out);
  char buf[512] = {};
  const size_t n = std::fread(buf, 1, sizeof(buf) - 1, out);
  std::fclose(out);
  const std::string written(buf, n);
  EXPECT_EQ(written.find("dropped"), std::string::npos) << written;
  const auto json = nlohmann::json::parse(written);
  EXPECT_EQ(json["level"], "warning");
  EXPECT_EQ(json["msg"], "kept");
  EXPECT_EQ(json["n"], 1);
}

TEST(LogTest, ParsersNameTheChoices) {
  EXPECT_EQ(*ParseLogLevel("WARN"), LogLevel::kWarning);
  EXPECT_EQ(*ParseLogFormat("json"), LogFormat::kJson);
  const auto level = ParseLogLevel("verbose");
  EXPECT_EQ(level.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(level.status().message().find("debug, info, warning or error, got 'verbose'"),
            std::string::npos);
  const auto format = ParseLogFormat("xml");
  EXPECT_EQ(format.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(format.status().message().find("text or json, got 'xml'"), std::string::npos);
}

}  // namespace
}  // namespace ttt::util
