// Tests of util/cpu_quota (--threads=0): cgroup v2 cpu.max and v1 CFS quotas read from a real
// folder tree laid out as /sys/fs/cgroup is, a parent's limit binding its child, and the cap on
// the affinity count.
#include "util/cpu_quota.h"

#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "tests/testing/dirs.h"

namespace ttt::util {
namespace {

namespace fs = std::filesystem;

class CgroupCpuQuotaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = ttt::testing::FreshTestDir();
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(root_); }

  void Write(const std::string& relative, const std::string& text) {
    const fs::path path = root_ / relative;
    fs::create_directories(path.parent_path());
    std::ofstream(path) << text;
  }

  fs::path root_;
};

TEST(ParseCpuMaxTest, ReadsQuotaOverPeriodAndNoLimit) {
  EXPECT_DOUBLE_EQ(*ParseCpuMax("150000 100000\n"), 1.5);
  EXPECT_DOUBLE_EQ(*ParseCpuMax("200000 100000"), 2.0);
  EXPECT_DOUBLE_EQ(*ParseCpuMax("50000 100000"), 0.5);
  EXPECT_FALSE(ParseCpuMax("max 100000\n").has_value());
  EXPECT_FALSE(ParseCpuMax("").has_value());
  EXPECT_FALSE(ParseCpuMax("150000").has_value());
  EXPECT_FALSE(ParseCpuMax("0 100000").has_value());
  EXPECT_FALSE(ParseCpuMax("abc 100000").has_value());
}

TEST_F(CgroupCpuQuotaTest, V2TakesTheSmallestQuotaOnThePathToTheRoot) {
  // kubepods/pod: 2.5 CPUs; its container: no limit of its own; a sibling's limit is not ours.
  Write("kubepods/pod1/cpu.max", "250000 100000\n");
  Write("kubepods/pod1/ctr/cpu.max", "max 100000\n");
  Write("kubepods/pod2/cpu.max", "50000 100000\n");
  EXPECT_DOUBLE_EQ(*CgroupCpuQuota(root_, "0::/kubepods/pod1/ctr\n"), 2.5);
  Write("kubepods/pod1/ctr/cpu.max", "120000 100000\n");
  EXPECT_DOUBLE_EQ(*CgroupCpuQuota(root_, "0::/kubepods/pod1/ctr\n"), 1.2);
}

TEST_F(CgroupCpuQuotaTest, V2InItsOwnNamespaceReadsTheRootFile) {
  Write("cpu.max", "300000 100000\n");  // a container with a cgroup namespace: "0::/"
  EXPECT_DOUBLE_EQ(*CgroupCpuQuota(root_, "0::/\n"), 3.0);
}

TEST_F(CgroupCpuQuotaTest, NoLimitOrNoFilesIsNoQuota) {
  Write("a/cpu.max", "max 100000\n");
  EXPECT_FALSE(CgroupCpuQuota(root_, "0::/a\n").has_value());
  EXPECT_FALSE(CgroupCpuQuota(root_, "0::/not/here\n").has_value());
  EXPECT_FALSE(CgroupCpuQuota(root_, "").has_value());
  EXPECT_FALSE(CgroupCpuQuota(root_, "garbage\n").has_value());
}

TEST_F(CgroupCpuQuotaTest, V1ReadsTheCfsQuotaOfTheCpuHierarchy) {
  Write("cpu,cpuacct/docker/c1/cpu.cfs_quota_us", "150000\n");
  Write("cpu,cpuacct/docker/c1/cpu.cfs_period_us", "100000\n");
  Write("cpu,cpuacct/docker/cpu.cfs_quota_us", "-1\n");  // no limit
  Write("cpu,cpuacct/docker/cpu.cfs_period_us", "100000\n");
  const char* cgroups = "12:memory:/docker/c1\n4:cpu,cpuacct:/docker/c1\n0::/\n";
  EXPECT_DOUBLE_EQ(*CgroupCpuQuota(root_, cgroups), 1.5);
}

TEST(CapCpusTest, RoundsTheQuotaUpAndNeverGoesBelowOne) {
  EXPECT_EQ(CapCpus(16, 2.5), 3);
  EXPECT_EQ(CapCpus(16, 2.0), 2);
  EXPECT_EQ(CapCpus(16, 0.5), 1);
  EXPECT_EQ(CapCpus(2, 8.0), 2);  // the affinity mask binds
  EXPECT_EQ(CapCpus(4, std::nullopt), 4);
  EXPECT_EQ(CapCpus(0, std::nullopt), 1);
}

TEST(UsableCpusTest, IsWithinOneAndTheAffinityMask) {
  const int cpus = UsableCpus();
  EXPECT_GE(cpus, 1);
  EXPECT_LE(cpus, CapCpus(static_cast<int>(std::thread::hardware_concurrency()), std::nullopt));
}

}  // namespace
}  // namespace ttt::util
