// The temporary files of WriteFileAtomically (safetensors.h), named "<final name>.tmp.<pid>.<hex>":
// each stays locked (flock) by its writer until it is renamed into place or removed, so a process
// that starts on the folder can tell a live writer's file from one a killed process left.
// Implemented in safetensors.cc, beside the writer.
#pragma once

#include <filesystem>

namespace ttt::engine {

// Removes the temporary files of WriteFileAtomically in `dir` that no live writer holds: those of
// a process killed mid-write (the kernel released its lock). A file another process is writing
// right now is kept. Returns how many were removed; a missing folder removes none.
int RemoveAbandonedTempFiles(const std::filesystem::path& dir);

}  // namespace ttt::engine
