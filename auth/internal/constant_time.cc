// See constant_time.h.
#include "auth/internal/constant_time.h"

namespace ttt::auth::internal {

bool ConstantTimeEquals(const uint8_t* a, const uint8_t* b, size_t size) {
  volatile uint8_t diff = 0;
  for (size_t i = 0; i < size; ++i) diff = diff | (a[i] ^ b[i]);
  return diff == 0;
}

}  // namespace ttt::auth::internal
