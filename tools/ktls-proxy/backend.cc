// tools/ktls-proxy/backend.cc: see backend.h.
#include "ktls-proxy/backend.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>

#include <cerrno>
#include <cstring>

namespace ktls::proxy {
namespace {

std::string OpenSslText() {
  char buf[256] = "unknown OpenSSL error";
  if (unsigned long code = ERR_get_error()) ERR_error_string_n(code, buf, sizeof(buf));
  ERR_clear_error();
  return buf;
}

// ClientContext: the one OpenSSL context of the backend handshakes. ktls
// prepares it (PrepareContext) when the first handshake adopts it.
std::shared_ptr<SSL_CTX> ClientContext(const ProxyOptions& options, std::string& error) {
  std::shared_ptr<SSL_CTX> ctx(SSL_CTX_new(TLS_client_method()), SSL_CTX_free);
  if (!ctx) {
    error = "SSL_CTX_new: " + OpenSslText();
    return nullptr;
  }
  SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
  SSL_CTX_set_options(ctx.get(), SSL_OP_NO_RENEGOTIATION);
  if (options.backend_verify) {
    const int loaded = options.backend_ca.empty()
                           ? SSL_CTX_set_default_verify_paths(ctx.get())
                           : SSL_CTX_load_verify_locations(ctx.get(), options.backend_ca.c_str(), nullptr);
    if (loaded != 1) {
      error = "--backend-ca " + options.backend_ca + ": " + OpenSslText();
      return nullptr;
    }
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  }
  return ctx;
}

}  // namespace

std::optional<Backend> Backend::Create(const ProxyOptions& options,
                                       std::function<void(const ktls::OffloadReport&)> on_fallback,
                                       std::string& error) {
  Backend backend;
  backend.host_ = options.backend.host;
  backend.port_ = options.backend.port;
  backend.name_ = (options.backend.host.find(':') != std::string::npos ? "[" + options.backend.host + "]"
                                                                          : options.backend.host) +
                  ":" + std::to_string(options.backend.port);
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const std::string port = std::to_string(options.backend.port);
  if (const int rc = ::getaddrinfo(options.backend.host.c_str(), port.c_str(), &hints, &found); rc != 0) {
    error = "--backend " + backend.name_ + ": " + ::gai_strerror(rc);
    return std::nullopt;
  }
  std::memcpy(&backend.addr_, found->ai_addr, found->ai_addrlen);
  backend.addr_len_ = found->ai_addrlen;
  ::freeaddrinfo(found);

  backend.tls_ = options.backend_tls;
  if (backend.tls_) {
    backend.ssl_ctx_ = ClientContext(options, error);
    if (!backend.ssl_ctx_) return std::nullopt;
    ktls::ClientConfig& config = backend.client_config_;
    config.ssl_ctx = backend.ssl_ctx_.get();
    config.session_cache = nullptr;  // Our own context: ktls's cache is not used.
    config.verify = options.backend_verify;
    config.sni = options.backend_sni;
    config.handshake_timeout = options.handshake_timeout;
    if (!tools::SetOffloadChoice(options.offload, config.offload, error)) return std::nullopt;
    config.offload.on_fallback = std::move(on_fallback);
    // The relay needs nothing of the backend's chain after the handshake
    // verified it. Kept, it would be memory on every connection, and part
    // of the state an upgrade moves: one over about 14 KiB could never go
    // to a new worker (privsep's hand-off queue takes less at once).
    config.offload.keep_peer_certificates = false;
  }
  return backend;
}

Backend::Connecting Backend::StartConnect() const {
  Connecting out;
  out.fd.reset(::socket(addr_.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (out.fd.get() < 0) {
    out.error = errno;
    return out;
  }
  const int one = 1;
  (void)::setsockopt(out.fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  int rc;
  while ((rc = ::connect(out.fd.get(), reinterpret_cast<const sockaddr*>(&addr_), addr_len_)) != 0 &&
         errno == EINTR) {
  }
  if (rc == 0) {
    out.connected = true;
  } else if (errno != EINPROGRESS) {
    out.error = errno;
  }
  return out;
}

int Backend::ConnectError(int fd) {
  int err = 0;
  socklen_t len = sizeof(err);
  if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) return errno;
  return err;
}

ktls::Result<ktls::PendingHandshake> Backend::StartTls(UniqueFd fd) const {
  return ktls::StartClientHandshake(fd.release(), host_, port_, client_config_);
}

}  // namespace ktls::proxy
