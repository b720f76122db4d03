// net/handshake_bio.h: the BIO a PendingHandshake runs OpenSSL's handshake
// through, built to make as few system calls as the handshake allows
// without ever reading a byte past the handshake's end.
//
// OpenSSL without read-ahead reads each record in two calls (its header,
// then its body); with read-ahead it would read past the last handshake
// record into the peer's first application records, which must stay in the
// socket for the kernel (TLS_RX). This BIO reads a whole flight in one call
// instead, and leaves the kernel what follows:
//
//  - Until we have sent anything, nothing the peer sends can follow the
//    handshake (its last flight answers ours), so what it sent is read.
//  - From our first send on, the socket is only peeked (MSG_PEEK): OpenSSL
//    is served from the peeked bytes, and only the bytes it took are then
//    read from the socket for good, before the next peek and when the
//    handshake ends (SettleHandshakeBio).
//
// Output waits in the BIO until OpenSSL needs the peer's answer (a read the
// BIO cannot serve) or the handshake ends or fails: a flight and the session
// tickets after it leave in as few sends as possible (OpenSSL flushes after
// each ticket). Nothing is held back while the handshake waits for the peer.
//
// In blocking mode the BIO waits itself (poll, never past the deadline), so
// the socket stays as the caller made it; otherwise a read or write that
// would block sets OpenSSL's retry flags, as a non-blocking socket BIO does.
// Right after a flight has gone, the peer's answer cannot be there yet: the
// blocking BIO waits before it reads, and a non-blocking one asks the loop
// to wait for readability without trying a read that would fail, when its
// last read left the socket's queue empty and no wait for room came since
// (so anything the peer sent since is a new edge for an edge-triggered
// loop). One exception: a FIN (or urgent byte) that came in with the last
// bytes read is not seen until the deadline by an edge-triggered loop that
// does not re-arm; such a peer cannot finish the handshake anyway.
// Sends never raise SIGPIPE. The BIO does not own the socket.
#ifndef KTLS_SRC_NET_HANDSHAKE_BIO_H_
#define KTLS_SRC_NET_HANDSHAKE_BIO_H_

#include <openssl/bio.h>

#include <chrono>

namespace ktls::detail {

// NewHandshakeBio returns a BIO over fd, or nullptr if out of memory.
// blocking: wait inside the BIO, for timeout at most (zero: no limit)
// counted from its first wait (a wait past it fails with ETIMEDOUT).
BIO* NewHandshakeBio(int fd, bool blocking, std::chrono::milliseconds timeout);

// SettleHandshakeBio, once SSL_do_handshake has returned 1: takes the
// bytes OpenSSL read out of the socket, so that the socket holds exactly
// what follows the handshake, and sends what is still buffered. Returns 0
// when done, -EAGAIN when a send would block (call again once writable;
// never in blocking mode), or -errno: -EPROTO if the peer sent bytes before
// the handshake let it that OpenSSL never read (they cannot be given back).
// only_tickets_left (a TLS 1.3 server: what is left are its session
// tickets): a peer that already closed (EPIPE, ECONNRESET) is not an error,
// and the tickets are dropped, as OpenSSL does.
int SettleHandshakeBio(BIO* bio, bool only_tickets_left);

// FlushHandshakeBio sends what is buffered, as far as the socket takes it
// (blocking, waiting for room until the deadline): the alert of a
// handshake that failed.
void FlushHandshakeBio(BIO* bio);

}  // namespace ktls::detail

#endif  // KTLS_SRC_NET_HANDSHAKE_BIO_H_
