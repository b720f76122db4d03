// net/session_cache_internal.h: how a client SSL resumes from, and stores
// into, a ktls::SessionCache.
#ifndef KTLS_SRC_NET_SESSION_CACHE_INTERNAL_H_
#define KTLS_SRC_NET_SESSION_CACHE_INTERNAL_H_

#include <openssl/ssl.h>

#include <cstdint>
#include <memory>
#include <string>

#include "ktls/result.h"
#include "ktls/session_cache.h"

namespace ktls::detail {

// EnableClientSessions makes ctx hand every new client session to the
// SessionCache attached to its SSL (and keep none in OpenSSL's own store).
void EnableClientSessions(SSL_CTX* ctx);

// SessionKey: which of a cache's sessions a client connection may resume,
// and where the sessions it gets go.
struct SessionKey {
  std::string host;
  std::uint16_t port = 0;
  // scope: what else decides whom the connection authenticates, and as
  // whom (the name verified where it is not host, the CA file, the client
  // certificate), each field length-prefixed; empty when none is set. Only
  // sessions stored under the same scope, or brought in with
  // SessionCache::Put, are resumed.
  std::string scope;
  // verify: only sessions whose handshake verified the server, and whose
  // certificate matches verify_name (a DNS name, or an IP address when
  // verify_ip).
  bool verify = false;
  std::string verify_name;
  bool verify_ip = false;
};

// UseSessionCache attaches cache to ssl under key: the session to resume,
// if the cache has one, is set on ssl, and the sessions ssl gets go into
// the cache (marked verified when key.verify). ssl's context must have
// EnableClientSessions.
Result<void> UseSessionCache(SSL* ssl, std::shared_ptr<SessionCache> cache, SessionKey key);

}  // namespace ktls::detail

#endif  // KTLS_SRC_NET_SESSION_CACHE_INTERNAL_H_
