// Tests of util/files on real temporary folders: the atomic write replaces a file whole and leaves
// no temporaries, and the clean-up removes only temporaries that no live writer holds.
#include "util/files.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/status/status.h"
#include "tests/testing/dirs.h"

namespace ttt::util {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;

class FilesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ttt::testing::FreshTestDir();
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::vector<std::string> Names() const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir_)) names.push_back(e.path().filename());
    return names;
  }
  void Touch(const std::string& name) const { std::ofstream(dir_ / name) << "x"; }

  fs::path dir_;
};

TEST_F(FilesTest, WriteFileAtomicallyReplacesAndLeavesNoTemporaries) {
  const fs::path path = dir_ / "ckpt.bin";
  ASSERT_TRUE(WriteFileAtomically(path, "first").ok());
  ASSERT_TRUE(WriteFileAtomically(path, std::string("second\0x", 8)).ok());
  std::ifstream in(path, std::ios::binary);
  std::string got((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(got, std::string("second\0x", 8));
  EXPECT_THAT(Names(), UnorderedElementsAre("ckpt.bin"));
}

TEST_F(FilesTest, WriteFileAtomicallyNamesAMissingFolder) {
  const absl::Status status = WriteFileAtomically(dir_ / "no_such_dir" / "f", "x");
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << status;
  EXPECT_THAT(status.message(), HasSubstr("no_such_dir"));
}

TEST_F(FilesTest, WriteFileAtomicallyRejectsAFolderPath) {
  const absl::Status status = WriteFileAtomically(dir_ / "", "x");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(status.message(), HasSubstr("not a file path"));
}

TEST_F(FilesTest, RemoveAbandonedTempFilesKeepsLiveWritersAndOtherFiles) {
  Touch("a.bin");
  Touch("a.bin.tmp.17.0123456789abcdef0");  // abandoned: nobody holds it
  Touch("b.bin.tmp.4242.ff");               // abandoned
  Touch("notes.tmp.txt");                   // not a temporary's name
  Touch("c.bin.tmp.12.ABC");                // upper-case hex: not one of ours
  Touch("d.bin.tmp.99.00b");                // held by a live writer below
  const int held = ::open((dir_ / "d.bin.tmp.99.00b").c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(held, 0);
  ASSERT_EQ(::flock(held, LOCK_EX | LOCK_NB), 0);

  EXPECT_EQ(RemoveAbandonedTempFiles(dir_), 2);
  EXPECT_THAT(Names(), UnorderedElementsAre("a.bin", "notes.tmp.txt", "c.bin.tmp.12.ABC",
                                            "d.bin.tmp.99.00b"));
  ::close(held);
  EXPECT_EQ(RemoveAbandonedTempFiles(dir_), 1);  // the writer is gone now
  EXPECT_EQ(RemoveAbandonedTempFiles(dir_ / "missing"), 0);
}

}  // namespace
}  // namespace ttt::util
