// auth/: the tokens file parser, constant-time comparison, scopes per method, the reloadable
// token store (file change, SIGHUP, a bad file keeps the last good credentials) and the
// authorizer's decisions. Real temp files; no gRPC (auth_tls_test.cc has the transport).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "auth/authorizer.h"
#include "auth/internal/constant_time.h"
#include "auth/internal/tokens_file.h"
#include "auth/scopes.h"
#include "auth/token_store.h"
#include "tests/testing/dirs.h"
#include "util/sha256.h"

namespace ttt::auth {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using util::Sha256Hex;

// The server's rule for tenant names, restated for the tests (the server passes its own).
absl::Status SimpleTenantRule(const std::string& tenant) {
  for (char c : tenant) {
    if (!isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.') {
      return absl::InvalidArgumentError("tenant id '" + tenant + "' has a bad character");
    }
  }
  return absl::OkStatus();
}

// ----------------------------------------------------------------------------------- parser

TEST(TokensFileTest, ParsesTenantsHashesScopesAndComments) {
  const std::string text = "# credentials\n\nalice " + Sha256Hex("a1") + " read  # ci\n" +
                           "alice\t" + Sha256Hex("a2") + "\r\n" + "ops " + Sha256Hex("o") +
                           " read,admin\n" + "prom " + Sha256Hex("p") + " read,metrics\n";
  auto file = internal::ParseTokensFile(text, "tokens.txt", SimpleTenantRule);
  ASSERT_TRUE(file.ok()) << file.status();
  const auto& entries = file->tokens;
  ASSERT_EQ(entries.size(), 4u);
  EXPECT_TRUE(file->certificates.empty());
  EXPECT_EQ(entries[0].tenant, "alice");
  EXPECT_EQ(entries[0].scopes, ScopeSet::Of(Scope::kRead));
  EXPECT_EQ(entries[0].line, 3);
  EXPECT_EQ(entries[1].scopes, ScopeSet::Of(Scope::kWrite));  // no scope: write
  EXPECT_EQ(entries[2].scopes, ScopeSet::Of(Scope::kAdmin));  // admin implies read
  EXPECT_EQ(entries[3].scopes, ScopeSet::Of(Scope::kRead).With(Scope::kMetrics));  // a set
  util::Sha256 h;
  h.Update("a2");
  EXPECT_EQ(entries[1].token_sha256, h.Final());
}

TEST(TokensFileTest, ParsesCertificateIdentities) {
  const std::string text =
      "alice cn:alice-laptop read,metrics\n"
      "svc uri:spiffe://example.org/ns/prod/sa/svc\n"
      "bob " +
      Sha256Hex("b") + "\n";
  auto file = internal::ParseTokensFile(text, "creds", SimpleTenantRule);
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ(file->certificates.size(), 2u);
  ASSERT_EQ(file->tokens.size(), 1u);
  EXPECT_EQ(file->certificates[0].identity, "cn:alice-laptop");
  EXPECT_EQ(file->certificates[0].tenant, "alice");
  EXPECT_EQ(ScopeSetName(file->certificates[0].scopes), "read,metrics");
  EXPECT_EQ(file->certificates[1].identity, "uri:spiffe://example.org/ns/prod/sa/svc");
  EXPECT_EQ(file->certificates[1].scopes, ScopeSet::Of(Scope::kWrite));
  EXPECT_EQ(file->certificates[1].line, 2);
}

TEST(TokensFileTest, RefusesBadLinesNamingTheLine) {
  const std::string good = Sha256Hex("t");
  struct Case {
    std::string text, fragment;
  } cases[] = {
      {"alice\n",
       "tokens.txt:1: expected '<tenant> <sha256-hex-of-token | cn:<name> | "
       "uri:<uri>> [scopes]', got 1"},
      {"# c\nalice " + good + " read extra\n", "tokens.txt:2: expected"},
      {"alice secret-token\n", "tokens.txt:1: the token hash must be 64 hex digits"},
      {"alice " + std::string(64, 'g') + "\n", "tokens.txt:1: the token hash has a character"},
      {"alice " + good + " wrte\n", "tokens.txt:1: unknown scope 'wrte' (valid: read, write"},
      {"alice " + good + " read,\n", "tokens.txt:1: empty scope in 'read,'"},
      {"alice dn:CN=alice\n", "tokens.txt:1: a certificate identity starts with 'cn:'"},
      {"alice cn:\n", "tokens.txt:1: the certificate identity 'cn:' has an empty value"},
      {"a cn:x\nb cn:x read\n",
       "tokens.txt:2: the certificate identity 'cn:x' is already on "
       "line 1"},
      {"al/ice " + good + "\n", "tokens.txt:1: tenant id 'al/ice' has a bad character"},
      {"a " + good + "\nb " + good + "\n",
       "tokens.txt:2: the same token hash is already on line 1"},
  };
  for (const Case& c : cases) {
    auto entries = internal::ParseTokensFile(c.text, "tokens.txt", SimpleTenantRule);
    ASSERT_FALSE(entries.ok()) << c.text;
    EXPECT_EQ(entries.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(entries.status().message()), HasSubstr(c.fragment));
  }
}

TEST(TokensFileTest, MessagesNeverQuoteTheHashField) {
  // A user may paste the token itself where the hash belongs: the message must not echo it.
  const std::string pasted_token = "tok_live_ABCDEFGHIJKLMNOPQRSTUVWXYZ";
  auto entries = internal::ParseTokensFile("alice " + pasted_token + "\n", "f", nullptr);
  ASSERT_FALSE(entries.ok());
  EXPECT_THAT(std::string(entries.status().message()), ::testing::Not(HasSubstr("ABCDEF")));
}

TEST(TokensFileTest, EmptyFileHasNoCredentials) {
  auto entries = internal::ParseTokensFile("# nobody yet\n", "f", nullptr);
  ASSERT_TRUE(entries.ok());
  EXPECT_TRUE(entries->tokens.empty());
  EXPECT_TRUE(entries->certificates.empty());
}

TEST(TokensFileTest, RefusesAnOversizeFile) {
  std::string huge(internal::kMaxTokensFileBytes + 1, '#');
  auto entries = internal::ParseTokensFile(huge, "big.txt", nullptr);
  ASSERT_FALSE(entries.ok());
  EXPECT_THAT(std::string(entries.status().message()), HasSubstr("big.txt: 4194305 bytes"));
}

// ------------------------------------------------------------------- constant time, scopes

TEST(ConstantTimeTest, ComparesEveryByte) {
  const uint8_t a[4] = {1, 2, 3, 4}, b[4] = {1, 2, 3, 4}, c[4] = {1, 2, 3, 5}, d[4] = {0, 2, 3, 4};
  EXPECT_TRUE(internal::ConstantTimeEquals(a, b, 4));
  EXPECT_FALSE(internal::ConstantTimeEquals(a, c, 4));  // last byte differs
  EXPECT_FALSE(internal::ConstantTimeEquals(a, d, 4));  // first byte differs
  EXPECT_TRUE(internal::ConstantTimeEquals(a, c, 3));
}

TEST(ScopesTest, MethodsNeedTheirScope) {
  EXPECT_EQ(RuleFor("/grpc.health.v1.Health/Check"), MethodRule::kPublic);
  EXPECT_EQ(RuleFor("/grpc.health.v1.Health/Watch"), MethodRule::kPublic);
  for (const char* m : {"GetServerInfo", "GetSession", "ListSessions", "Score", "Generate",
                        "ListCheckpoints", "ExportSession"}) {
    EXPECT_EQ(RuleFor(TttMethod(m)), MethodRule::kRead) << m;
  }
  for (const char* m : {"CreateSession", "DeleteSession", "Ingest", "Checkpoint", "Restore",
                        "Reset", "Fork", "DeleteCheckpoint", "ImportSession"}) {
    EXPECT_EQ(RuleFor(TttMethod(m)), MethodRule::kWrite) << m;
  }
  EXPECT_EQ(RuleFor("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            MethodRule::kRead);
  // Not in the table: admin only (deny by default).
  EXPECT_EQ(RuleFor(TttMethod("Shutdown")), MethodRule::kAdmin);
  EXPECT_EQ(RuleFor("/other.Service/Score"), MethodRule::kAdmin);
  EXPECT_EQ(RuleFor(""), MethodRule::kAdmin);
}

TEST(ScopesTest, ScopesAreSetsWithImpliedScopes) {
  const ScopeSet read = ScopeSet::Of(Scope::kRead), write = ScopeSet::Of(Scope::kWrite),
                 admin = ScopeSet::Of(Scope::kAdmin), metrics = ScopeSet::Of(Scope::kMetrics);
  EXPECT_TRUE(Allows(read, MethodRule::kRead));
  EXPECT_FALSE(Allows(read, MethodRule::kWrite));
  EXPECT_TRUE(Allows(write, MethodRule::kRead));
  EXPECT_FALSE(Allows(write, MethodRule::kAdmin));
  EXPECT_TRUE(Allows(admin, MethodRule::kWrite));
  EXPECT_TRUE(Allows(read, MethodRule::kPublic));
  EXPECT_FALSE(Allows(metrics, MethodRule::kRead));
  EXPECT_FALSE(Allows(ScopeSet(), MethodRule::kRead));
  EXPECT_TRUE(Allows(ScopeSet(), MethodRule::kPublic));
  EXPECT_TRUE(AllowsScrape(metrics));
  EXPECT_TRUE(AllowsScrape(admin));
  EXPECT_FALSE(AllowsScrape(write));
  EXPECT_EQ(*ParseScope("metrics"), Scope::kMetrics);
  auto bad = ParseScope("Admin");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
}

// Every combination of the four scopes, as a credentials file may write it: what each may call
// and whether it may scrape. The matrix the contract documents.
TEST(ScopesTest, EveryCombinationAllowsExactlyItsMethods) {
  const Scope all[] = {Scope::kMetrics, Scope::kRead, Scope::kWrite, Scope::kAdmin};
  for (int mask = 1; mask < 16; ++mask) {
    std::string names;
    for (int i = 0; i < 4; ++i) {
      if (mask >> i & 1) names += (names.empty() ? "" : ",") + std::string(ScopeName(all[i]));
    }
    SCOPED_TRACE(names);
    auto set = ParseScopeSet(names);
    ASSERT_TRUE(set.ok()) << set.status();
    const bool admin = mask & 8, write = admin || (mask & 4), read = write || (mask & 2),
               metrics = admin || (mask & 1);
    EXPECT_EQ(Allows(*set, MethodRule::kRead), read);
    EXPECT_EQ(Allows(*set, MethodRule::kWrite), write);
    EXPECT_EQ(Allows(*set, MethodRule::kAdmin), admin);
    EXPECT_EQ(AllowsScrape(*set), metrics);
    EXPECT_EQ(ParseScopeSet(ScopeSetName(*set)).value(), *set);  // the name round-trips
  }
  EXPECT_EQ(ScopeSetName(ParseScopeSet("metrics,write").value()), "write,metrics");
  EXPECT_EQ(ScopeSetName(ParseScopeSet("read,admin").value()), "admin");
  EXPECT_EQ(ScopeSetName(ScopeSet()), "none");
  EXPECT_EQ(ParseScopeSet("").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseScopeSet("read,,write").status().code(), absl::StatusCode::kInvalidArgument);
}

// -------------------------------------------------------------------------- token store

class TokenStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ttt::testing::FreshTestDir();
    fs::create_directories(dir_);
    path_ = (dir_ / "tokens.txt").string();
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Replaces the file by rename, as a Kubernetes Secret update does (a new inode).
  void Write(const std::string& text) {
    const std::string tmp = path_ + ".tmp";
    std::ofstream(tmp, std::ios::binary) << text;
    fs::rename(tmp, path_);
  }
  static bool WaitFor(const std::function<bool()>& done) {
    for (int i = 0; i < 1000 && !done(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return done();
  }

  fs::path dir_;
  std::string path_;
};

TEST_F(TokenStoreTest, LooksUpTokensByTheirHash) {
  Write("alice " + Sha256Hex("token-a") + " read\nbob " + Sha256Hex("token-b") + "\n");
  auto store = TokenStore::Open({path_, SimpleTenantRule, 0, nullptr});
  ASSERT_TRUE(store.ok()) << store.status();
  auto a = (*store)->Lookup("token-a");
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->tenant, "alice");
  EXPECT_EQ(a->scopes, ScopeSet::Of(Scope::kRead));
  EXPECT_EQ((*store)->Lookup("token-b")->tenant, "bob");
  EXPECT_FALSE((*store)->Lookup("token-c").has_value());
  EXPECT_FALSE((*store)->Lookup(Sha256Hex("token-a")).has_value());  // the hash is no token
  EXPECT_EQ((*store)->credential_count(), 2u);
}

TEST_F(TokenStoreTest, OpenFailsOnAMissingOrBadFile) {
  auto missing = TokenStore::Open({path_, nullptr, 0, nullptr});
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("cannot read the tokens file"));
  Write("alice nothex\n");
  auto bad = TokenStore::Open({path_, nullptr, 0, nullptr});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("tokens.txt:1: the token hash"));
}

TEST_F(TokenStoreTest, ReloadsWhenTheFileChangesAndKeepsTheLastGoodOnABadFile) {
  Write("alice " + Sha256Hex("old") + "\n");
  int reloads_ok = 0, reloads_bad = 0;
  std::mutex mu;
  auto store = TokenStore::Open({path_, SimpleTenantRule, 20, [&](bool ok) {
                                   std::lock_guard<std::mutex> lock(mu);
                                   (ok ? reloads_ok : reloads_bad)++;
                                 }});
  ASSERT_TRUE(store.ok());
  TokenStore& s = **store;
  // The callback runs last in a reload, so waiting for it waits for the whole reload.
  auto counted = [&](int ok, int bad) {
    return WaitFor([&] {
      std::lock_guard<std::mutex> lock(mu);
      return reloads_ok == ok && reloads_bad == bad;
    });
  };
  Write("alice " + Sha256Hex("new") + "\n");  // rotation: the old token is revoked
  ASSERT_TRUE(counted(1, 0));
  EXPECT_EQ(s.generation(), 2u);
  EXPECT_FALSE(s.Lookup("old").has_value());
  EXPECT_EQ(s.Lookup("new")->tenant, "alice");

  Write("alice " + Sha256Hex("newer") + " superuser\n");  // a typo while rotating
  ASSERT_TRUE(counted(1, 1));
  EXPECT_EQ(s.failed_reloads(), 1u);
  EXPECT_EQ(s.generation(), 2u);
  EXPECT_EQ(s.Lookup("new")->tenant, "alice");  // the last good credentials stay
  EXPECT_FALSE(s.Lookup("newer").has_value());
}

TEST_F(TokenStoreTest, ReloadsOnSighup) {
  InstallSighupReload();
  Write("alice " + Sha256Hex("a") + "\n");
  auto store = TokenStore::Open({path_, nullptr, 20, nullptr});
  ASSERT_TRUE(store.ok());
  // Change the content but not the identity the watcher compares: only SIGHUP can reveal it.
  // (Same size, written in place, then the stat times put back.)
  struct stat before;
  ASSERT_EQ(::stat(path_.c_str(), &before), 0);
  {
    std::fstream f(path_, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(0);
    f << "bobby";  // "alice" -> "bobby", same length
  }
  const struct timespec times[2] = {before.st_atim, before.st_mtim};
  ASSERT_EQ(::utimensat(AT_FDCWD, path_.c_str(), times, 0), 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  // ctime moved (utimensat sets it), so the watcher may already have reloaded; either way a
  // SIGHUP must lead to a reload that sees "bobby".
  const uint64_t before_signal = (*store)->generation();
  ASSERT_EQ(std::raise(SIGHUP), 0);
  ASSERT_TRUE(WaitFor([&] { return (*store)->generation() > before_signal; }));
  EXPECT_EQ((*store)->Lookup("a")->tenant, "bobby");
}

TEST_F(TokenStoreTest, ADeletedFileKeepsTheLastGoodCredentials) {
  Write("alice " + Sha256Hex("a") + "\n");
  auto store = TokenStore::Open({path_, nullptr, 20, nullptr});
  ASSERT_TRUE(store.ok());
  fs::remove(path_);
  ASSERT_TRUE(WaitFor([&] { return (*store)->failed_reloads() == 1; }));
  EXPECT_EQ((*store)->Lookup("a")->tenant, "alice");
  absl::Status st = (*store)->Reload();
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound);
}

// -------------------------------------------------------------------------- authorizer

class AuthorizerTest : public TokenStoreTest {
 protected:
  void SetUp() override {
    TokenStoreTest::SetUp();
    Write("alice " + Sha256Hex("alice-rw") + "\nalice " + Sha256Hex("alice-ro") + " read\nops " +
          Sha256Hex("ops-admin") + " admin\nprometheus " + Sha256Hex("scrape") + " metrics\n");
    auto store = TokenStore::Open({path_, SimpleTenantRule, 0, nullptr});
    ASSERT_TRUE(store.ok());
    store_ = std::move(*store);
  }
  Authorizer Make(bool tokens, bool certs) {
    AuthorizerOptions o;
    o.tokens = tokens ? store_.get() : nullptr;
    o.client_certificates = certs;
    o.validate_tenant = SimpleTenantRule;
    o.on_failure = [this](AuthFailure r) { failures_[AuthFailureName(r)]++; };
    return Authorizer(std::move(o));
  }
  static CallCredentials Bearer(const std::string& token) {
    CallCredentials c;
    c.authorization = "Bearer " + token;
    return c;
  }

  std::unique_ptr<TokenStore> store_;
  std::map<std::string, int> failures_;
};

TEST_F(AuthorizerTest, OffMeansTheTenantHeaderAsBefore) {
  Authorizer off = Make(false, false);
  EXPECT_FALSE(off.enabled());
  CallCredentials c;
  auto p = off.Authorize(c, TttMethod("Ingest"));
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->tenant, "default");
  c.tenant_header = "bob";
  EXPECT_EQ(off.Authorize(c, TttMethod("Ingest"))->tenant, "bob");
  c.tenant_header = "b/ob";
  EXPECT_EQ(off.Authorize(c, TttMethod("Ingest")).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(AuthorizerTest, BearerTokenNamesTheTenant) {
  Authorizer a = Make(true, false);
  auto p = a.Authorize(Bearer("alice-rw"), TttMethod("Ingest"));
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->tenant, "alice");
  EXPECT_EQ(p->kind, CredentialKind::kBearerToken);
  CallCredentials lower;
  lower.authorization = "bearer alice-rw";  // the scheme is case-insensitive (RFC 7235)
  EXPECT_TRUE(a.Authorize(lower, TttMethod("Score")).ok());
}

TEST_F(AuthorizerTest, MissingUnknownAndMalformedCredentialsAreUnauthenticated) {
  Authorizer a = Make(true, false);
  auto none = a.Authorize(CallCredentials{}, TttMethod("Score"));
  EXPECT_EQ(none.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(std::string(none.status().message()),
              HasSubstr("missing credentials: send 'authorization: Bearer <token>'"));
  auto unknown = a.Authorize(Bearer("alice-rx"), TttMethod("Score"));
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(std::string(unknown.status().message()), HasSubstr("unknown bearer token"));
  EXPECT_THAT(std::string(unknown.status().message()), ::testing::Not(HasSubstr("alice-rx")));
  CallCredentials basic;
  basic.authorization = "Basic YWxpY2U6cHc=";
  auto malformed = a.Authorize(basic, TttMethod("Score"));
  EXPECT_EQ(malformed.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(std::string(malformed.status().message()), HasSubstr("must be 'Bearer <token>'"));
  auto spaces = a.Authorize(Bearer("has space"), TttMethod("Score"));
  EXPECT_THAT(std::string(spaces.status().message()), HasSubstr("characters outside"));
  EXPECT_EQ(failures_["missing_credentials"], 1);
  EXPECT_EQ(failures_["unknown_token"], 1);
  EXPECT_EQ(failures_["malformed_token"], 2);
}

TEST_F(AuthorizerTest, HealthNeedsNoCredentials) {
  Authorizer a = Make(true, true);
  EXPECT_TRUE(a.Authorize(CallCredentials{}, "/grpc.health.v1.Health/Check").ok());
  EXPECT_TRUE(failures_.empty());
}

TEST_F(AuthorizerTest, ReadScopeCannotWrite) {
  Authorizer a = Make(true, false);
  EXPECT_TRUE(a.Authorize(Bearer("alice-ro"), TttMethod("Score")).ok());
  auto ingest = a.Authorize(Bearer("alice-ro"), TttMethod("Ingest"));
  EXPECT_EQ(ingest.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(ingest.status().message()),
              HasSubstr("tenant 'alice' (scope 'read') may not call Ingest: it needs scope "
                        "'write'"));
  auto p = a.Authorize(Bearer("alice-ro"), TttMethod("Generate"));
  ASSERT_TRUE(p.ok());
  absl::Status commit = a.RequireScope(*p, Scope::kWrite, "commit a Generate");
  EXPECT_EQ(commit.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(commit.message()), HasSubstr("may not commit a Generate"));
  EXPECT_EQ(failures_["scope_denied"], 2);
  // Unknown methods need admin.
  EXPECT_EQ(a.Authorize(Bearer("alice-rw"), TttMethod("Shutdown")).status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(a.Authorize(Bearer("ops-admin"), TttMethod("Shutdown")).ok());
}

TEST_F(AuthorizerTest, MetricsScopeScrapesAndNothingElse) {
  Authorizer a = Make(true, false);
  EXPECT_TRUE(a.AuthorizeScrape("Bearer scrape").ok());
  EXPECT_TRUE(a.AuthorizeScrape("Bearer ops-admin").ok());
  absl::Status tenant = a.AuthorizeScrape("Bearer alice-rw");
  EXPECT_EQ(tenant.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(tenant.message()),
              HasSubstr("'alice' (scope 'write') may not read metrics: it needs scope 'metrics'"));
  absl::Status none = a.AuthorizeScrape(std::nullopt);
  EXPECT_EQ(none.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(std::string(none.message()), HasSubstr("with a token of scope 'metrics'"));
  EXPECT_EQ(a.AuthorizeScrape("Bearer nope").code(), absl::StatusCode::kUnauthenticated);
  auto call = a.Authorize(Bearer("scrape"), TttMethod("GetServerInfo"));
  EXPECT_EQ(call.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(call.status().message()),
              HasSubstr("(scope 'metrics') may not call GetServerInfo"));
  EXPECT_EQ(failures_["scope_denied"], 2);
  EXPECT_EQ(failures_["unknown_token"], 1);
  EXPECT_EQ(failures_["missing_credentials"], 1);
}

TEST_F(AuthorizerTest, TenantHeaderMustMatchUnlessAdmin) {
  Authorizer a = Make(true, false);
  CallCredentials c = Bearer("alice-rw");
  c.tenant_header = "alice";
  EXPECT_EQ(a.Authorize(c, TttMethod("ListSessions"))->tenant, "alice");
  c.tenant_header = "bob";
  auto other = a.Authorize(c, TttMethod("ListSessions"));
  EXPECT_EQ(other.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(other.status().message()),
              HasSubstr("x-tenant-id 'bob' does not match the credential's tenant 'alice'"));
  EXPECT_EQ(failures_["tenant_mismatch"], 1);
  CallCredentials admin = Bearer("ops-admin");
  admin.tenant_header = "bob";
  EXPECT_EQ(a.Authorize(admin, TttMethod("DeleteSession"))->tenant, "bob");
  admin.tenant_header = "../etc";
  EXPECT_EQ(a.Authorize(admin, TttMethod("DeleteSession")).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(AuthorizerTest, TokenWithReadAndMetricsScopesReadsAndScrapes) {
  Write("prom " + Sha256Hex("prom-rm") + " read,metrics\n");
  ASSERT_TRUE(store_->Reload().ok());
  Authorizer a = Make(true, false);
  EXPECT_TRUE(a.AuthorizeScrape("Bearer prom-rm").ok());
  EXPECT_TRUE(a.Authorize(Bearer("prom-rm"), TttMethod("Score")).ok());
  auto ingest = a.Authorize(Bearer("prom-rm"), TttMethod("Ingest"));
  EXPECT_THAT(std::string(ingest.status().message()), HasSubstr("(scope 'read,metrics')"));
}

TEST_F(AuthorizerTest, CertificateWithoutPemOrWithoutMutualTlsIsNoCredential) {
  CallCredentials c;
  c.cert_pem = "";
  auto none = Make(true, true).Authorize(c, TttMethod("Score"));
  EXPECT_THAT(std::string(none.status().message()), HasSubstr("missing credentials"));
  c.cert_pem = "-----BEGIN CERTIFICATE-----";
  EXPECT_EQ(Make(true, false).Authorize(c, TttMethod("Score")).status().code(),
            absl::StatusCode::kUnauthenticated);
  auto bad = Make(true, true).Authorize(c, TttMethod("Score"));
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("client certificate refused"));
  EXPECT_EQ(failures_["bad_certificate"], 1);
}

}  // namespace
}  // namespace ttt::auth
