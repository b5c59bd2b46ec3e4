// How many CPUs this process may use, for sizing its thread pools (--threads=0): the CPUs of its
// affinity mask (taskset, a cpuset), capped by the CPU quota of its cgroup (a container's CPU
// limit: cgroup v2 `cpu.max`, or v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`), rounded up. A
// node's core count says nothing of either. Thread-safe (reads files; no state).
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace ttt::util {

// The CPUs this process may use now: at least 1.
int UsableCpus();

// The pieces, apart for tests.

// A cgroup v2 `cpu.max` ("$MAX $PERIOD", MAX "max" for no limit) as CPUs: "150000 100000" is
// 1.5. nullopt for no limit or text that is not that.
std::optional<double> ParseCpuMax(std::string_view text);

// The CPU quota of the cgroup `proc_self_cgroup` (the text of /proc/self/cgroup) names, under the
// cgroup file system mounted at `root` (/sys/fs/cgroup): the smallest quota of the cgroup and its
// ancestors (a parent's limit binds its children), in CPUs. nullopt when none has a limit or
// none can be read (e.g. another cgroup namespace's path).
std::optional<double> CgroupCpuQuota(const std::string& root, std::string_view proc_self_cgroup);

// `affinity_cpus` capped by `quota` rounded up; at least 1.
int CapCpus(int affinity_cpus, std::optional<double> quota);

}  // namespace ttt::util
