// Comparison whose running time does not depend on where two byte strings differ, for
// credentials (a timing side channel must not reveal how much of a guess was right).
#pragma once

#include <cstddef>
#include <cstdint>

namespace ttt::auth::internal {

// True when the `size` bytes at `a` and `b` are equal. Reads every byte of both whatever they
// hold; the compiler cannot turn the loop into an early exit (the accumulator is volatile).
bool ConstantTimeEquals(const uint8_t* a, const uint8_t* b, size_t size);

}  // namespace ttt::auth::internal
