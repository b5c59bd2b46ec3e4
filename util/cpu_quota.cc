#include "util/cpu_quota.h"

#include <sched.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace ttt::util {
namespace {

std::optional<std::string> ReadSmallFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// The quota in CPUs of a v1 cgroup folder: cfs_quota_us / cfs_period_us (-1: no limit).
std::optional<double> V1Quota(const std::string& dir) {
  const std::optional<std::string> quota = ReadSmallFile(dir + "/cpu.cfs_quota_us");
  const std::optional<std::string> period = ReadSmallFile(dir + "/cpu.cfs_period_us");
  int64_t q = 0;
  int64_t p = 0;
  if (!quota || !period || !absl::SimpleAtoi(absl::StripAsciiWhitespace(*quota), &q) ||
      !absl::SimpleAtoi(absl::StripAsciiWhitespace(*period), &p) || q <= 0 || p <= 0) {
    return std::nullopt;
  }
  return static_cast<double>(q) / static_cast<double>(p);
}

std::optional<double> V2Quota(const std::string& dir) {
  const std::optional<std::string> text = ReadSmallFile(dir + "/cpu.max");
  return text ? ParseCpuMax(*text) : std::nullopt;
}

// The smallest quota of `path` ("/a/b") and its ancestors under `mount`.
template <typename QuotaOf>
std::optional<double> SmallestOnPath(const std::string& mount, std::string path, QuotaOf quota_of) {
  std::optional<double> smallest;
  while (true) {
    while (!path.empty() && path.back() == '/') path.pop_back();
    const std::optional<double> q = quota_of(mount + path);
    if (q && (!smallest || *q < *smallest)) smallest = q;
    if (path.empty()) return smallest;
    path.erase(path.rfind('/'));
  }
}

std::optional<double> Min(std::optional<double> a, std::optional<double> b) {
  if (!a) return b;
  if (!b) return a;
  return std::min(*a, *b);
}

}  // namespace

std::optional<double> ParseCpuMax(std::string_view text) {
  std::vector<absl::string_view> fields =
      absl::StrSplit(absl::StripAsciiWhitespace(absl::string_view(text.data(), text.size())), ' ',
                     absl::SkipEmpty());
  int64_t max = 0;
  int64_t period = 0;
  if (fields.size() != 2 || !absl::SimpleAtoi(fields[0], &max) ||
      !absl::SimpleAtoi(fields[1], &period) || max <= 0 || period <= 0) {
    return std::nullopt;  // "max ...": no limit
  }
  return static_cast<double>(max) / static_cast<double>(period);
}

std::optional<double> CgroupCpuQuota(const std::string& root, std::string_view proc_self_cgroup) {
  std::optional<double> quota;
  const absl::string_view text(proc_self_cgroup.data(), proc_self_cgroup.size());
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    // "hierarchy-id:controllers:path"; the path may itself hold ':'.
    std::vector<absl::string_view> f = absl::StrSplit(line, absl::MaxSplits(':', 2));
    if (f.size() != 3 || f[2].empty() || f[2][0] != '/') continue;
    const std::string path(f[2]);
    if (f[0] == "0" && f[1].empty()) {  // cgroup v2
      quota = Min(quota, SmallestOnPath(root, path, V2Quota));
      continue;
    }
    const std::vector<absl::string_view> controllers = absl::StrSplit(f[1], ',');
    if (std::find(controllers.begin(), controllers.end(), "cpu") == controllers.end()) continue;
    // v1: the cpu controller's hierarchy, mounted as cpu (often a link) or by its list.
    for (const std::string& mount : {root + "/cpu", root + "/" + std::string(f[1])}) {
      if (std::optional<double> q = SmallestOnPath(mount, path, V1Quota)) {
        quota = Min(quota, q);
        break;
      }
    }
  }
  return quota;
}

int CapCpus(int affinity_cpus, std::optional<double> quota) {
  int cpus = std::max(1, affinity_cpus);
  if (quota && *quota > 0) {
    cpus = std::min(cpus, static_cast<int>(std::ceil(*quota - 1e-9)));
  }
  return std::max(1, cpus);
}

int UsableCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  // (More CPUs than a cpu_set_t holds: the count the system reports.)
  const int affinity = sched_getaffinity(0, sizeof(set), &set) == 0
                           ? CPU_COUNT(&set)
                           : static_cast<int>(std::thread::hardware_concurrency());
  const std::optional<std::string> cgroups = ReadSmallFile("/proc/self/cgroup");
  return CapCpus(affinity, cgroups ? CgroupCpuQuota("/sys/fs/cgroup", *cgroups) : std::nullopt);
}

}  // namespace ttt::util
