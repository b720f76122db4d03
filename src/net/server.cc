// net/server.cc: Listener.
#include "ktls/server.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <sys/socket.h>

#include <cerrno>

#include "conn/offload_internal.h"
#include "core/errors.h"
#include "core/openssl_ptr.h"
#include "core/unique_fd.h"
#include "handshake/context.h"
#include "net/socket_util.h"
#include "net/timed_handshake.h"

namespace ktls {

struct Listener::Impl {
  detail::UniqueFd fd;
  std::vector<unsigned char> alpn_wire;  // Read by the context's ALPN callback.
  detail::UniqueSslCtx ctx;
  ServerConfig config;
  int port = 0;
};

Listener::Listener(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Listener::Listener(Listener&&) noexcept = default;
Listener& Listener::operator=(Listener&&) noexcept = default;
Listener::~Listener() = default;

Result<Listener> Listener::Listen(const std::string& host_port, const ServerConfig& config) {
  auto parts = detail::SplitHostPort(host_port);
  if (!parts.ok()) return std::move(parts).error();
  auto fd = detail::ListenTcp(parts->first, parts->second);
  if (!fd.ok()) return std::move(fd).error();
  return Wrap(fd->release(), config);
}

Result<Listener> Listener::Wrap(int listen_fd, const ServerConfig& config) {
  auto impl = std::make_unique<Impl>();
  impl->fd.reset(listen_fd);
  impl->config = config;
  auto wire = detail::AlpnWire(config.alpn);
  if (!wire.ok()) return std::move(wire).error();
  impl->alpn_wire = std::move(wire).value();
  auto ctx = detail::NewServerContext(config, &impl->alpn_wire);
  if (!ctx.ok()) return std::move(ctx).error();
  impl->ctx = std::move(ctx).value();
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  if (::getsockname(listen_fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    if (addr.ss_family == AF_INET) impl->port = ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
    if (addr.ss_family == AF_INET6) impl->port = ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
  }
  return Listener(std::move(impl));
}

Result<int> Listener::AcceptSocket() {
  for (;;) {
    const int fd = ::accept4(impl_->fd.get(), nullptr, nullptr, SOCK_CLOEXEC);
    if (fd >= 0) {
      const int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      return fd;
    }
    // A connection that died in the queue is not the listener's failure.
    if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO) continue;
    return detail::SysError(errno, "accept");
  }
}

namespace {

// LingeringClose ends a connection whose handshake failed so that the
// client still reads our alert: closing a socket with unread input sends a
// reset, which can overtake the alert. Shut down our side, then discard what
// the client still sends, for a moment, before closing.
void LingeringClose(detail::UniqueFd fd) {
  ::shutdown(fd.get(), SHUT_WR);
  (void)detail::SetIoTimeout(fd.get(), std::chrono::milliseconds(100));
  char discard[4096];
  for (int i = 0; i < 16 && ::recv(fd.get(), discard, sizeof(discard), 0) > 0; ++i) {
  }
}

}  // namespace

Result<Connection> Listener::Handshake(int socket) {
  detail::UniqueFd fd(socket);
  detail::UniqueSsl ssl(SSL_new(impl_->ctx.get()));
  if (!ssl) return detail::OpenSslError(ErrorCategory::kInternal, "SSL_new");
  if (auto prepared = PrepareSsl(ssl.get()); !prepared) return std::move(prepared).error();
  if (SSL_set_fd(ssl.get(), fd.get()) != 1) return detail::OpenSslError(ErrorCategory::kInternal, "SSL_set_fd");
  if (auto done = detail::RunHandshake(ssl.get(), fd.get(), /*is_server=*/true, impl_->config.handshake_timeout);
      !done) {
    ssl.reset();
    LingeringClose(std::move(fd));
    return std::move(done).error();
  }
  return detail::OffloadHandshaken(std::move(fd), std::move(ssl), /*is_server=*/true, impl_->config.offload);
}

Result<Connection> Listener::Accept() {
  auto fd = AcceptSocket();
  if (!fd.ok()) return std::move(fd).error();
  return Handshake(*fd);
}

int Listener::fd() const noexcept { return impl_->fd.get(); }
int Listener::port() const noexcept { return impl_->port; }
SSL_CTX* Listener::ssl_ctx() const noexcept { return impl_->ctx.get(); }

}  // namespace ktls
