// Durable file writes: WriteFileAtomically (a temporary file beside the target, fsync, rename,
// fsync the folder) and the clean-up of the temporaries a killed writer left. Used for model
// files (engine), checkpoints and leases (session) and training outputs (train).
//
// The temporaries are named "<final name>.tmp.<pid>.<hex>" and each stays locked (flock) by its
// writer until it is renamed into place or removed, so a process that starts on the folder can tell
// a live writer's file from one a killed process left. Thread-safe: writers pick distinct names.
#pragma once

#include <filesystem>
#include <string>

#include "absl/status/status.h"

namespace ttt::util {

// Writes `bytes` to `path` atomically: readers see the old contents or all of the new, never a
// part, also after a crash. The folder must exist (NOT_FOUND otherwise); INVALID_ARGUMENT when
// `path` names no file.
absl::Status WriteFileAtomically(const std::filesystem::path& path, const std::string& bytes);

// Removes the temporary files of WriteFileAtomically in `dir` that no live writer holds: those of
// a process killed mid-write (the kernel released its lock). A file another process is writing
// right now is kept. Returns how many were removed; a missing folder removes none.
int RemoveAbandonedTempFiles(const std::filesystem::path& dir);

}  // namespace ttt::util
