// glibc malloc settings for processes that allocate and free large tensors at a high rate.
#pragma once

namespace ttt::util {

// Who allocates: a server, whose resident memory should follow its load, or a batch job
// (training, evaluation) that runs one workload until it ends.
enum class MallocUse { kServer, kBatchJob };

// By default glibc serves every allocation above its (adaptive) mmap threshold with a fresh
// mmap and returns freed heap tops to the kernel above 128 KiB, so each forward step's
// temporaries (MBs to tens of MBs) came back as new pages that the kernel faulted in and zeroed:
// a third of an ingest's time (bench/RESULTS.md, "Allocator"). kServer keeps allocations up to
// 32 MiB (glibc's largest mmap threshold) on the heap and up to 256 MiB of freed heap for reuse.
// kBatchJob also takes larger ones from the heap (a training step's activations and a long
// call's [rows, vocab] logits are 64 MiB and more: with mmap they still cost a fifth of a
// training step in page faults, bench/RESULTS.md "Allocator for batch jobs") and keeps up to
// 2 GiB of freed heap: its resident memory stays at its peak until it exits. A setting whose
// environment variable (MALLOC_MMAP_THRESHOLD_, MALLOC_MMAP_MAX_, MALLOC_TRIM_THRESHOLD_,
// MALLOC_TOP_PAD_) is set is left as the environment says. Call once, first thing in main(); a
// no-op outside glibc.
void TuneMallocForTensors(MallocUse use = MallocUse::kServer);

}  // namespace ttt::util
