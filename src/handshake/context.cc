// handshake/context.cc
#include "handshake/context.h"

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "core/errors.h"
#include "ktls/offload.h"

namespace ktls::detail {
namespace {

int SelectAlpn(SSL* /*ssl*/, const unsigned char** out, unsigned char* out_len, const unsigned char* in,
               unsigned int in_len, void* arg) {
  const auto* wire = static_cast<const std::vector<unsigned char>*>(arg);
  unsigned char* selected = nullptr;
  if (SSL_select_next_proto(&selected, out_len, wire->data(), static_cast<unsigned int>(wire->size()), in,
                            in_len) != OPENSSL_NPN_NEGOTIATED) {
    return SSL_TLSEXT_ERR_ALERT_FATAL;  // no_application_protocol (RFC 7301).
  }
  *out = selected;
  return SSL_TLSEXT_ERR_OK;
}

Result<UniqueSslCtx> AdoptContext(SSL_CTX* ctx) {
  if (SSL_CTX_up_ref(ctx) != 1) return OpenSslError(ErrorCategory::kInternal, "SSL_CTX_up_ref");
  UniqueSslCtx owned(ctx);
  if (auto prepared = PrepareContext(ctx); !prepared) return std::move(prepared).error();
  return owned;
}

// SetVersionsAndCiphers applies the config's protocol range and suites.
Result<void> SetVersionsAndCiphers(SSL_CTX* ctx, TlsVersion max_version, const std::string& cipher_list,
                                   const std::string& suites) {
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_max_proto_version(ctx, max_version == TlsVersion::kTls12 ? TLS1_2_VERSION : TLS1_3_VERSION);
  if (!cipher_list.empty() && SSL_CTX_set_cipher_list(ctx, cipher_list.c_str()) != 1) {
    return OpenSslError(ErrorCategory::kUsage, "bad TLS 1.2 cipher list \"" + cipher_list + "\"");
  }
  if (!suites.empty() && SSL_CTX_set_ciphersuites(ctx, suites.c_str()) != 1) {
    return OpenSslError(ErrorCategory::kUsage, "bad TLS 1.3 cipher suites \"" + suites + "\"");
  }
  return {};
}

Result<void> LoadCertificate(SSL_CTX* ctx, const std::string& cert_file, const std::string& key_file) {
  if (SSL_CTX_use_certificate_chain_file(ctx, cert_file.c_str()) != 1) {
    return OpenSslError(ErrorCategory::kUsage, "cannot load certificate chain " + cert_file);
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
    return OpenSslError(ErrorCategory::kUsage, "cannot load private key " + key_file);
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    return OpenSslError(ErrorCategory::kUsage, "private key " + key_file + " does not match " + cert_file);
  }
  return {};
}

}  // namespace

Result<std::vector<unsigned char>> AlpnWire(const std::vector<std::string>& protocols) {
  std::vector<unsigned char> wire;
  for (const std::string& p : protocols) {
    if (p.empty() || p.size() > 255) return MakeError(ErrorCategory::kUsage, "ALPN protocol name must be 1-255 bytes");
    wire.push_back(static_cast<unsigned char>(p.size()));
    wire.insert(wire.end(), p.begin(), p.end());
  }
  return wire;
}

Result<UniqueSslCtx> NewServerContext(const ServerConfig& config, const std::vector<unsigned char>* alpn_wire) {
  if (config.num_tickets < 0) return MakeError(ErrorCategory::kUsage, "num_tickets must be >= 0");
  if (config.ssl_ctx != nullptr) return AdoptContext(config.ssl_ctx);
  UniqueSslCtx ctx(SSL_CTX_new(TLS_server_method()));
  if (!ctx) return OpenSslError(ErrorCategory::kInternal, "SSL_CTX_new");
  // Renegotiation cannot work once records are in the kernel.
  SSL_CTX_set_options(ctx.get(), SSL_OP_NO_RENEGOTIATION);
  if (auto loaded = LoadCertificate(ctx.get(), config.cert_file, config.key_file); !loaded) {
    return std::move(loaded).error();
  }
  if (!config.client_ca_file.empty()) {
    if (SSL_CTX_load_verify_locations(ctx.get(), config.client_ca_file.c_str(), nullptr) != 1) {
      return OpenSslError(ErrorCategory::kUsage, "cannot load client CA file " + config.client_ca_file);
    }
    if (STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(config.client_ca_file.c_str())) {
      SSL_CTX_set_client_CA_list(ctx.get(), names);
    }
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
    // OpenSSL resumes a session whose client was verified only within the
    // same session ID context; without one it refuses every resumption.
    static constexpr unsigned char kSessionIdContext[] = "ktls client-verified";
    if (SSL_CTX_set_session_id_context(ctx.get(), kSessionIdContext, sizeof(kSessionIdContext) - 1) != 1) {
      return OpenSslError(ErrorCategory::kInternal, "SSL_CTX_set_session_id_context");
    }
  }
  SSL_CTX_set_num_tickets(ctx.get(), static_cast<std::size_t>(config.num_tickets));
  if (auto set = SetVersionsAndCiphers(ctx.get(), config.max_version, config.cipher_list, config.ciphersuites); !set) {
    return std::move(set).error();
  }
  if (alpn_wire != nullptr && !alpn_wire->empty()) {
    SSL_CTX_set_alpn_select_cb(ctx.get(), SelectAlpn, const_cast<std::vector<unsigned char>*>(alpn_wire));
  }
  if (auto prepared = PrepareContext(ctx.get()); !prepared) return std::move(prepared).error();
  return ctx;
}

Result<UniqueSslCtx> NewClientContext(const ClientConfig& config) {
  if (config.ssl_ctx != nullptr) return AdoptContext(config.ssl_ctx);
  UniqueSslCtx ctx(SSL_CTX_new(TLS_client_method()));
  if (!ctx) return OpenSslError(ErrorCategory::kInternal, "SSL_CTX_new");
  SSL_CTX_set_options(ctx.get(), SSL_OP_NO_RENEGOTIATION);
  if (config.verify) {
    const int loaded = config.ca_file.empty()
                           ? SSL_CTX_set_default_verify_paths(ctx.get())
                           : SSL_CTX_load_verify_locations(ctx.get(), config.ca_file.c_str(), nullptr);
    if (loaded != 1) return OpenSslError(ErrorCategory::kUsage, "cannot load CA certificates " + config.ca_file);
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  }
  if (auto set = SetVersionsAndCiphers(ctx.get(), config.max_version, config.cipher_list, config.ciphersuites); !set) {
    return std::move(set).error();
  }
  if (!config.cert_file.empty()) {
    if (auto loaded = LoadCertificate(ctx.get(), config.cert_file, config.key_file); !loaded) {
      return std::move(loaded).error();
    }
  }
  if (auto prepared = PrepareContext(ctx.get()); !prepared) return std::move(prepared).error();
  return ctx;
}

}  // namespace ktls::detail
