// Who a client certificate is, read from the certificate's structure with OpenSSL's X.509 API,
// never from its subject string (an escaped comma or a `+`-joined RDN inside a string form is
// how a certificate used to smuggle `O=admin` past a split on commas).
//
// The identity of a certificate, the key of its line in the credentials file (tokens_file.h):
//   - `uri:<uri>` when it has a URI subjectAltName (a SPIFFE ID, say): exactly one is allowed;
//   - else `cn:<common name>`: the subject must hold exactly one CN attribute.
// Subject O, OU, L, emailAddress and every other attribute are ignored: they grant nothing.
// Values must be well-formed UTF-8 (a CN of any ASN.1 string type is converted; a URI must be
// ASCII) with no control character, NUL or whitespace, at most kMaxIdentityValueBytes bytes.
// The certificate itself was verified by the TLS handshake; this only reads it.
//
// Thread-safety: stateless functions.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ttt::auth::internal {

inline constexpr size_t kMaxIdentityValueBytes = 256;
inline constexpr size_t kMaxCertificatePemBytes = 64 << 10;

struct CertificateIdentity {
  std::string identity;    // "uri:..." or "cn:..."
  std::string issuer_der;  // the issuer's DER-encoded name, for revocation checks
  std::string serial_hex;  // the serial number, upper-case hex, for revocation checks
};

// The identity of the first certificate in `pem` (the leaf, as gRPC's x509_pem_cert property
// holds it). UNAUTHENTICATED with a message that says what is wrong with the certificate: not
// PEM, over kMaxCertificatePemBytes, several URI SANs, no or several CNs, a value that is not
// usable as above.
absl::StatusOr<CertificateIdentity> IdentityFromPem(absl::string_view pem);

}  // namespace ttt::auth::internal
