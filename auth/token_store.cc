// See token_store.h.
#include "auth/token_store.h"

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "auth/internal/constant_time.h"
#include "util/log.h"
#include "util/sha256.h"
#include "util/status_macros.h"

namespace ttt::auth {

absl::StatusOr<std::unique_ptr<TokenStore>> TokenStore::Open(TokenStoreOptions options) {
  std::unique_ptr<TokenStore> store(new TokenStore(std::move(options)));
  const int poll_ms = store->options_.poll_interval_ms;
  if (poll_ms > 0) {  // before the load: a change during it is seen at the next poll
    store->watcher_ =
        std::make_unique<internal::FileWatcher>(store->options_.path, poll_ms, [raw = store.get()] {
          raw->Reload().IgnoreError();  // logged; the last good credentials stay
        });
  }
  RETURN_IF_ERROR(store->Load());
  return store;
}

absl::Status TokenStore::Load() {
  ASSIGN_OR_RETURN(auto text, internal::ReadConfigFile(options_.path, "tokens file"));
  auto entries = internal::ParseTokensFile(text, options_.path, options_.validate_tenant);
  if (!entries.ok()) return entries.status();
  auto fresh = std::make_shared<const internal::CredentialsFile>(std::move(*entries));
  {
    std::lock_guard<std::mutex> lock(mu_);
    entries_ = std::move(fresh);
  }
  generation_.fetch_add(1);
  return absl::OkStatus();
}

absl::Status TokenStore::Reload() {
  absl::Status st = Load();
  if (st.ok()) {
    util::LogInfo(
        "auth", "reloaded the credentials",
        {{"path", options_.path}, {"credentials", static_cast<int64_t>(credential_count())}});
  } else {
    failed_reloads_.fetch_add(1);
    util::LogError(
        "auth", absl::StrCat("keeping the last good credentials: ", st.message()),
        {{"path", options_.path}, {"credentials", static_cast<int64_t>(credential_count())}});
  }
  if (options_.on_reload) options_.on_reload(st.ok());
  return st;
}

size_t TokenStore::credential_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_ ? entries_->tokens.size() + entries_->certificates.size() : 0;
}

std::optional<TokenPrincipal> TokenStore::Lookup(absl::string_view token) const {
  util::Sha256 hasher;
  hasher.Update(token.data(), token.size());
  const internal::Digest digest = hasher.Final();
  std::shared_ptr<const internal::CredentialsFile> entries;
  {
    std::lock_guard<std::mutex> lock(mu_);
    entries = entries_;
  }
  const internal::TokenEntry* match = nullptr;
  for (const internal::TokenEntry& e : entries->tokens) {  // every entry: no early exit
    const bool equal =
        internal::ConstantTimeEquals(e.token_sha256.data(), digest.data(), digest.size());
    if (equal) match = &e;
  }
  if (match == nullptr) return std::nullopt;
  return TokenPrincipal{match->tenant, match->scopes};
}

std::optional<TokenPrincipal> TokenStore::LookupCertificate(absl::string_view identity) const {
  std::shared_ptr<const internal::CredentialsFile> entries;
  {
    std::lock_guard<std::mutex> lock(mu_);
    entries = entries_;
  }
  for (const internal::CertificateEntry& e : entries->certificates) {
    if (e.identity == identity) return TokenPrincipal{e.tenant, e.scopes};
  }
  return std::nullopt;
}

}  // namespace ttt::auth
