// libFuzzer target: engine::SafetensorsFile::FromBytes, the reader every checkpoint import and
// every weight file goes through, on arbitrary bytes. Whatever it accepts must load in full (the
// validated offsets really lie inside the bytes); whatever it refuses must be refused with a
// short INVALID_ARGUMENT or RESOURCE_EXHAUSTED, never a crash.
#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/internal/safetensors.h"
#include "tests/fuzz/fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using ttt::engine::SafetensorsFile;
  auto file = SafetensorsFile::FromBytes(std::string(reinterpret_cast<const char*>(data), size),
                                         "fuzz.safetensors");
  if (!file.ok()) {
    const absl::StatusCode code = file.status().code();
    FUZZ_CHECK(
        code == absl::StatusCode::kInvalidArgument || code == absl::StatusCode::kResourceExhausted,
        "unexpected status %s", file.status().ToString().c_str());
    // Errors name the source and quote at most a short prefix of what the input held.
    FUZZ_CHECK(file.status().message().size() < 1024, "error message of %zu bytes",
               file.status().message().size());
    return 0;
  }
  uint64_t total = 0;
  for (const ttt::engine::TensorEntry& e : (*file)->entries()) {
    auto tensor = (*file)->Load(e.name);
    FUZZ_CHECK(tensor.ok(), "accepted tensor does not load: %s",
               tensor.status().ToString().c_str());
    FUZZ_CHECK(static_cast<uint64_t>(tensor->nbytes()) == e.end - e.begin,
               "tensor holds %zu bytes, entry says %llu", static_cast<size_t>(tensor->nbytes()),
               static_cast<unsigned long long>(e.end - e.begin));
    total += e.end - e.begin;
  }
  FUZZ_CHECK(total <= size, "tensors claim %llu bytes of a %zu-byte input",
             static_cast<unsigned long long>(total), size);
  return 0;
}
