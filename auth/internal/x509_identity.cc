// See x509_identity.h.
#include "auth/internal/x509_identity.h"

#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <memory>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "auth/internal/openssl_util.h"
#include "util/status_macros.h"

namespace ttt::auth::internal {
namespace {

absl::Status Refuse(absl::string_view why) {
  return absl::UnauthenticatedError(absl::StrCat("client certificate refused: ", why));
}

// Length of the UTF-8 sequence that starts with `lead`, or 0 when it cannot start one.
int Utf8Length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 0;
}

// Well-formed UTF-8 (no overlong forms, no surrogates, nothing above U+10FFFF) without a
// control character (C0, DEL, C1), a space or another character the credentials file
// would split on.
bool IsUsableValue(absl::string_view value) {
  if (value.empty() || value.size() > kMaxIdentityValueBytes) return false;
  for (size_t i = 0; i < value.size();) {
    const auto lead = static_cast<unsigned char>(value[i]);
    const int n = Utf8Length(lead);
    if (n == 0 || i + n > value.size()) return false;
    uint32_t cp = n == 1 ? lead : lead & (0x7F >> n);
    for (int k = 1; k < n; ++k) {
      const auto c = static_cast<unsigned char>(value[i + k]);
      if ((c & 0xC0) != 0x80) return false;
      cp = cp << 6 | (c & 0x3F);
    }
    const bool overlong = (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000);
    if (overlong || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    if (cp <= 0x20 || (cp >= 0x7F && cp <= 0xA0)) return false;  // C0, space, DEL, C1, NBSP
    if (cp == 0x23) return false;  // `#` starts a comment in the credentials file
    if (cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200B) || cp == 0x2028 || cp == 0x2029 ||
        cp == 0x202F || cp == 0x205F || cp == 0x3000 || cp == 0xFEFF) {
      return false;  // Unicode spaces and separators: invisible in a credentials file
    }
    i += n;
  }
  return true;
}

// The URI SANs of `cert` (their bytes as stored; checked by the caller).
absl::StatusOr<std::vector<std::string>> UriNames(X509* cert) {
  int critical = 0;
  OpenSslPtr<GENERAL_NAMES> names(static_cast<GENERAL_NAMES*>(
      X509_get_ext_d2i(cert, NID_subject_alt_name, &critical, nullptr)));
  if (names == nullptr && critical == -2) {
    return Refuse("it has several subjectAltName extensions");
  }
  std::vector<std::string> uris;
  for (int i = 0; names != nullptr && i < sk_GENERAL_NAME_num(names.get()); ++i) {
    const GENERAL_NAME* name = sk_GENERAL_NAME_value(names.get(), i);
    if (name->type != GEN_URI) continue;
    const ASN1_IA5STRING* uri = name->d.uniformResourceIdentifier;
    uris.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(uri)),
                      static_cast<size_t>(ASN1_STRING_length(uri)));
  }
  return uris;
}

// The one subject CN of `cert`, converted to UTF-8 from whatever string type it has.
absl::StatusOr<std::string> OnlyCommonName(X509* cert) {
  const X509_NAME* subject = X509_get_subject_name(cert);
  const int first = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
  if (first < 0) return Refuse("it has neither a URI subjectAltName nor a subject CN");
  if (X509_NAME_get_index_by_NID(subject, NID_commonName, first) >= 0) {
    return Refuse("its subject has several CN attributes (exactly one names the client)");
  }
  const ASN1_STRING* data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, first));
  unsigned char* utf8 = nullptr;
  const int length = ASN1_STRING_to_UTF8(&utf8, data);
  if (length < 0) return Refuse("its subject CN cannot be read as UTF-8");
  std::string cn(reinterpret_cast<const char*>(utf8), static_cast<size_t>(length));
  OPENSSL_free(utf8);
  return cn;
}

}  // namespace

// Clears this thread's OpenSSL error queue when it leaves scope: the authorizer runs on gRPC's
// transport threads, where a stale error would be read by the next TLS read's SSL_get_error.
struct ClearErrorsOnExit {
  ~ClearErrorsOnExit() { ERR_clear_error(); }
};

absl::StatusOr<CertificateIdentity> IdentityFromPem(absl::string_view pem) {
  ClearErrorsOnExit clear_errors;
  if (pem.size() > kMaxCertificatePemBytes) {
    return Refuse(absl::StrCat("it is over ", kMaxCertificatePemBytes, " bytes of PEM"));
  }
  const std::string text(pem);
  OpenSslPtr<BIO> bio = MemoryBio(text);
  OpenSslPtr<X509> cert(bio == nullptr ? nullptr
                                       : PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (cert == nullptr) return Refuse("it cannot be parsed as a PEM X.509 certificate");

  ASSIGN_OR_RETURN(auto uris, UriNames(cert.get()));
  CertificateIdentity out;
  if (uris.size() > 1) {
    return Refuse("it has several URI subjectAltNames (exactly one may name the client)");
  }
  if (uris.size() == 1) {
    const std::string& uri = uris.front();
    bool ascii = true;
    for (char c : uri) ascii = ascii && static_cast<unsigned char>(c) < 0x80;
    if (!ascii || !IsUsableValue(uri)) {
      return Refuse(absl::StrCat("its URI subjectAltName is empty, over ", kMaxIdentityValueBytes,
                                 " bytes, or holds a non-ASCII, control or space character"));
    }
    out.identity = absl::StrCat("uri:", uri);
  } else {
    auto cn = OnlyCommonName(cert.get());
    if (!cn.ok()) return cn.status();
    if (!IsUsableValue(*cn)) {
      return Refuse(absl::StrCat("its subject CN is empty, over ", kMaxIdentityValueBytes,
                                 " bytes, or holds a control, space or invalid UTF-8 character"));
    }
    out.identity = absl::StrCat("cn:", *cn);
  }
  out.issuer_der = NameDer(X509_get_issuer_name(cert.get()));
  out.serial_hex = SerialHex(X509_get0_serialNumber(cert.get()));
  return out;
}

}  // namespace ttt::auth::internal
