// glibc malloc settings for processes that allocate and free large tensors at a high rate.
#pragma once

namespace ttt::util {

// By default glibc serves every allocation above its (adaptive) mmap threshold with a fresh
// mmap and returns freed heap tops to the kernel above 128 KiB, so each forward step's
// temporaries (MBs to tens of MBs) came back as new pages that the kernel faulted in and zeroed:
// a third of an ingest's time (bench/RESULTS.md, "Allocator"). This keeps allocations up to
// 32 MiB (glibc's largest mmap threshold) on the heap and up to 256 MiB of freed heap for reuse.
// A setting whose environment variable (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_) is set is
// left as the environment says. Call once, first thing in main(); a no-op outside glibc.
void TuneMallocForTensors();

}  // namespace ttt::util
