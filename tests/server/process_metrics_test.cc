// server/internal/process_metrics.h: /proc/<pid>/stat parsed field by field (a command name with
// spaces and parentheses included), and this test process's own figures read live.
#include "server/internal/process_metrics.h"

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <string>

#include <gtest/gtest.h>

namespace ttt::server::internal {
namespace {

// pid (comm) state, then fields 4..24: utime (14) = 250 ticks, stime (15) = 150, starttime (22)
// = 1000 ticks after boot, vsize (23) = 8192000 bytes, rss (24) = 300 pages.
constexpr char kStat[] =
    "4242 (ttt serve) (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 150 0 0 20 0 9 0 1000 "
    "8192000 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";

TEST(ProcessMetricsTest, ParsesTheStatFieldsAfterTheCommandName) {
  auto stats = ParseProcStat(kStat, /*boot_time_seconds=*/1700000000, /*ticks_per_second=*/100,
                             /*page_size=*/4096);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_DOUBLE_EQ(stats->cpu_seconds, 4.0);
  EXPECT_DOUBLE_EQ(stats->start_time_seconds, 1700000010.0);
  EXPECT_DOUBLE_EQ(stats->virtual_bytes, 8192000.0);
  EXPECT_DOUBLE_EQ(stats->resident_bytes, 300.0 * 4096);
}

TEST(ProcessMetricsTest, RefusesTextThatIsNotAStatLine) {
  for (const char* text : {"no parenthesis 1 2 3", "1 (short) S 1 2 3"}) {
    auto stats = ParseProcStat(text, 0, 100, 4096);
    EXPECT_EQ(stats.status().code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_NE(stats.status().message().find("not /proc/<pid>/stat"), std::string::npos);
  }
}

TEST(ProcessMetricsTest, ReadsThisProcessAndCountsAnOpenedDescriptor) {
  auto before = ReadProcessStats();
  ASSERT_TRUE(before.ok()) << before.status();
  const int fd = ::open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  auto after = ReadProcessStats();
  ::close(fd);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->open_fds, before->open_fds + 1);
  EXPECT_GE(before->open_fds, 3);  // stdin, stdout, stderr at least
  EXPECT_GT(after->max_fds, 0);
  EXPECT_GT(after->resident_bytes, 0);
  EXPECT_GE(after->virtual_bytes, after->resident_bytes);
  const double now =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  EXPECT_LE(after->start_time_seconds, now + 1);  // started in the past (clock tick rounding)
  EXPECT_GT(after->start_time_seconds, now - 24 * 3600);
}

TEST(ProcessMetricsTest, ExportsTheStandardFamilies) {
  ProcessStats stats;
  stats.cpu_seconds = 1.5;
  stats.open_fds = 7;
  const auto families = ProcessFamilies(stats);
  ASSERT_EQ(families.size(), 6u);
  EXPECT_EQ(families[0].name, "process_cpu_seconds_total");
  EXPECT_EQ(families[0].type, prometheus::MetricType::Counter);
  EXPECT_DOUBLE_EQ(families[0].metric.at(0).counter.value, 1.5);
  EXPECT_EQ(families[4].name, "process_open_fds");
  EXPECT_DOUBLE_EQ(families[4].metric.at(0).gauge.value, 7);
}

}  // namespace
}  // namespace ttt::server::internal
