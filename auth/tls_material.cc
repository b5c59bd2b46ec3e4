// See tls_material.h.
#include "auth/tls_material.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "auth/internal/openssl_util.h"
#include "util/log.h"
#include "util/status_macros.h"

namespace ttt::auth {
namespace {

namespace fs = std::filesystem;

using internal::MemoryBio;
using internal::NameDer;
using internal::OpenSslPtr;
using internal::SerialHex;
using Certificates = std::vector<OpenSslPtr<X509>>;

absl::Status Bad(absl::string_view flag, const std::string& path, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(flag, "=", path, ": ", why));
}

// Every certificate of a PEM text; INVALID_ARGUMENT when there is none or one does not parse.
absl::StatusOr<Certificates> ReadCertificates(const std::string& text, absl::string_view flag,
                                              const std::string& path) {
  if (text.find("-----BEGIN ") == std::string::npos) {
    return Bad(flag, path, "not a PEM file (no '-----BEGIN' line)");
  }
  Certificates out;
  auto bio = MemoryBio(text);
  while (X509* cert = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) {
    out.emplace_back(cert);
  }
  const unsigned long err = ERR_peek_last_error();
  ERR_clear_error();
  // The loop ends at the end of the text (PEM_R_NO_START_LINE) or at a block that is broken.
  if (out.empty() || (err != 0 && ERR_GET_REASON(err) != PEM_R_NO_START_LINE)) {
    return Bad(flag, path, "a certificate in it does not parse");
  }
  return out;
}

absl::StatusOr<std::string> Read(const std::string& path, absl::string_view flag) {
  auto text = internal::ReadConfigFile(path, "file");
  if (!text.ok()) return Bad(flag, path, text.status().message());
  return text;
}

// The revoked (issuer, serial) pairs of every CRL in `text`; each CRL must be signed by a CA
// of `cas` whose subject is its issuer.
absl::StatusOr<std::set<std::pair<std::string, std::string>>> ReadCrls(const std::string& text,
                                                                       const Certificates& cas,
                                                                       const std::string& path) {
  constexpr absl::string_view kFlag = "--tls_crl_file";
  std::set<std::pair<std::string, std::string>> revoked;
  auto bio = MemoryBio(text);
  int count = 0;
  while (X509_CRL* raw = PEM_read_bio_X509_CRL(bio.get(), nullptr, nullptr, nullptr)) {
    OpenSslPtr<X509_CRL> crl(raw);
    ++count;
    bool signed_by_a_ca = false;
    for (const auto& ca : cas) {
      if (X509_NAME_cmp(X509_get_subject_name(ca.get()), X509_CRL_get_issuer(crl.get())) == 0 &&
          X509_CRL_verify(crl.get(), X509_get0_pubkey(ca.get())) == 1) {
        signed_by_a_ca = true;
      }
    }
    if (!signed_by_a_ca) {
      return Bad(kFlag, path,
                 absl::StrCat("CRL ", count,
                              " is not signed by a CA of "
                              "--tls_client_ca_file"));
    }
    const std::string issuer = NameDer(X509_CRL_get_issuer(crl.get()));
    STACK_OF(X509_REVOKED)* entries = X509_CRL_get_REVOKED(crl.get());
    for (int i = 0; entries != nullptr && i < sk_X509_REVOKED_num(entries); ++i) {
      const X509_REVOKED* entry = sk_X509_REVOKED_value(entries, i);
      revoked.emplace(issuer, SerialHex(X509_REVOKED_get0_serialNumber(entry)));
    }
  }
  const unsigned long err = ERR_peek_last_error();
  ERR_clear_error();
  if (count == 0 || (err != 0 && ERR_GET_REASON(err) != PEM_R_NO_START_LINE)) {
    return Bad(kFlag, path, "no CRL in it, or a CRL that does not parse (PEM 'X509 CRL')");
  }
  return revoked;
}

absl::Status CheckKeyMatches(const std::string& key_text, X509* leaf, const std::string& path) {
  auto bio = MemoryBio(key_text);
  OpenSslPtr<EVP_PKEY> key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  ERR_clear_error();
  if (key == nullptr) return Bad("--tls_key_file", path, "not a PEM private key");
  if (X509_check_private_key(leaf, key.get()) != 1) {
    ERR_clear_error();
    return Bad("--tls_key_file", path,
               "the key does not match --tls_cert_file's certificate (a rotation that replaced "
               "one without the other?)");
  }
  return absl::OkStatus();
}

// Writes `text` to `path` through a temporary file and rename, so a reader sees the old or the
// new file, never a part.
absl::Status WriteStaged(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    if (!out.flush()) return absl::InternalError(absl::StrCat("cannot write ", tmp));
  }
  ::chmod(tmp.c_str(), 0600);
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot rename ", tmp, ": ", ec.message()));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<TlsMaterial>> TlsMaterial::Open(TlsMaterialOptions options) {
  if (!options.crl_file.empty() && options.client_ca_file.empty()) {
    return absl::InvalidArgumentError(
        "--tls_crl_file revokes client certificates: it needs --tls_client_ca_file");
  }
  std::unique_ptr<TlsMaterial> m(new TlsMaterial(std::move(options)));
  const char* tmp = std::getenv("TMPDIR");
  std::string dir_template =
      absl::StrCat(tmp != nullptr && *tmp ? tmp : "/tmp", "/ttt-serve-tls-XXXXXX");
  if (::mkdtemp(dir_template.data()) == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot make the TLS staging folder ", dir_template, " (set TMPDIR)"));
  }
  m->staging_dir_ = dir_template;
  RETURN_IF_ERROR(m->Load());
  const int poll_ms = m->options_.poll_interval_ms;
  if (poll_ms > 0) {
    for (const std::string* path : {&m->options_.cert_file, &m->options_.key_file,
                                    &m->options_.client_ca_file, &m->options_.crl_file}) {
      if (path->empty()) continue;
      m->watchers_.push_back(std::make_unique<internal::FileWatcher>(
          *path, poll_ms, [raw = m.get()] { raw->Reload().IgnoreError(); }));
    }
  }
  return m;
}

TlsMaterial::~TlsMaterial() {
  watchers_.clear();  // no Load runs past this point
  std::error_code ec;
  fs::remove_all(staging_dir_, ec);
}

std::string TlsMaterial::staged_client_ca_file() const {
  return mutual() ? staging_dir_ + "/ca.crt" : "";
}

absl::Status TlsMaterial::Load() {
  std::lock_guard<std::mutex> one_at_a_time(load_mu_);
  const TlsMaterialOptions& o = options_;
  ASSIGN_OR_RETURN(auto cert_text, Read(o.cert_file, "--tls_cert_file"));
  ASSIGN_OR_RETURN(auto key_text, Read(o.key_file, "--tls_key_file"));
  ASSIGN_OR_RETURN(auto chain, ReadCertificates(cert_text, "--tls_cert_file", o.cert_file));
  RETURN_IF_ERROR(CheckKeyMatches(key_text, chain.front().get(), o.key_file));
  std::string ca_text;
  Revoked revoked;
  if (mutual()) {
    ASSIGN_OR_RETURN(ca_text, Read(o.client_ca_file, "--tls_client_ca_file"));
    ASSIGN_OR_RETURN(auto cas, ReadCertificates(ca_text, "--tls_client_ca_file", o.client_ca_file));
    if (!o.crl_file.empty()) {
      ASSIGN_OR_RETURN(auto crl_text, Read(o.crl_file, "--tls_crl_file"));
      ASSIGN_OR_RETURN(revoked, ReadCrls(crl_text, cas, o.crl_file));
    }
  }
  // Key first, then the certificate: the provider re-reads both every refresh.
  absl::Status staged = WriteStaged(staged_key_file(), key_text);
  if (staged.ok()) staged = WriteStaged(staged_cert_file(), cert_text);
  if (staged.ok() && mutual()) staged = WriteStaged(staged_client_ca_file(), ca_text);
  if (!staged.ok()) return staged;
  auto fresh = std::make_shared<const Revoked>(std::move(revoked));
  std::lock_guard<std::mutex> lock(mu_);
  revoked_ = std::move(fresh);
  return absl::OkStatus();
}

absl::Status TlsMaterial::Reload() {
  absl::Status st = Load();
  if (st.ok()) {
    util::LogInfo("tls", "reloaded the TLS files",
                  {{"revoked_certificates", static_cast<int64_t>(revoked_count())}});
  } else {
    failed_reloads_.fetch_add(1);
    util::LogError("tls", absl::StrCat("keeping the last good TLS files: ", st.message()));
  }
  if (options_.on_reload) options_.on_reload(st.ok());
  return st;
}

bool TlsMaterial::IsRevoked(absl::string_view issuer_der, absl::string_view serial_hex) const {
  std::shared_ptr<const Revoked> revoked;
  {
    std::lock_guard<std::mutex> lock(mu_);
    revoked = revoked_;
  }
  return revoked != nullptr &&
         revoked->count({std::string(issuer_der), std::string(serial_hex)}) > 0;
}

size_t TlsMaterial::revoked_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return revoked_ == nullptr ? 0 : revoked_->size();
}

}  // namespace ttt::auth
