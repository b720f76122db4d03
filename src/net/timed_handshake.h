// net/timed_handshake.h: a TLS handshake bounded by a deadline.
#ifndef KTLS_SRC_NET_TIMED_HANDSHAKE_H_
#define KTLS_SRC_NET_TIMED_HANDSHAKE_H_

#include <openssl/ssl.h>

#include <chrono>

#include "ktls/result.h"

namespace ktls::detail {

// RunHandshake drives SSL_accept (is_server) or SSL_connect on ssl, whose
// socket is fd, until the handshake is done. A non-zero timeout bounds the
// whole handshake, not each read: a peer that sends a byte now and then
// cannot hold the caller past it. Meanwhile fd is non-blocking, and every
// wait is a poll() for what is left of the time; fd's flags are restored
// before returning. Zero: no limit.
//
// Returns the error that ended the handshake (SslCallError's), or kIo with
// ETIMEDOUT when the time ran out.
Result<void> RunHandshake(SSL* ssl, int fd, bool is_server, std::chrono::milliseconds timeout);

}  // namespace ktls::detail

#endif  // KTLS_SRC_NET_TIMED_HANDSHAKE_H_
