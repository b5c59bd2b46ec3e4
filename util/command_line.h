// Flag parsing shared by the binaries (ttt-serve, ttt): `--help` lists the binary's own flags
// (absl matches flags to a binary by the defining file's name, which is main.cc or flags.cc, not
// the binary's) with repository-relative paths and exits 0; `--helpfull` adds gRPC's and
// Abseil's; `--version` prints `version`. Header-only: a binary that includes it links
// absl::flags_parse and absl::flags_usage itself (util links no flags library).
#pragma once

#include <cstdlib>
#include <functional>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/internal/parse.h"
#include "absl/flags/internal/usage.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"

namespace ttt::util {

// Parses argv like absl::ParseCommandLine (an unknown flag or a bad value: a message and exit 1)
// and returns the positional arguments. `flags_file` is the repository path of the file that
// defines the binary's flags ("server/main.cc"). A help flag prints and exits 0 (absl's own
// handling exits 1, as for an error: Debian's Abseil 20220623 has no public way to change that,
// hence its internal parse step here).
inline std::vector<char*> ParseFlagsWithHelp(int argc, char** argv, const std::string& flags_file,
                                             std::function<std::string()> version = nullptr) {
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [flags_file](absl::string_view file) {
    return absl::StrContains(file, flags_file);
  };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  if (version) usage.version_string = std::move(version);
  usage.normalize_filename = [flags_file](absl::string_view file) {  // no build machine's path
    const size_t at = file.rfind(flags_file);
    return std::string(at == absl::string_view::npos ? file : file.substr(at));
  };
  absl::SetFlagsUsageConfig(usage);
  std::vector<char*> positional = absl::flags_internal::ParseCommandLineImpl(
      argc, argv, absl::flags_internal::ArgvListAction::kRemoveParsedArgs,
      absl::flags_internal::UsageFlagsAction::kIgnoreUsage,
      absl::flags_internal::OnUndefinedFlag::kAbortIfUndefined);
  // -1: no help or version flag; otherwise what was asked for has been printed.
  const int handled =
      absl::flags_internal::HandleUsageFlags(std::cout, absl::ProgramUsageMessage());
  if (handled != -1) {
    std::cout.flush();
    std::exit(0);
  }
  return positional;
}

}  // namespace ttt::util
