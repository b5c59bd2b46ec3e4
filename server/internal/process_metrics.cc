// process_* metrics from /proc (see process_metrics.h).
#include "server/internal/process_metrics.h"

#include <sys/resource.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace ttt::server::internal {
namespace {

absl::StatusOr<std::string> ReadWhole(const char* path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  if (!in) return absl::InternalError(absl::StrCat("cannot read ", path));
  return text.str();
}

// /proc/stat's "btime <seconds>" line: the boot time, which /proc/self/stat's start is
// relative to.
absl::StatusOr<int64_t> BootTimeSeconds() {
  auto text = ReadWhole("/proc/stat");
  if (!text.ok()) return text.status();
  for (absl::string_view line : absl::StrSplit(*text, '\n')) {
    int64_t btime = 0;
    if (absl::ConsumePrefix(&line, "btime ") && absl::SimpleAtoi(line, &btime)) return btime;
  }
  return absl::InternalError("no btime line in /proc/stat");
}

prometheus::MetricFamily Family(const char* name, const char* help, prometheus::MetricType type,
                                double value) {
  prometheus::MetricFamily family;
  family.name = name;
  family.help = help;
  family.type = type;
  prometheus::ClientMetric metric;
  if (type == prometheus::MetricType::Counter) {
    metric.counter.value = value;
  } else {
    metric.gauge.value = value;
  }
  family.metric.push_back(metric);
  return family;
}

}  // namespace

absl::StatusOr<ProcessStats> ParseProcStat(absl::string_view proc_self_stat,
                                           int64_t boot_time_seconds, int64_t ticks_per_second,
                                           int64_t page_size) {
  // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so fields are counted
  // from the last ')'. After it, field 3 (state) is index 0.
  const size_t close = proc_self_stat.rfind(')');
  if (close == absl::string_view::npos) {
    return absl::InvalidArgumentError("not /proc/<pid>/stat: no ')' after the command name");
  }
  const std::vector<absl::string_view> fields =
      absl::StrSplit(proc_self_stat.substr(close + 1), ' ', absl::SkipEmpty());
  constexpr size_t kUtime = 14 - 3, kStime = 15 - 3, kStart = 22 - 3, kVsize = 23 - 3,
                   kRss = 24 - 3;
  double utime = 0, stime = 0, start = 0, vsize = 0, rss = 0;
  if (fields.size() <= kRss || !absl::SimpleAtod(fields[kUtime], &utime) ||
      !absl::SimpleAtod(fields[kStime], &stime) || !absl::SimpleAtod(fields[kStart], &start) ||
      !absl::SimpleAtod(fields[kVsize], &vsize) || !absl::SimpleAtod(fields[kRss], &rss)) {
    return absl::InvalidArgumentError("not /proc/<pid>/stat: too few or non-numeric fields");
  }
  ProcessStats stats;
  const double ticks = static_cast<double>(ticks_per_second);
  stats.cpu_seconds = (utime + stime) / ticks;
  stats.start_time_seconds = static_cast<double>(boot_time_seconds) + start / ticks;
  stats.virtual_bytes = vsize;
  stats.resident_bytes = rss * static_cast<double>(page_size);
  return stats;
}

absl::StatusOr<ProcessStats> ReadProcessStats() {
  auto stat = ReadWhole("/proc/self/stat");
  if (!stat.ok()) return stat.status();
  auto boot = BootTimeSeconds();
  if (!boot.ok()) return boot.status();
  auto stats = ParseProcStat(*stat, *boot, sysconf(_SC_CLK_TCK), sysconf(_SC_PAGESIZE));
  if (!stats.ok()) {
    return absl::InternalError(absl::StrCat("/proc/self/stat: ", stats.status().message()));
  }
  std::error_code error;
  for (std::filesystem::directory_iterator it("/proc/self/fd", error), end; !error && it != end;
       it.increment(error)) {
    ++stats->open_fds;
  }
  if (error) return absl::InternalError("cannot list /proc/self/fd: " + error.message());
  --stats->open_fds;  // the listing's own descriptor
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0) stats->max_fds = static_cast<int64_t>(limit.rlim_cur);
  return stats;
}

std::vector<prometheus::MetricFamily> ProcessFamilies(const ProcessStats& stats) {
  using prometheus::MetricType;
  return {
      Family("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
             MetricType::Counter, stats.cpu_seconds),
      Family("process_resident_memory_bytes", "Resident memory size in bytes.", MetricType::Gauge,
             stats.resident_bytes),
      Family("process_virtual_memory_bytes", "Virtual memory size in bytes.", MetricType::Gauge,
             stats.virtual_bytes),
      Family("process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
             MetricType::Gauge, stats.start_time_seconds),
      Family("process_open_fds", "Number of open file descriptors.", MetricType::Gauge,
             static_cast<double>(stats.open_fds)),
      Family("process_max_fds", "Maximum number of open file descriptors.", MetricType::Gauge,
             static_cast<double>(stats.max_fds)),
  };
}

}  // namespace ttt::server::internal
