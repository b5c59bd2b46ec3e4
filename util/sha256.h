// SHA-256 (FIPS 180-4), shared by the engine (the model fingerprint) and the sessions (checkpoint
// checksums): Debian's Abseil has no hash of this kind and the project takes no crypto library
// for it. The lowest module: depends on nothing but the standard library.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace ttt::util {

// Incremental SHA-256. Thread-compatible.
class Sha256 {
 public:
  Sha256();
  void Update(const void* data, size_t size);
  void Update(std::string_view s) { Update(s.data(), s.size()); }
  // The digest; the object must not be updated afterwards.
  std::array<uint8_t, 32> Final();
  // Lower-case hex of Final().
  std::string HexFinal();

 private:
  void Block(const uint8_t* p);
  uint32_t h_[8];
  uint8_t buf_[64];
  size_t buf_len_ = 0;
  uint64_t total_ = 0;
};

// Lower-case hex SHA-256 of `data`.
std::string Sha256Hex(std::string_view data);

}  // namespace ttt::util
