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

// UseSessionCache attaches cache to ssl under host:port: the session to
// resume, if the cache has one, is set on ssl, and the sessions ssl gets
// go into the cache (marked verified when verify is on). ssl's context
// must have EnableClientSessions.
Result<void> UseSessionCache(SSL* ssl, std::shared_ptr<SessionCache> cache, const std::string& host,
                             std::uint16_t port, bool verify);

}  // namespace ktls::detail

#endif  // KTLS_SRC_NET_SESSION_CACHE_INTERNAL_H_
