// ktls/handshake.h: a handshake that never blocks, for event loops (epoll,
// poll, libuv, Asio: see ktls/asio.h).
//
//   auto hs = server_context.StartHandshake(accepted_fd);  // now non-blocking
//   for (;;) {                                        // (really: your loop)
//     auto wait = hs->Step();
//     if (!wait.ok()) break;                          // failed; fd closes with hs
//     if (*wait == ktls::Wait::kNone) break;          // done
//     ... wait until hs->fd() is readable or writable, as *wait says,
//     ... or until hs->deadline(), then call Step again
//   }
//   auto conn = hs->Finish();                         // offloaded, non-blocking
#ifndef KTLS_HANDSHAKE_H_
#define KTLS_HANDSHAKE_H_

#include <openssl/ssl.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "ktls/client.h"
#include "ktls/connection.h"
#include "ktls/export.h"
#include "ktls/result.h"

namespace ktls {

class PendingHandshake;
class ServerContext;
namespace detail {
struct PendingHandshakeImpl;
Result<Connection> FinishBlocking(PendingHandshake handshake);
// For ktls/asio.h, whose stream watches the socket from before the
// handshake starts: ServerContext::StartHandshake and StartClientHandshake
// (port from the peer's address) on a socket the caller has made
// non-blocking, that, when they fail, leave the socket open and the
// caller's, so that the watch can end before it is closed.
KTLS_API Result<PendingHandshake> StartServerHandshakeKeepingSocket(const ServerContext& context, int socket);
KTLS_API Result<PendingHandshake> StartClientHandshakeKeepingSocket(int socket, const std::string& host,
                                                                    const ClientConfig& config);
}  // namespace detail

// PendingHandshake: a TLS handshake in progress on a non-blocking socket.
// Move-only; owns the socket until Finish hands it to the Connection.
class KTLS_API PendingHandshake {
 public:
  PendingHandshake(PendingHandshake&&) noexcept;
  PendingHandshake& operator=(PendingHandshake&&) noexcept;
  // ~PendingHandshake closes the socket of an unfinished handshake (after a
  // failed one, reading what the peer still sent, without waiting, so that
  // our alert is not overtaken by a reset).
  ~PendingHandshake();

  // Step runs the handshake as far as it can go without blocking. It
  // returns the readiness to wait for before calling Step again
  // (Wait::kReadable or Wait::kWritable), or Wait::kNone when the handshake
  // is complete: then call Finish. A failed handshake (the peer's alert, a
  // protocol error, the deadline passed: ETIMEDOUT) is an Error; the
  // socket's write side is shut after OpenSSL's alert, and later calls fail
  // with kClosed. Right after sending a flight, Step asks for readability
  // without another read (the answer cannot be there yet) when its last
  // read emptied the socket's queue: an edge-triggered loop gets an edge
  // for whatever the peer sends next.
  Result<Wait> Step();

  // Finish offloads the completed handshake (as OffloadSsl does, with the
  // context's OffloadOptions) and returns the Connection, which owns the
  // socket; the socket stays non-blocking. Fails with kUsage before Step
  // returned Wait::kNone. A Finish that fails (kUsage, or out of memory)
  // has offloaded nothing and leaves the socket open until the
  // PendingHandshake is destroyed, so a loop can stop watching it first.
  Result<Connection> Finish();

  // fd is the socket, to wait on.
  int fd() const noexcept;

  // deadline: when the handshake timeout runs out; Step fails with
  // ETIMEDOUT from then on. time_point::max() when there is no timeout. The
  // loop must arrange to call Step (or drop the handshake) by then: a peer
  // that goes silent never makes the socket ready.
  std::chrono::steady_clock::time_point deadline() const noexcept;

  explicit PendingHandshake(std::unique_ptr<detail::PendingHandshakeImpl> impl);

 private:
  friend Result<Connection> detail::FinishBlocking(PendingHandshake handshake);
  std::unique_ptr<detail::PendingHandshakeImpl> impl_;
};

// StartClientHandshake takes ownership of a socket connected (or, when
// non-blocking, connecting) to a TLS server, makes it non-blocking, and
// returns the client handshake to drive with Step. host is the name to send
// as SNI and to verify, as for Connect; host and port name the server in
// ClientConfig::session_cache.
KTLS_API Result<PendingHandshake> StartClientHandshake(int socket, const std::string& host, std::uint16_t port,
                                                       const ClientConfig& config);
// StartClientHandshake without a port takes it from the socket's peer
// address; a socket still connecting has none yet, and then the
// connection neither resumes nor stores sessions.
KTLS_API Result<PendingHandshake> StartClientHandshake(int socket, const std::string& host,
                                                       const ClientConfig& config);

}  // namespace ktls

#endif  // KTLS_HANDSHAKE_H_
