// Test helper: where a test's files are. The golden fixtures that CTest generates first
// (tests/reference/ttt_reference.py into TTT_GOLDEN_DIR) and a fresh folder of the running
// test's own under the system's temporary directory.
#pragma once

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include <gtest/gtest.h>

namespace ttt::testing {

// The golden fixtures' folder: TTT_GOLDEN_DIR (set by CTest), else "golden" beside the working
// directory (a run by hand from build/tests).
inline std::filesystem::path GoldenDir() {
  const char* dir = std::getenv("TTT_GOLDEN_DIR");
  return dir ? std::filesystem::path(dir) : std::filesystem::path("golden");
}

// The golden llama model folder (config.json and model.safetensors, no tokenizer).
inline std::filesystem::path GoldenLlama() { return GoldenDir() / "llama"; }

// <tmp>/ttt-<Suite>.<Test>-<pid>, emptied and not created: the caller creates it when it needs
// it to exist. Named by the running test and the process, so that binaries running in parallel
// (ctest -j) and the tests of one binary never share a folder.
// REQUIRES: called while a test runs (in SetUp or a test body).
inline std::filesystem::path FreshTestDir() {
  const ::testing::TestInfo* test = ::testing::UnitTest::GetInstance()->current_test_info();
  std::filesystem::path dir = std::filesystem::temp_directory_path() /
                              (std::string("ttt-") + test->test_suite_name() + "." + test->name() +
                               "-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  return dir;
}

}  // namespace ttt::testing
