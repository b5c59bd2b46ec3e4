#include "util/malloc_tuning.h"

#include <climits>
#include <cstdlib>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace ttt::util {
namespace {

#if defined(__GLIBC__)
// mallopt(option, value) unless the environment variable that sets the same option is set.
void SetUnlessInEnvironment(int option, const char* variable, int value) {
  if (std::getenv(variable) == nullptr) mallopt(option, value);
}
#endif

}  // namespace

void TuneMallocForTensors(MallocUse use) {
#if defined(__GLIBC__)
  const bool batch = use == MallocUse::kBatchJob;
  SetUnlessInEnvironment(M_MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_", 32 << 20);  // glibc's max
  SetUnlessInEnvironment(M_TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_", batch ? INT_MAX : 256 << 20);
  if (batch) {
    // Every allocation from the heap (glibc still maps one that a thread's arena cannot hold).
    SetUnlessInEnvironment(M_MMAP_MAX, "MALLOC_MMAP_MAX_", 0);
    SetUnlessInEnvironment(M_TOP_PAD, "MALLOC_TOP_PAD_", 256 << 20);
  }
#else
  (void)use;
#endif
}

}  // namespace ttt::util
