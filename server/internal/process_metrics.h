// The standard process_* metrics every Prometheus client library exports (client_golang's and
// client_python's process collector: CPU seconds, resident and virtual memory, open and maximum
// file descriptors, start time), read from /proc at each scrape. prometheus-cpp 1.0 has no such
// collector, hence this one. Linux only. Thread-safe (no state).
#pragma once

#include <cstdint>
#include <vector>

#include <prometheus/metric_family.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ttt::server::internal {

struct ProcessStats {
  double cpu_seconds = 0;  // user + system
  double resident_bytes = 0;
  double virtual_bytes = 0;
  double start_time_seconds = 0;  // since the Unix epoch
  int64_t open_fds = 0;
  int64_t max_fds = 0;  // the soft RLIMIT_NOFILE
};

// This process's figures. INTERNAL naming the file when /proc cannot be read or parsed.
absl::StatusOr<ProcessStats> ReadProcessStats();

// The figures in `proc_self_stat` (/proc/self/stat's text) and `boot_time_seconds` (/proc/stat's
// btime), with the clock tick and page size given (the rest of ProcessStats stays 0).
// INVALID_ARGUMENT when the text is not /proc/<pid>/stat's format.
absl::StatusOr<ProcessStats> ParseProcStat(absl::string_view proc_self_stat,
                                           int64_t boot_time_seconds, int64_t ticks_per_second,
                                           int64_t page_size);

// The families process_cpu_seconds_total, process_resident_memory_bytes,
// process_virtual_memory_bytes, process_start_time_seconds, process_open_fds, process_max_fds.
std::vector<prometheus::MetricFamily> ProcessFamilies(const ProcessStats& stats);

}  // namespace ttt::server::internal
