// Fault points: named places in the commit and lease paths where a test can stall the whole
// process (issue 23's proof: a stall at each step of a commit and of a keep-alive, longer than the
// lease's TTL). They exist only in test builds: CMake defines TTT_FAULT_POINTS for the sources
// that hold them when TTT_BUILD_TESTS=ON (util/CMakeLists.txt, ttt_fault_points()); otherwise
// TTT_FAULT_POINT(name) expands to nothing, so `./build.sh serve` carries none.
//
// A point fires when the environment names it: TTT_FAULT_STOP_AT=<name>, and, when
// TTT_FAULT_ARMED_BY=<path> is set too, only while that file exists (the test arms the point when
// the process is where it wants it). Firing raises SIGSTOP in the calling thread's process: every
// thread stops there, as under a debugger or a long GC pause, until the test sends SIGCONT (after
// removing the arming file, so that the point does not fire again at once).
#pragma once

#ifdef TTT_FAULT_POINTS

#include <signal.h>
#include <sys/stat.h>

#include <cstdlib>
#include <cstring>

namespace ttt::util {

// Stops the process at the point `name` when the environment asks for it (above). Thread-safe.
inline void StopAtFaultPoint(const char* name) {
  const char* wanted = std::getenv("TTT_FAULT_STOP_AT");
  if (wanted == nullptr || std::strcmp(wanted, name) != 0) return;
  const char* armed_by = std::getenv("TTT_FAULT_ARMED_BY");
  struct stat unused;
  if (armed_by != nullptr && stat(armed_by, &unused) != 0) return;
  raise(SIGSTOP);
}

}  // namespace ttt::util

#define TTT_FAULT_POINT(name) ::ttt::util::StopAtFaultPoint(name)
#else
#define TTT_FAULT_POINT(name) \
  do {                        \
  } while (false)
#endif
