// See token_store.h.
#include "auth/token_store.h"

#include <sys/stat.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "auth/internal/constant_time.h"
#include "session/internal/sha256.h"

namespace ttt::auth {
namespace {

std::atomic<uint64_t> g_sighups{0};

void OnSighup(int) { g_sighups.fetch_add(1, std::memory_order_relaxed); }

// Device, inode, size and change times: any rewrite or rename over the path changes one.
std::string FileIdentity(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return "missing";
  return absl::StrCat(st.st_dev, ":", st.st_ino, ":", st.st_size, ":", st.st_mtim.tv_sec, ".",
                      st.st_mtim.tv_nsec, ":", st.st_ctim.tv_sec, ".", st.st_ctim.tv_nsec);
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int err = errno;
    const std::string why = absl::StrCat("cannot read the tokens file ", path, ": ",
                                         std::strerror(err));
    if (err == ENOENT) return absl::NotFoundError(why);
    if (err == EACCES) return absl::PermissionDeniedError(why);
    return absl::FailedPreconditionError(why);
  }
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

void InstallSighupReload() {
  struct sigaction sa;
  std::memset(&sa, 0, sizeof(sa));
  sa.sa_handler = OnSighup;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGHUP, &sa, nullptr);
}

uint64_t SighupCount() { return g_sighups.load(std::memory_order_relaxed); }

absl::StatusOr<std::unique_ptr<TokenStore>> TokenStore::Open(TokenStoreOptions options) {
  std::unique_ptr<TokenStore> store(new TokenStore(std::move(options)));
  store->seen_sighups_ = SighupCount();
  store->file_identity_ = FileIdentity(store->options_.path);
  absl::Status loaded = store->Load();
  if (!loaded.ok()) return loaded;
  if (store->options_.poll_interval_ms > 0) {
    store->watcher_ = std::thread([raw = store.get()] { raw->WatchLoop(); });
  }
  return store;
}

TokenStore::~TokenStore() {
  {
    std::lock_guard<std::mutex> lock(stop_mu_);
    stop_ = true;
  }
  stop_cv_.notify_all();
  if (watcher_.joinable()) watcher_.join();
}

absl::Status TokenStore::Load() {
  auto text = ReadFile(options_.path);
  if (!text.ok()) return text.status();
  auto entries = internal::ParseTokensFile(*text, options_.path, options_.validate_tenant);
  if (!entries.ok()) return entries.status();
  auto fresh = std::make_shared<const std::vector<internal::TokenEntry>>(std::move(*entries));
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
    std::fprintf(stderr, "ttt-serve: auth: reloaded %s (%zu credentials)\n",
                 options_.path.c_str(), credential_count());
  } else {
    failed_reloads_.fetch_add(1);
    std::fprintf(stderr, "ttt-serve: auth: keeping the last good credentials (%zu): %s\n",
                 credential_count(), std::string(st.message()).c_str());
  }
  if (options_.on_reload) options_.on_reload(st.ok());
  return st;
}

size_t TokenStore::credential_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_ ? entries_->size() : 0;
}

std::optional<TokenPrincipal> TokenStore::Lookup(absl::string_view token) const {
  session::internal::Sha256 hasher;
  hasher.Update(token.data(), token.size());
  const internal::Digest digest = hasher.Final();
  std::shared_ptr<const std::vector<internal::TokenEntry>> entries;
  {
    std::lock_guard<std::mutex> lock(mu_);
    entries = entries_;
  }
  const internal::TokenEntry* match = nullptr;
  for (const internal::TokenEntry& e : *entries) {  // every entry: no early exit
    const bool equal =
        internal::ConstantTimeEquals(e.token_sha256.data(), digest.data(), digest.size());
    if (equal) match = &e;
  }
  if (match == nullptr) return std::nullopt;
  return TokenPrincipal{match->tenant, match->scope};
}

void TokenStore::WatchLoop() {
  std::unique_lock<std::mutex> lock(stop_mu_);
  while (!stop_) {
    stop_cv_.wait_for(lock, std::chrono::milliseconds(options_.poll_interval_ms));
    if (stop_) break;
    lock.unlock();
    const uint64_t sighups = SighupCount();
    std::string identity = FileIdentity(options_.path);
    if (sighups != seen_sighups_ || identity != file_identity_) {
      seen_sighups_ = sighups;
      file_identity_ = std::move(identity);
      Reload().IgnoreError();  // logged; the last good credentials stay
    }
    lock.lock();
  }
}

}  // namespace ttt::auth
