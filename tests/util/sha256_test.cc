// SHA-256 against the FIPS 180-4 / NIST example vectors, whole and fed in arbitrary pieces.
#include "util/sha256.h"

#include <string>
#include <string_view>
#include <vector>

#include <gtest/gtest.h>

namespace ttt::util {
namespace {

struct Vector {
  std::string input;
  const char* digest;
};

std::vector<Vector> Vectors() {
  return {
      {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
      {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
      {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
      {"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqr"
       "lmnopqrsmnopqrstnopqrstu",
       "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"},
      {std::string(1000000, 'a'),
       "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"},
  };
}

TEST(Sha256Test, MatchesTheNistVectors) {
  for (const Vector& v : Vectors()) {
    EXPECT_EQ(Sha256Hex(v.input), v.digest) << "input of " << v.input.size() << " bytes";
  }
}

TEST(Sha256Test, PiecewiseUpdatesEqualOneUpdate) {
  for (const Vector& v : Vectors()) {
    for (size_t piece : {1u, 3u, 55u, 63u, 64u, 65u, 1000u}) {
      Sha256 h;
      for (size_t i = 0; i < v.input.size(); i += piece) {
        h.Update(std::string_view(v.input).substr(i, piece));
      }
      EXPECT_EQ(h.HexFinal(), v.digest) << v.input.size() << " bytes in pieces of " << piece;
    }
  }
}

}  // namespace
}  // namespace ttt::util
