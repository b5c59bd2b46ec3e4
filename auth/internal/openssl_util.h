// Small pieces shared by auth/'s OpenSSL users (x509_identity, tls_material): owning pointers
// for OpenSSL objects, and the two forms a revocation check compares, made the same way for a
// certificate and for a CRL entry.
#pragma once

#include <openssl/bio.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <memory>
#include <string>

namespace ttt::auth::internal {

struct OpenSslFree {
  void operator()(BIO* b) const { BIO_free(b); }
  void operator()(X509* x) const { X509_free(x); }
  void operator()(X509_CRL* c) const { X509_CRL_free(c); }
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
  void operator()(GENERAL_NAMES* n) const { GENERAL_NAMES_free(n); }
};
template <typename T>
using OpenSslPtr = std::unique_ptr<T, OpenSslFree>;

// A read-only memory BIO over `text` (which must outlive it).
OpenSslPtr<BIO> MemoryBio(const std::string& text);
// A name's DER encoding ("" when it cannot be encoded).
std::string NameDer(const X509_NAME* name);
// A serial number as upper-case hex without leading zeros ("" when it cannot be converted).
std::string SerialHex(const ASN1_INTEGER* serial);

}  // namespace ttt::auth::internal
