// tools/ktls-proxy/endpoint.h: one side of a proxied connection, a plain TCP
// socket (the backend) or a TLS connection (the client; the backend with
// --backend-tls), and the one set of calls the relay makes on either:
// read, write, splice to and from a pipe, half-close, reset.
#ifndef KTLS_TOOLS_KTLS_PROXY_ENDPOINT_H_
#define KTLS_TOOLS_KTLS_PROXY_ENDPOINT_H_

#include <cstddef>
#include <optional>
#include <span>
#include <string>

#include "ktls-proxy/unique_fd.h"
#include "ktls/connection.h"
#include "ktls/result.h"

namespace ktls::proxy {

// Transfer: what one call on an Endpoint did.
struct Transfer {
  std::size_t bytes = 0;   // Moved.
  std::size_t copied = 0;  // Of them, how many passed through this process.
  // eof: the source ended cleanly (a FIN on a plain socket, close_notify on
  // TLS), or, with truncated, a TLS peer closed TCP without close_notify.
  bool eof = false;
  bool truncated = false;
  bool would_block = false;
  ktls::Wait wait = ktls::Wait::kNone;  // With would_block: what to wait for.
  std::optional<ktls::Error> error;     // The endpoint failed; it is dead.
};

class Endpoint {
 public:
  Endpoint() = default;
  // Plain takes ownership of a connected, non-blocking TCP socket.
  static Endpoint Plain(UniqueFd fd);
  // Tls takes a non-blocking, handshaken connection.
  static Endpoint Tls(ktls::Connection conn);

  bool open() const noexcept { return fd() >= 0; }
  bool tls() const noexcept { return tls_; }
  int fd() const noexcept;
  // connection: the TLS connection (tls() only).
  ktls::Connection& connection() noexcept { return conn_; }
  const ktls::Connection& connection() const noexcept { return conn_; }

  // Read and Write move bytes through memory (a direction in OpenSSL copies
  // anyway; --copy copies every direction).
  Transfer Read(std::span<std::byte> buf);
  Transfer Write(std::span<const std::byte> data);
  // SpliceRead moves up to len bytes into a pipe (pipe_fd: its write end),
  // SpliceWrite up to len bytes from a pipe (its read end), by splice(2)
  // where the bytes are plaintext in the kernel (a plain socket, or a kTLS
  // direction; a direction in OpenSSL copies, Transfer::copied). would_block
  // with Wait::kPipe: the pipe is full, or not empty for a TLS SpliceRead
  // (SpliceRead), or empty (SpliceWrite).
  Transfer SpliceRead(int pipe_fd, std::size_t len);
  Transfer SpliceWrite(int pipe_fd, std::size_t len);
  // Flush sends what a TLS connection took and holds (SpliceWrite with TX
  // in OpenSSL, when the socket was full): would_block until it could.
  Transfer Flush();

  // ShutdownWrite ends what this side sends: close_notify then a FIN on
  // TLS, a FIN on a plain socket. with_close_notify false sends only the
  // FIN, to pass on a peer's truncation as one. would_block: wait, call
  // again.
  Transfer ShutdownWrite(bool with_close_notify);
  // Reset closes with a TCP reset (SO_LINGER 0), to pass a reset on.
  void Reset();
  // Close closes at once (a TLS connection: without lingering).
  void Close();

 private:
  bool tls_ = false;
  UniqueFd plain_;
  ktls::Connection conn_;
};

// IsReset: the error is the peer's TCP reset (or a write after it).
bool IsReset(const ktls::Error& error);

}  // namespace ktls::proxy

#endif  // KTLS_TOOLS_KTLS_PROXY_ENDPOINT_H_
