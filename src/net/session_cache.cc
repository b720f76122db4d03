// net/session_cache.cc
#include "ktls/session_cache.h"
#include "net/session_cache_internal.h"

#include <openssl/x509v3.h>

#include <ctime>
#include <deque>
#include <functional>
#include <list>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <utility>

#include "core/errors.h"
#include "core/openssl_ptr.h"

namespace ktls {
namespace {

struct Entry {
  detail::UniqueSession session;
  bool verified = false;
  // scope: the config scope Connect stored it under (detail::SessionKey);
  // none for a session brought in with Put, which any config may resume.
  std::optional<std::string> scope;
};

struct Server {
  std::string key;
  std::deque<Entry> sessions;  // Oldest first.
};

// Expired: past its lifetime, or no longer resumable (OpenSSL marks the
// session of a connection that ended badly, even after it was cached).
bool Expired(const SSL_SESSION* session, std::time_t now) {
  return SSL_SESSION_is_resumable(session) != 1 ||
         now >= static_cast<std::time_t>(SSL_SESSION_get_time(session)) +
                    static_cast<std::time_t>(SSL_SESSION_get_timeout(session));
}

std::string KeyFor(const std::string& host, std::uint16_t port) { return host + ":" + std::to_string(port); }

}  // namespace

struct SessionCache::State {
  std::size_t max_servers;
  std::size_t max_per_server;
  mutable std::mutex mu;
  std::list<Server> servers;  // Most recently used first.
  std::unordered_map<std::string, std::list<Server>::iterator> by_key;
  std::size_t num_sessions = 0;

  // DropExpired removes a server's expired (or spoiled) sessions.
  void DropExpired(std::list<Server>::iterator server, std::time_t now) {
    auto& sessions = server->sessions;
    for (auto it = sessions.begin(); it != sessions.end();) {
      if (Expired(it->session.get(), now)) {
        it = sessions.erase(it);
        --num_sessions;
      } else {
        ++it;
      }
    }
  }
  void EraseIfEmpty(std::list<Server>::iterator server) {
    if (!server->sessions.empty()) return;
    by_key.erase(server->key);
    servers.erase(server);
  }
};

SessionCache::SessionCache(std::size_t max_servers, std::size_t max_per_server)
    : state_(std::make_unique<State>()) {
  state_->max_servers = max_servers == 0 ? 1 : max_servers;
  state_->max_per_server = max_per_server == 0 ? 1 : max_per_server;
}

SessionCache::~SessionCache() = default;

void SessionCache::Put(const std::string& host, std::uint16_t port, SSL_SESSION* session, bool verified) {
  PutScoped(host, port, nullptr, session, verified);
}

SSL_SESSION* SessionCache::Take(const std::string& host, std::uint16_t port, bool only_verified) {
  return TakeScoped(host, port, nullptr, only_verified, nullptr);
}

void SessionCache::PutScoped(const std::string& host, std::uint16_t port, const std::string* scope,
                             SSL_SESSION* session, bool verified) {
  const std::time_t now = std::time(nullptr);
  if (session == nullptr || Expired(session, now)) return;
  if (SSL_SESSION_up_ref(session) != 1) return;
  detail::UniqueSession owned(session);
  std::lock_guard lock(state_->mu);
  State& s = *state_;
  const std::string key = KeyFor(host, port);
  auto found = s.by_key.find(key);
  std::list<Server>::iterator server;
  if (found != s.by_key.end()) {
    server = found->second;
    s.servers.splice(s.servers.begin(), s.servers, server);  // Now the most recently used.
    s.DropExpired(server, now);
  } else {
    s.servers.push_front(Server{key, {}});
    server = s.servers.begin();
    s.by_key.emplace(key, server);
  }
  server->sessions.push_back(
      Entry{std::move(owned), verified, scope != nullptr ? std::optional(*scope) : std::nullopt});
  ++s.num_sessions;
  if (server->sessions.size() > s.max_per_server) {
    server->sessions.pop_front();
    --s.num_sessions;
  }
  while (s.servers.size() > s.max_servers) {
    auto last = std::prev(s.servers.end());
    s.num_sessions -= last->sessions.size();
    s.by_key.erase(last->key);
    s.servers.erase(last);
  }
}

SSL_SESSION* SessionCache::TakeScoped(const std::string& host, std::uint16_t port, const std::string* scope,
                                      bool only_verified, const std::function<bool(SSL_SESSION*)>& usable) {
  std::lock_guard lock(state_->mu);
  State& s = *state_;
  auto found = s.by_key.find(KeyFor(host, port));
  if (found == s.by_key.end()) return nullptr;
  auto server = found->second;
  s.DropExpired(server, std::time(nullptr));
  SSL_SESSION* taken = nullptr;
  auto& sessions = server->sessions;
  for (auto it = sessions.rbegin(); it != sessions.rend(); ++it) {
    if (only_verified && !it->verified) continue;
    if (scope != nullptr && it->scope && *it->scope != *scope) continue;
    if (usable && !usable(it->session.get())) continue;
    if (SSL_SESSION_get_protocol_version(it->session.get()) == TLS1_3_VERSION) {
      taken = it->session.release();  // Used once (RFC 8446 C.4).
      sessions.erase(std::next(it).base());
      --s.num_sessions;
    } else if (SSL_SESSION_up_ref(it->session.get()) == 1) {
      taken = it->session.get();
    }
    break;
  }
  s.EraseIfEmpty(server);
  return taken;
}

std::size_t SessionCache::size() const {
  std::lock_guard lock(state_->mu);
  return state_->num_sessions;
}

}  // namespace ktls

namespace ktls::detail {

// SessionCacheAccess: the client's way into a SessionCache's scoped keys.
struct SessionCacheAccess {
  static void Put(SessionCache& cache, const std::string& host, std::uint16_t port, const std::string& scope,
                  SSL_SESSION* session, bool verified) {
    cache.PutScoped(host, port, &scope, session, verified);
  }
  static SSL_SESSION* Take(SessionCache& cache, const std::string& host, std::uint16_t port,
                           const std::string& scope, bool only_verified,
                           const std::function<bool(SSL_SESSION*)>& usable) {
    return cache.TakeScoped(host, port, &scope, only_verified, usable);
  }
};

namespace {

// CacheTarget: where one SSL's new sessions go.
struct CacheTarget {
  std::shared_ptr<SessionCache> cache;
  SessionKey key;
};

// MatchesName: whether session's server certificate is valid for the name
// (or IP address) a connection verifies. A resumed handshake shows none,
// so a session made for another name must not stand for this one (RFC
// 8446 4.6.1).
bool MatchesName(SSL_SESSION* session, const SessionKey& key) {
  X509* peer = SSL_SESSION_get0_peer(session);
  if (peer == nullptr) return false;
  if (key.verify_ip) return X509_check_ip_asc(peer, key.verify_name.c_str(), 0) == 1;
  return X509_check_host(peer, key.verify_name.data(), key.verify_name.size(), 0, nullptr) == 1;
}

void FreeCacheTarget(void* /*parent*/, void* ptr, CRYPTO_EX_DATA* /*ad*/, int /*idx*/, long /*argl*/,
                     void* /*argp*/) {
  delete static_cast<CacheTarget*>(ptr);
}

int TargetIndex() {
  static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, FreeCacheTarget);
  return index;
}

// StoreNewSession is OpenSSL's new-session callback. It runs inside
// SSL_connect or SSL_read (and inside the ticket relay's SSL_read, for
// tickets the kernel received).
int StoreNewSession(SSL* ssl, SSL_SESSION* session) {
  if (const auto* target = static_cast<CacheTarget*>(SSL_get_ex_data(ssl, TargetIndex()))) {
    const SessionKey& key = target->key;
    SessionCacheAccess::Put(*target->cache, key.host, key.port, key.scope, session, key.verify);
  }
  return 0;  // The cache took its own reference; OpenSSL keeps its own.
}

}  // namespace

void EnableClientSessions(SSL_CTX* ctx) {
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
  SSL_CTX_sess_set_new_cb(ctx, StoreNewSession);
}

Result<void> UseSessionCache(SSL* ssl, std::shared_ptr<SessionCache> cache, SessionKey key) {
  if (TargetIndex() < 0) return OpenSslError(ErrorCategory::kInternal, "SSL_get_ex_new_index");
  const auto usable = [&key](SSL_SESSION* session) { return !key.verify || MatchesName(session, key); };
  if (SSL_SESSION* session = SessionCacheAccess::Take(*cache, key.host, key.port, key.scope, key.verify, usable)) {
    const int set = SSL_set_session(ssl, session);
    SSL_SESSION_free(session);
    if (set != 1) return OpenSslError(ErrorCategory::kInternal, "SSL_set_session");
  }
  auto target = std::make_unique<CacheTarget>(CacheTarget{std::move(cache), std::move(key)});
  if (SSL_set_ex_data(ssl, TargetIndex(), target.get()) != 1) {
    return OpenSslError(ErrorCategory::kInternal, "SSL_set_ex_data");
  }
  target.release();  // Freed with ssl (FreeCacheTarget).
  return {};
}

}  // namespace ktls::detail
