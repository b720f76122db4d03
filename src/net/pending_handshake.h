// net/pending_handshake.h: the state behind ktls::PendingHandshake, and the
// blocking driver the Listener and Connect run it with.
#ifndef KTLS_SRC_NET_PENDING_HANDSHAKE_H_
#define KTLS_SRC_NET_PENDING_HANDSHAKE_H_

#include <chrono>
#include <cstdint>

#include "core/openssl_ptr.h"
#include "core/unique_fd.h"
#include "ktls/handshake.h"
#include "ktls/offload.h"

namespace ktls::detail {

struct PendingHandshakeImpl {
  // kSettling: OpenSSL is done; the BIO still sends or takes bytes.
  enum class State : std::uint8_t { kRunning, kSettling, kDone, kFailed, kFinished };

  UniqueFd socket;
  UniqueSsl ssl;  // Prepared (PrepareSsl), in accept or connect state.
  bool is_server = false;
  bool blocking = false;  // HandshakeWaits::kInside.
  OffloadOptions offload;
  std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();
  State state = State::kRunning;

  ~PendingHandshakeImpl();
};

// HandshakeWaits: who waits for the socket during the handshake.
enum class HandshakeWaits : std::uint8_t {
  kOutside,  // The caller's event loop: the socket is made non-blocking,
             // and Step says what to wait for.
  kOutsideNonBlocking,  // As kOutside, on a socket the caller has made
                        // non-blocking already (ktls/asio.h).
  kInside,   // The BIO itself (poll), on a socket left as it was: the
             // blocking Listener::Handshake, ServerContext::Handshake and
             // Connect. The timeout counts from the first wait.
};

// NewPendingHandshake wraps socket with ssl (and, kOutside, makes it
// non-blocking); on failure socket is left open, with the caller.
Result<PendingHandshake> NewPendingHandshake(UniqueFd&& socket, UniqueSsl ssl, bool is_server,
                                             const OffloadOptions& offload, std::chrono::milliseconds timeout,
                                             HandshakeWaits waits);

// FinishBlocking drives a handshake to its end and returns the offloaded
// Connection. A kOutside handshake's socket is made blocking again; a
// kInside one's is left as the caller made it. A server that failed
// lingers a moment so the client reads our alert.
Result<Connection> FinishBlocking(PendingHandshake handshake);

}  // namespace ktls::detail

#endif  // KTLS_SRC_NET_PENDING_HANDSHAKE_H_
