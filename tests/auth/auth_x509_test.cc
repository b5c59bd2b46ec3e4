// The certificate-to-identity mapping under attack: well over a hundred hostile certificates,
// each with the one outcome it may have. The authorizer reads a certificate's structure
// (auth/internal/x509_identity.h) and maps its identity through the credentials file; no field
// may smuggle in a scope or a tenant (escaped commas, `+`-joined RDNs, several CNs, NUL and
// control bytes, invalid UTF-8, SANs that disagree with the CN, very long subjects).
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "auth/authorizer.h"
#include "auth/internal/x509_identity.h"
#include "auth/scopes.h"
#include "auth/token_store.h"
#include "tests/testing/dirs.h"
#include "tests/testing/x509.h"

namespace ttt::auth {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ttt::testing::AltName;
using ttt::testing::CertificateSpec;
using ttt::testing::SubjectAttribute;

constexpr char kSpiffeSvc[] = "spiffe://example.org/ns/prod/sa/svc";

// Who the credentials file lets in, and as what.
constexpr char kCredentials[] =
    "alice cn:alice read\n"
    "bob   cn:bob write\n"
    "ops   cn:ops admin\n"
    "svc   uri:spiffe://example.org/ns/prod/sa/svc write,metrics\n";

// One hostile certificate and the only outcome it may have: the tenant and scopes it
// authenticates as, or refusal (empty tenant) with a message fragment.
struct Case {
  std::string name;
  CertificateSpec spec;
  std::string tenant;   // empty: refused
  std::string scopes;   // ScopeSetName of the principal when accepted
  std::string refusal;  // fragment of the UNAUTHENTICATED message when refused
};

SubjectAttribute Attr(int nid, std::string bytes, bool join = false) {
  return SubjectAttribute{nid, std::move(bytes), V_ASN1_UTF8STRING, join};
}
SubjectAttribute Cn(std::string bytes) { return Attr(NID_commonName, std::move(bytes)); }

Case Accepted(std::string name, CertificateSpec spec, std::string tenant, std::string scopes) {
  return Case{std::move(name), std::move(spec), std::move(tenant), std::move(scopes), ""};
}
Case Refused(std::string name, CertificateSpec spec, std::string why) {
  return Case{std::move(name), std::move(spec), "", "", std::move(why)};
}

constexpr char kUnknown[] = "is not in the server's credentials file";
constexpr char kUnusableCn[] = "its subject CN is empty, over";

// Strings an attacker puts in another field to reach a scope or a tenant through the
// certificate's string form.
const std::vector<std::string>& Injections() {
  static const auto* list = new std::vector<std::string>{"x,O=admin",
                                                         "x\\,O=admin",
                                                         "x+O=admin",
                                                         "x,CN=ops",
                                                         "x/CN=ops",
                                                         "x\nO=admin",
                                                         "x, O=admin",
                                                         "\"x,O=admin\"",
                                                         "x;O=admin",
                                                         "x,CN=ops,O=admin",
                                                         std::string("x\0,O=admin", 10),
                                                         "x#,O=admin"};
  return *list;
}

// Every other field of the subject, where the injections go.
const std::vector<std::pair<std::string, int>>& OtherFields() {
  static const auto* list = new std::vector<std::pair<std::string, int>>{
      {"O", NID_organizationName},     {"OU", NID_organizationalUnitName}, {"L", NID_localityName},
      {"ST", NID_stateOrProvinceName}, {"email", NID_pkcs9_emailAddress},  {"title", NID_title},
      {"DC", NID_domainComponent},     {"serialNumber", NID_serialNumber}};
  return *list;
}

std::vector<Case> HostileCertificates() {
  std::vector<Case> cases;
  // Injections in every other field, for an unlisted CN (stays refused) and for a listed
  // read-only CN (stays exactly read-only alice).
  for (const auto& [field, nid] : OtherFields()) {
    for (size_t i = 0; i < Injections().size(); ++i) {
      const std::string& bad = Injections()[i];
      const std::string tag = field + "_injection_" + std::to_string(i);
      cases.push_back(Refused("mallory_" + tag, {{Cn("mallory"), Attr(nid, bad)}}, kUnknown));
      if (i % 3 == 0) {
        cases.push_back(Accepted("alice_" + tag, {{Attr(nid, bad), Cn("alice")}}, "alice", "read"));
      }
    }
  }
  // Multi-valued RDNs (`+`), several CNs, no CN.
  cases.push_back(Accepted("cn_plus_o_admin",
                           {{Cn("alice"), Attr(NID_organizationName, "admin", true)}}, "alice",
                           "read"));
  cases.push_back(
      Accepted("o_admin_plus_cn",
               {{Attr(NID_organizationName, "admin"), Attr(NID_commonName, "alice", true)}},
               "alice", "read"));
  cases.push_back(Refused("cn_plus_cn", {{Cn("mallory"), Attr(NID_commonName, "ops", true)}},
                          "several CN attributes"));
  cases.push_back(Refused("two_cns", {{Cn("alice"), Cn("ops")}}, "several CN attributes"));
  cases.push_back(Refused("two_cns_reversed", {{Cn("ops"), Cn("alice")}}, "several CN"));
  cases.push_back(Refused("same_cn_twice", {{Cn("ops"), Cn("ops")}}, "several CN"));
  cases.push_back(Refused("no_cn", {{Attr(NID_organizationName, "admin")}},
                          "neither a URI subjectAltName nor a subject CN"));
  cases.push_back(Refused("empty_subject", {}, "neither a URI subjectAltName nor a subject CN"));
  // Bytes inside the CN.
  const std::vector<std::pair<std::string, std::string>> bad_cns = {
      {"nul_inside", std::string("ops\0x", 5)},
      {"nul_after", std::string("alice\0", 6)},
      {"nul_before", std::string("\0ops", 4)},
      {"space_inside", "ops admin"},
      {"leading_space", " alice"},
      {"trailing_newline", "alice\n"},
      {"carriage_return", "ops\r"},
      {"tab", "ops\tadmin"},
      {"del", "ops\x7f"},
      {"c1_control", "ops\xc2\x85"},
      {"nbsp", "ops\xc2\xa0"},
      {"ideographic_space", "ops\xe3\x80\x80"},
      {"zero_width_space", "ops\xe2\x80\x8b"},
      {"byte_order_mark", "\xef\xbb\xbfops"},
      {"invalid_utf8", "op\xc3\x28"},
      {"overlong_slash", "ops\xc0\xaf"},
      {"surrogate", "ops\xed\xa0\x80"},
      {"truncated_utf8", "ops\xe2\x82"},
      {"comment_mark", "ops#admin"},
      {"too_long", std::string(257, 'a')},
      {"empty", ""},
  };
  for (const auto& [tag, cn] : bad_cns) {
    cases.push_back(Refused("cn_" + tag, {{Cn(cn)}}, "client certificate refused"));
  }
  // Names that resemble a listed one are other names.
  for (const char* near :
       {"Alice", "ALICE", "alice.", "alice-", "\xd0\xb0lice", "\xc3\xa5lice", "ops2", "admin",
        "cn:ops", "svc", "spiffe://example.org/ns/prod/sa/svc"}) {
    cases.push_back(Refused(std::string("near_") + near, {{Cn(near)}}, "client certificate"));
  }
  cases.push_back(Refused("cn_256_bytes_unlisted", {{Cn(std::string(256, 'a'))}}, kUnknown));
  // Other string types carry the same characters: a BMPString "alice" is alice.
  cases.push_back(Accepted(
      "bmp_alice",
      {{SubjectAttribute{NID_commonName, std::string("\0a\0l\0i\0c\0e", 10), V_ASN1_BMPSTRING}}},
      "alice", "read"));
  cases.push_back(
      Refused("bmp_odd_length",
              {{SubjectAttribute{NID_commonName, std::string("\0a\0l\0", 5), V_ASN1_BMPSTRING}}},
              "client certificate refused"));
  cases.push_back(Accepted("printable_bob",
                           {{SubjectAttribute{NID_commonName, "bob", V_ASN1_PRINTABLESTRING}}},
                           "bob", "write"));
  // A very long subject around a listed CN changes nothing.
  {
    CertificateSpec spec;
    for (int i = 0; i < 200; ++i)
      spec.subject.push_back(Attr(NID_organizationalUnitName, "O=admin," + std::to_string(i)));
    spec.subject.push_back(Cn("alice"));
    cases.push_back(Accepted("long_subject_alice", spec, "alice", "read"));
    spec.subject.back() = Cn("mallory");
    cases.push_back(Refused("long_subject_mallory", spec, kUnknown));
  }
  // subjectAltNames: a URI SAN is the identity and the CN is then ignored.
  const AltName svc{GEN_URI, kSpiffeSvc};
  cases.push_back(Accepted("uri_svc", {{}, {svc}}, "svc", "write,metrics"));
  cases.push_back(Accepted("uri_svc_cn_mallory", {{Cn("mallory")}, {svc}}, "svc", "write,metrics"));
  cases.push_back(Refused("uri_other_cn_ops", {{Cn("ops")}, {{GEN_URI, "spiffe://evil/ops"}}},
                          "'uri:spiffe://evil/ops' is not in the server's credentials file"));
  cases.push_back(Refused("uri_twice", {{Cn("alice")}, {svc, {GEN_URI, "spiffe://x/y"}}},
                          "several URI subjectAltNames"));
  cases.push_back(Refused("uri_same_twice", {{}, {svc, svc}}, "several URI subjectAltNames"));
  cases.push_back(Refused("san_extension_twice", {{Cn("alice")}, {svc}, true},
                          "several subjectAltName extensions"));
  cases.push_back(Refused("uri_empty", {{Cn("alice")}, {{GEN_URI, ""}}}, "URI subjectAltName"));
  cases.push_back(
      Refused("uri_nul", {{}, {{GEN_URI, std::string(kSpiffeSvc) + '\0'}}}, "URI subjectAltName"));
  cases.push_back(Refused("uri_space", {{}, {{GEN_URI, std::string(kSpiffeSvc) + " x"}}},
                          "URI subjectAltName"));
  cases.push_back(Refused("uri_newline", {{}, {{GEN_URI, std::string(kSpiffeSvc) + "\nx"}}},
                          "URI subjectAltName"));
  cases.push_back(
      Refused("uri_non_ascii", {{}, {{GEN_URI, "spiffe://\xc3\xa9/svc"}}}, "URI subjectAltName"));
  cases.push_back(
      Refused("uri_prefix_of_svc", {{}, {{GEN_URI, "spiffe://example.org/ns/prod"}}}, kUnknown));
  cases.push_back(Refused("uri_long", {{}, {{GEN_URI, "spiffe://" + std::string(300, 'a')}}},
                          "URI subjectAltName"));
  // Other SAN types are not identities: the CN decides.
  cases.push_back(
      Accepted("dns_san_cn_alice", {{Cn("alice")}, {{GEN_DNS, "ops"}}}, "alice", "read"));
  cases.push_back(
      Refused("email_san_ops_cn_mallory", {{Cn("mallory")}, {{GEN_EMAIL, "ops"}}}, kUnknown));
  cases.push_back(
      Refused("dns_san_svc_uri_text", {{Cn("mallory")}, {{GEN_DNS, kSpiffeSvc}}}, kUnknown));
  // Plain listed identities, the baseline.
  cases.push_back(Accepted("plain_alice", {{Cn("alice")}}, "alice", "read"));
  cases.push_back(Accepted("plain_bob", {{Cn("bob")}}, "bob", "write"));
  cases.push_back(Accepted("plain_ops", {{Cn("ops")}}, "ops", "admin"));
  return cases;
}

class AuthX509Test : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ttt::testing::FreshTestDir();
    fs::create_directories(dir_);
    const std::string path = (dir_ / "credentials.txt").string();
    std::ofstream(path) << kCredentials;
    auto store = TokenStore::Open({path, nullptr, 0, nullptr});
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
  }
  void TearDown() override { fs::remove_all(dir_); }

  Authorizer Make() {
    AuthorizerOptions o;
    o.tokens = store_.get();
    o.client_certificates = true;
    o.on_failure = [this](AuthFailure r) { failures_[AuthFailureName(r)]++; };
    return Authorizer(std::move(o));
  }

  fs::path dir_;
  std::unique_ptr<TokenStore> store_;
  std::map<std::string, int> failures_;
  ttt::testing::TestCa ca_;
};

TEST_F(AuthX509Test, NoHostileCertificateGainsAScopeOrATenant) {
  const std::vector<Case> cases = HostileCertificates();
  ASSERT_GE(cases.size(), 100u);
  Authorizer authorizer = Make();
  long serial = 1;
  std::vector<std::string> unbuildable;
  for (Case c : cases) {
    SCOPED_TRACE(c.name);
    c.spec.serial = serial++;
    const std::string pem = ca_.Issue(c.spec);
    if (pem.empty()) {
      // OpenSSL will not encode (nor parse, nor so handshake with) a name whose UTF8String is
      // not UTF-8: such a certificate is refused before the authorizer sees it.
      EXPECT_TRUE(c.tenant.empty()) << "a certificate meant to be accepted could not be built";
      unbuildable.push_back(c.name);
      continue;
    }
    CallCredentials call;
    call.cert_pem = pem;
    for (const char* method : {"Score", "Ingest", "ListSessions"}) {
      auto principal = authorizer.Authorize(call, TttMethod(method));
      if (c.tenant.empty()) {
        ASSERT_FALSE(principal.ok()) << "authenticated as " << principal->tenant;
        EXPECT_EQ(principal.status().code(), absl::StatusCode::kUnauthenticated);
        EXPECT_THAT(std::string(principal.status().message()), HasSubstr(c.refusal));
        continue;
      }
      if (principal.ok()) {
        EXPECT_EQ(principal->tenant, c.tenant);
        EXPECT_EQ(ScopeSetName(principal->scopes), c.scopes);
        EXPECT_EQ(principal->kind, CredentialKind::kClientCertificate);
      } else {  // only a scope refusal of a listed identity
        EXPECT_EQ(principal.status().code(), absl::StatusCode::kPermissionDenied)
            << principal.status();
      }
    }
    // Never another tenant through x-tenant-id unless the identity's line says admin.
    call.tenant_header = "bob";
    auto as_bob = authorizer.Authorize(call, TttMethod("ListSessions"));
    if (as_bob.ok()) {
      EXPECT_TRUE(c.tenant == "bob" || c.scopes == "admin") << "reached bob's sessions";
    }
  }
  // Only the malformed UTF-8 cases may be unbuildable; the rest reach the authorizer.
  EXPECT_LE(unbuildable.size(), 5u) << ::testing::PrintToString(unbuildable);
}

TEST_F(AuthX509Test, IdentityComesFromTheStructure) {
  auto id = internal::IdentityFromPem(
      ca_.Issue({{Attr(NID_organizationalUnitName, "x,O=admin"), Cn("mallory")}}));
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->identity, "cn:mallory");
  EXPECT_FALSE(id->serial_hex.empty());
  EXPECT_FALSE(id->issuer_der.empty());
  auto uri = internal::IdentityFromPem(ca_.Issue({{Cn("alice")}, {{GEN_URI, kSpiffeSvc}}}));
  ASSERT_TRUE(uri.ok()) << uri.status();
  EXPECT_EQ(uri->identity, std::string("uri:") + kSpiffeSvc);
}

TEST_F(AuthX509Test, GarbageAndOversizedPemAreRefused) {
  for (const std::string& bad :
       {std::string(), std::string("not a certificate"),
        std::string("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
        std::string(internal::kMaxCertificatePemBytes + 1, 'A')}) {
    auto id = internal::IdentityFromPem(bad);
    EXPECT_EQ(id.status().code(), absl::StatusCode::kUnauthenticated);
    EXPECT_THAT(std::string(id.status().message()), HasSubstr("client certificate refused"));
  }
}

TEST_F(AuthX509Test, FailuresAreCountedByReason) {
  Authorizer authorizer = Make();
  CallCredentials call;
  call.cert_pem = ca_.Issue({{Cn("mallory")}});
  EXPECT_FALSE(authorizer.Authorize(call, TttMethod("Score")).ok());
  call.cert_pem = ca_.Issue({{Cn("a"), Cn("b")}});
  EXPECT_FALSE(authorizer.Authorize(call, TttMethod("Score")).ok());
  EXPECT_EQ(failures_["unknown_certificate"], 1);
  EXPECT_EQ(failures_["bad_certificate"], 1);
}

// A revocation list names the issuer and serial; the certificate is refused even though its
// identity is listed.
class RevokeSerial final : public RevocationCheck {
 public:
  explicit RevokeSerial(std::string serial_hex) : serial_hex_(std::move(serial_hex)) {}
  bool IsRevoked(absl::string_view, absl::string_view serial_hex) const override {
    return serial_hex == serial_hex_;
  }

 private:
  std::string serial_hex_;
};

TEST_F(AuthX509Test, RevokedCertificateIsRefused) {
  RevokeSerial revoked("2A");  // serial 42
  AuthorizerOptions o;
  o.tokens = store_.get();
  o.client_certificates = true;
  o.revocations = &revoked;
  Authorizer authorizer(std::move(o));
  CertificateSpec spec{{Cn("ops")}};
  spec.serial = 42;
  CallCredentials call;
  call.cert_pem = ca_.Issue(spec);
  auto refused = authorizer.Authorize(call, TttMethod("Score"));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("serial 2A) is revoked"));
  spec.serial = 43;
  call.cert_pem = ca_.Issue(spec);
  EXPECT_TRUE(authorizer.Authorize(call, TttMethod("Score")).ok());
}

}  // namespace
}  // namespace ttt::auth
