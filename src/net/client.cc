// net/client.cc: Connect.
#include "ktls/client.h"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>


#include "conn/offload_internal.h"
#include "core/errors.h"
#include "core/openssl_ptr.h"
#include "handshake/context.h"
#include "net/socket_util.h"
#include "net/timed_handshake.h"

namespace ktls {
namespace {

bool IsIpAddress(const std::string& host) {
  unsigned char buf[sizeof(in6_addr)];
  return inet_pton(AF_INET, host.c_str(), buf) == 1 || inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

}  // namespace

Result<Connection> Connect(const std::string& host, std::uint16_t port, const ClientConfig& config) {
  auto ctx = detail::NewClientContext(config);
  if (!ctx.ok()) return std::move(ctx).error();
  auto alpn = detail::AlpnWire(config.alpn);
  if (!alpn.ok()) return std::move(alpn).error();

  auto fd = detail::ConnectTcp(host, std::to_string(port));
  if (!fd.ok()) return std::move(fd).error();

  detail::UniqueSsl ssl(SSL_new(ctx->get()));
  if (!ssl) return detail::OpenSslError(ErrorCategory::kInternal, "SSL_new");
  if (auto prepared = PrepareSsl(ssl.get()); !prepared) return std::move(prepared).error();
  const std::string name = !config.sni.empty() ? config.sni : (IsIpAddress(host) ? std::string() : host);
  // SSL_set_tlsext_host_name, without the macro's C cast.
  if (!name.empty() && SSL_ctrl(ssl.get(), SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name,
                                const_cast<char*>(name.c_str())) != 1) {
    return detail::OpenSslError(ErrorCategory::kUsage, "invalid SNI name " + name);
  }
  if (config.verify) {
    const int ok = IsIpAddress(host) && config.sni.empty() ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl.get()), host.c_str())
                                                            : SSL_set1_host(ssl.get(), name.c_str());
    if (ok != 1) return detail::OpenSslError(ErrorCategory::kUsage, "cannot set the name to verify");
  }
  if (!alpn->empty() && SSL_set_alpn_protos(ssl.get(), alpn->data(), static_cast<unsigned int>(alpn->size())) != 0) {
    return detail::OpenSslError(ErrorCategory::kInternal, "SSL_set_alpn_protos");
  }
  if (SSL_set_fd(ssl.get(), fd->get()) != 1) return detail::OpenSslError(ErrorCategory::kInternal, "SSL_set_fd");
  if (auto done = detail::RunHandshake(ssl.get(), fd->get(), /*is_server=*/false, config.handshake_timeout); !done) {
    Error error = std::move(done).error();
    const long verify = SSL_get_verify_result(ssl.get());
    if (verify != X509_V_OK) {
      error.detail += ": certificate verification failed: ";
      error.detail += X509_verify_cert_error_string(verify);
    }
    return error;
  }
  return detail::OffloadHandshaken(std::move(fd).value(), std::move(ssl), /*is_server=*/false, config.offload);
}

}  // namespace ktls
