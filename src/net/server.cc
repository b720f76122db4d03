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
#include "core/scope_exit.h"
#include "core/unique_fd.h"
#include "handshake/context.h"
#include "kernel/socket_platform.h"
#include "net/pending_handshake.h"
#include "net/socket_util.h"

namespace ktls {

struct ServerContext::Impl {
  std::vector<unsigned char> alpn_wire;  // Read by the context's ALPN callback.
  detail::UniqueSslCtx ctx;
  ServerConfig config;
};

ServerContext::ServerContext(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
ServerContext::ServerContext(const ServerContext&) = default;
ServerContext& ServerContext::operator=(const ServerContext&) = default;
ServerContext::ServerContext(ServerContext&&) noexcept = default;
ServerContext& ServerContext::operator=(ServerContext&&) noexcept = default;
ServerContext::~ServerContext() = default;

Result<ServerContext> ServerContext::Create(const ServerConfig& config) {
  if (auto valid = detail::ValidateConfig(config.offload, config.handshake_timeout, config.max_version); !valid) {
    return std::move(valid).error();
  }
  auto impl = std::make_shared<Impl>();
  impl->config = config;
  auto wire = detail::AlpnWire(config.alpn);
  if (!wire.ok()) return std::move(wire).error();
  impl->alpn_wire = std::move(wire).value();
  auto ctx = detail::NewServerContext(config, &impl->alpn_wire);
  if (!ctx.ok()) return std::move(ctx).error();
  impl->ctx = std::move(ctx).value();
  return ServerContext(std::move(impl));
}

namespace {

// StartServerHandshake: on failure, socket is left as it was.
Result<PendingHandshake> StartServerHandshake(const ServerContext& context, detail::UniqueFd& socket,
                                              detail::HandshakeWaits waits) {
  detail::UniqueSsl ssl(SSL_new(context.ssl_ctx()));
  if (!ssl) return detail::OpenSslError(ErrorCategory::kInternal, "SSL_new");
  if (auto prepared = PrepareSsl(ssl.get()); !prepared) return std::move(prepared).error();
  return detail::NewPendingHandshake(std::move(socket), std::move(ssl), /*is_server=*/true, context.config().offload,
                                     context.config().handshake_timeout, waits);
}

}  // namespace

namespace detail {
Result<PendingHandshake> StartServerHandshakeKeepingSocket(const ServerContext& context, int socket) {
  UniqueFd fd(socket);
  // Moved into the handshake, or (failed, even by an exception) the caller's still.
  const ScopeExit give_back([&fd] { (void)fd.release(); });
  return StartServerHandshake(context, fd, HandshakeWaits::kOutsideNonBlocking);
}
}  // namespace detail

Result<PendingHandshake> ServerContext::StartHandshake(int socket) const {
  detail::UniqueFd fd(socket);  // Closes the socket if this fails.
  return StartServerHandshake(*this, fd, detail::HandshakeWaits::kOutside);
}

Result<Connection> ServerContext::Handshake(int socket) const {
  detail::UniqueFd fd(socket);  // Closes the socket if this fails.
  auto handshake = StartServerHandshake(*this, fd, detail::HandshakeWaits::kInside);
  if (!handshake.ok()) return std::move(handshake).error();
  return detail::FinishBlocking(std::move(handshake).value());
}

const ServerConfig& ServerContext::config() const noexcept { return impl_->config; }
SSL_CTX* ServerContext::ssl_ctx() const noexcept { return impl_->ctx.get(); }

struct Listener::Impl {
  detail::UniqueFd fd;
  ServerContext context;
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
  detail::UniqueFd fd(listen_fd);
  auto context = ServerContext::Create(config);
  if (!context.ok()) return std::move(context).error();
  auto impl = std::make_unique<Impl>(Impl{std::move(fd), std::move(context).value(), 0});
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  if (::getsockname(listen_fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) impl->port = detail::PortOf(addr);
  return Listener(std::move(impl));
}

Result<int> Listener::AcceptSocket() {
  for (;;) {
    const int fd = detail::sys::Accept(impl_->fd.get());
    if (fd >= 0) {
      const int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      return fd;
    }
    // A connection that died in the queue is not the listener's failure.
    if (fd == -EINTR || fd == -ECONNABORTED || fd == -EPROTO) continue;
    return detail::SysError(-fd, "accept");
  }
}

Result<PendingHandshake> Listener::StartHandshake(int socket) const { return impl_->context.StartHandshake(socket); }

Result<Connection> Listener::Handshake(int socket) {
  auto conn = impl_->context.Handshake(socket);
  if (!conn.ok()) return conn;
  // The socket is the caller's, maybe accepted non-blocking; the blocking
  // API promises a blocking Connection.
  if (auto set = detail::SetNonBlocking(conn->fd(), false); !set) return std::move(set).error();
  return conn;
}

Result<Connection> Listener::Accept() {
  auto fd = AcceptSocket();
  if (!fd.ok()) return std::move(fd).error();
  return impl_->context.Handshake(*fd);  // Our own accept's socket: blocking already.
}

int Listener::fd() const noexcept { return impl_->fd.get(); }
int Listener::port() const noexcept { return impl_->port; }
SSL_CTX* Listener::ssl_ctx() const noexcept { return impl_->context.ssl_ctx(); }
const ServerContext& Listener::context() const noexcept { return impl_->context; }

}  // namespace ktls
