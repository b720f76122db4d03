// net/client.cc: Connect.
#include "ktls/client.h"
#include "ktls/handshake.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include <cerrno>

#include "conn/offload_internal.h"
#include "core/errors.h"
#include "core/openssl_ptr.h"
#include "core/scope_exit.h"
#include "handshake/context.h"
#include "net/pending_handshake.h"
#include "net/session_cache_internal.h"
#include "net/socket_util.h"

namespace ktls {
namespace {

bool IsIpAddress(const std::string& host) {
  unsigned char buf[sizeof(in6_addr)];
  return inet_pton(AF_INET, host.c_str(), buf) == 1 || inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

// SessionScope: what besides host and port decides whom a connection
// with config authenticates, and as whom (detail::SessionKey::scope).
std::string SessionScope(const ClientConfig& config, const std::string& host) {
  const std::string sni = config.sni == host ? std::string() : config.sni;
  if (sni.empty() && config.ca_file.empty() && config.cert_file.empty()) return {};
  std::string scope;
  for (const std::string* field : {&sni, &config.ca_file, &config.cert_file}) {
    scope += std::to_string(field->size()) + ":" + *field;
  }
  return scope;
}

// StartClient: on failure, fd is left as it was.
Result<PendingHandshake> StartClient(detail::UniqueFd& fd, const std::string& host, std::uint16_t port,
                                     const ClientConfig& config, detail::HandshakeWaits waits) {
  if (auto valid = detail::ValidateConfig(config.offload, config.handshake_timeout, config.max_version); !valid) {
    return std::move(valid).error();
  }
  auto ctx = detail::NewClientContext(config);
  if (!ctx.ok()) return std::move(ctx).error();
  const bool use_cache = config.session_cache && config.ssl_ctx == nullptr && port != 0;
  if (use_cache) detail::EnableClientSessions(ctx->get());
  auto alpn = detail::AlpnWire(config.alpn);
  if (!alpn.ok()) return std::move(alpn).error();

  detail::UniqueSsl ssl(SSL_new(ctx->get()));
  if (!ssl) return detail::OpenSslError(ErrorCategory::kInternal, "SSL_new");
  if (auto prepared = PrepareSsl(ssl.get()); !prepared) return std::move(prepared).error();
  // The server's name: sni, else host. Sent as SNI unless it is an IP
  // address (RFC 6066 3), and verified either way.
  const std::string& target = config.sni.empty() ? host : config.sni;
  const bool target_is_ip = IsIpAddress(target);
  if (config.verify && target.empty()) {
    // OpenSSL would then check the chain and no name: any certificate a
    // trusted CA signed would pass.
    return detail::MakeError(ErrorCategory::kUsage, "no server name to verify: give a host or ClientConfig::sni");
  }
  // SSL_set_tlsext_host_name, without the macro's C cast.
  if (!target.empty() && !target_is_ip &&
      SSL_ctrl(ssl.get(), SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name,
               const_cast<char*>(target.c_str())) != 1) {
    return detail::OpenSslError(ErrorCategory::kUsage, "invalid SNI name " + target);
  }
  if (config.verify) {
    const int ok = target_is_ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl.get()), target.c_str())
                                : SSL_set1_host(ssl.get(), target.c_str());
    if (ok != 1) return detail::OpenSslError(ErrorCategory::kUsage, "cannot set the name to verify: " + target);
  }
  if (!alpn->empty() && SSL_set_alpn_protos(ssl.get(), alpn->data(), static_cast<unsigned int>(alpn->size())) != 0) {
    return detail::OpenSslError(ErrorCategory::kInternal, "SSL_set_alpn_protos");
  }
  if (use_cache) {
    detail::SessionKey key{host, port, SessionScope(config, host), config.verify, target, target_is_ip};
    if (auto used = detail::UseSessionCache(ssl.get(), config.session_cache, std::move(key)); !used) {
      return std::move(used).error();
    }
  }
  return detail::NewPendingHandshake(std::move(fd), std::move(ssl), /*is_server=*/false, config.offload,
                                     config.handshake_timeout, waits);
}

// PeerPort: the port of socket's peer; 0 while it is still connecting.
std::uint16_t PeerPort(int socket) {
  sockaddr_storage peer{};
  socklen_t peer_len = sizeof(peer);
  const bool known = ::getpeername(socket, reinterpret_cast<sockaddr*>(&peer), &peer_len) == 0;
  return known ? detail::PortOf(peer) : std::uint16_t{0};
}

}  // namespace

namespace detail {
Result<PendingHandshake> StartClientHandshakeKeepingSocket(int socket, const std::string& host,
                                                           const ClientConfig& config) {
  UniqueFd fd(socket);
  // Moved into the handshake, or (failed, even by an exception) the caller's still.
  const ScopeExit give_back([&fd] { (void)fd.release(); });
  return StartClient(fd, host, PeerPort(socket), config, HandshakeWaits::kOutsideNonBlocking);
}
}  // namespace detail

Result<PendingHandshake> StartClientHandshake(int socket, const std::string& host, std::uint16_t port,
                                              const ClientConfig& config) {
  detail::UniqueFd fd(socket);  // Closes the socket if this fails.
  return StartClient(fd, host, port, config, detail::HandshakeWaits::kOutside);
}

Result<PendingHandshake> StartClientHandshake(int socket, const std::string& host, const ClientConfig& config) {
  return StartClientHandshake(socket, host, PeerPort(socket), config);
}

Result<Connection> Connect(const std::string& host, std::uint16_t port, const ClientConfig& config) {
  // getaddrinfo would take "" for this machine: a host missing from a
  // configuration must not connect anywhere.
  if (host.empty()) return detail::MakeError(ErrorCategory::kUsage, "Connect: no host");
  auto fd = detail::ConnectTcp(host, std::to_string(port));
  if (!fd.ok()) return std::move(fd).error();
  auto handshake = StartClient(*fd, host, port, config, detail::HandshakeWaits::kInside);
  if (!handshake.ok()) return std::move(handshake).error();
  return detail::FinishBlocking(std::move(handshake).value());
}

}  // namespace ktls
