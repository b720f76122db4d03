// tools/ktls-proxy/backend.h: where ktls-proxy forwards to: the backend's
// address (resolved once, at start-up), a non-blocking connect to it, and
// with --backend-tls the client side of TLS (one OpenSSL context for every
// connection, ktls's non-blocking client handshake, then offload).
#ifndef KTLS_TOOLS_KTLS_PROXY_BACKEND_H_
#define KTLS_TOOLS_KTLS_PROXY_BACKEND_H_

#include <openssl/ssl.h>
#include <sys/socket.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "ktls-proxy/options.h"
#include "ktls-proxy/unique_fd.h"
#include "ktls/client.h"
#include "ktls/handshake.h"

namespace ktls::proxy {

class Backend {
 public:
  // Create resolves options.backend and, with --backend-tls, makes the TLS
  // context (the CAs of --backend-ca or the system's, verification unless
  // --backend-insecure). on_fallback goes to the backend connections'
  // OffloadOptions. nullopt and `error` on failure.
  static std::optional<Backend> Create(const ProxyOptions& options,
                                       std::function<void(const ktls::OffloadReport&)> on_fallback,
                                       std::string& error);

  // StartConnect opens a non-blocking socket and starts connecting it.
  // connected: done already; otherwise wait until it is writable and ask
  // ConnectError. A negative error (-errno) when it failed at once.
  struct Connecting {
    UniqueFd fd;
    bool connected = false;
    int error = 0;  // errno, when it failed.
  };
  Connecting StartConnect() const;
  // ConnectError: after the socket became writable, 0 once connected, or
  // the errno that ended the attempt (ECONNREFUSED, ...).
  static int ConnectError(int fd);

  bool tls() const noexcept { return tls_; }
  // StartTls runs the client handshake on a connected socket (taking it).
  ktls::Result<ktls::PendingHandshake> StartTls(UniqueFd fd) const;
  // name: "HOST:PORT", as --backend gave it.
  const std::string& name() const noexcept { return name_; }

 private:
  Backend() = default;
  sockaddr_storage addr_{};
  socklen_t addr_len_ = 0;
  std::string host_;
  std::uint16_t port_ = 0;
  std::string name_;
  bool tls_ = false;
  ktls::ClientConfig client_config_;
  std::shared_ptr<SSL_CTX> ssl_ctx_;  // Shared by every backend handshake.
};

}  // namespace ktls::proxy

#endif  // KTLS_TOOLS_KTLS_PROXY_BACKEND_H_
