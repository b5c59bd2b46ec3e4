// libFuzzer target: the certificate-to-identity mapping (auth/internal/x509_identity.h) on
// untrusted certificate bytes. An input that starts like PEM is passed as it is; any other is
// taken as DER and wrapped in a PEM CERTIFICATE block, so the fuzzer reaches OpenSSL's DER
// parser and our walk over names and SANs. Invariants: no crash, no leak, and an identity that
// is returned is `cn:` or `uri:` followed by a value the credentials file can hold (no control
// character, no space, no '#').
#include <cstddef>
#include <cstdint>
#include <string>

#include <openssl/evp.h>

#include "absl/strings/match.h"
#include "auth/internal/x509_identity.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

std::string AsPem(const uint8_t* data, size_t size) {
  std::string b64(4 * ((size + 2) / 3) + 1, '\0');
  const int n =
      EVP_EncodeBlock(reinterpret_cast<unsigned char*>(b64.data()), data, static_cast<int>(size));
  b64.resize(static_cast<size_t>(n));
  std::string pem = "-----BEGIN CERTIFICATE-----\n";
  for (size_t i = 0; i < b64.size(); i += 64) pem += b64.substr(i, 64) + "\n";
  return pem + "-----END CERTIFICATE-----\n";
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 32 << 10) return 0;
  const std::string input(reinterpret_cast<const char*>(data), size);
  const std::string pem = absl::StartsWith(input, "-----BEGIN") ? input : AsPem(data, size);
  auto id = ttt::auth::internal::IdentityFromPem(pem);
  if (!id.ok()) {
    FUZZ_CHECK(id.status().code() == absl::StatusCode::kUnauthenticated, "code %d",
               static_cast<int>(id.status().code()));
    return 0;
  }
  const std::string& s = id->identity;
  const size_t prefix = absl::StartsWith(s, "cn:") ? 3 : absl::StartsWith(s, "uri:") ? 4 : 0;
  FUZZ_CHECK(prefix > 0, "identity %s", s.c_str());
  FUZZ_CHECK(s.size() > prefix && s.size() <= prefix + ttt::auth::internal::kMaxIdentityValueBytes,
             "identity of %zu bytes", s.size());
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    FUZZ_CHECK(u > 0x20 && u != 0x7F && u != '#', "byte 0x%02x in the identity", u);
  }
  return 0;
}
