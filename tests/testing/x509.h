// Certificates built in-process with OpenSSL's API, for tests of the certificate-to-identity
// mapping: unlike openssl's command line, the API can put any bytes in any attribute (NUL,
// invalid UTF-8, BMPStrings), join attributes into one multi-valued RDN, repeat the CN or the
// subjectAltName extension. Each certificate is signed by a test CA, as a handshake would have
// verified it.
#pragma once

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <memory>
#include <string>
#include <vector>

namespace ttt::testing {

// One attribute of the subject: `nid` (NID_commonName, ...), the ASN.1 string type
// (V_ASN1_UTF8STRING, V_ASN1_BMPSTRING, ...), its raw bytes, and whether it joins the previous
// attribute's RDN (`+` in the string form) instead of starting its own.
struct SubjectAttribute {
  int nid;
  std::string bytes;
  int type = V_ASN1_UTF8STRING;
  bool join_previous = false;
};

// One subjectAltName entry: GEN_URI, GEN_DNS or GEN_EMAIL with its raw bytes.
struct AltName {
  int type;
  std::string bytes;
};

struct CertificateSpec {
  std::vector<SubjectAttribute> subject;
  std::vector<AltName> alt_names;
  bool duplicate_alt_name_extension = false;  // the SAN extension twice
  long serial = 1;
};

// A CA key and name that sign test certificates; one leaf key shared by all of them.
class TestCa {
 public:
  TestCa()
      : key_(EVP_EC_gen("P-256"), EVP_PKEY_free), leaf_key_(EVP_EC_gen("P-256"), EVP_PKEY_free) {}

  // The PEM of a certificate as `spec` says (empty when OpenSSL refuses to build it).
  std::string Issue(const CertificateSpec& spec) const {
    std::unique_ptr<X509, decltype(&X509_free)> cert(X509_new(), X509_free);
    X509_set_version(cert.get(), 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), spec.serial);
    X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600);
    X509_gmtime_adj(X509_getm_notAfter(cert.get()), 86400);
    X509_NAME* issuer = X509_get_issuer_name(cert.get());
    X509_NAME_add_entry_by_NID(issuer, NID_commonName, MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>("test-ca"), -1, -1, 0);
    X509_NAME* subject = X509_get_subject_name(cert.get());
    for (const SubjectAttribute& a : spec.subject) {
      X509_NAME_ENTRY* entry = X509_NAME_ENTRY_create_by_NID(
          nullptr, a.nid, a.type, reinterpret_cast<const unsigned char*>(a.bytes.data()),
          static_cast<int>(a.bytes.size()));
      if (entry == nullptr) return "";
      const int loc = -1, set = a.join_previous && X509_NAME_entry_count(subject) > 0 ? -1 : 0;
      const bool added = X509_NAME_add_entry(subject, entry, loc, set) == 1;
      X509_NAME_ENTRY_free(entry);
      if (!added) return "";
    }
    if (!spec.alt_names.empty() && !AddAltNames(cert.get(), spec)) return "";
    X509_set_pubkey(cert.get(), leaf_key_.get());
    if (X509_sign(cert.get(), key_.get(), EVP_sha256()) <= 0) return "";
    std::unique_ptr<BIO, decltype(&BIO_free)> out(BIO_new(BIO_s_mem()), BIO_free);
    PEM_write_bio_X509(out.get(), cert.get());
    char* data = nullptr;
    const long size = BIO_get_mem_data(out.get(), &data);
    return std::string(data, static_cast<size_t>(size));
  }

 private:
  static bool AddAltNames(X509* cert, const CertificateSpec& spec) {
    GENERAL_NAMES* names = sk_GENERAL_NAME_new_null();
    for (const AltName& alt : spec.alt_names) {
      GENERAL_NAME* name = GENERAL_NAME_new();
      ASN1_IA5STRING* value = ASN1_IA5STRING_new();
      ASN1_STRING_set(value, alt.bytes.data(), static_cast<int>(alt.bytes.size()));
      GENERAL_NAME_set0_value(name, alt.type, value);
      sk_GENERAL_NAME_push(names, name);
    }
    bool ok = X509_add1_ext_i2d(cert, NID_subject_alt_name, names, 0, X509V3_ADD_APPEND) == 1;
    if (ok && spec.duplicate_alt_name_extension) {
      ok = X509_add1_ext_i2d(cert, NID_subject_alt_name, names, 0, X509V3_ADD_APPEND) == 1;
    }
    GENERAL_NAMES_free(names);
    return ok;
  }

  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key_;
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> leaf_key_;
};

}  // namespace ttt::testing
