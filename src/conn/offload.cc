// conn/offload.cc: handing a finished handshake to the kernel.
//
// The order is fixed: validate everything for both directions, build both
// crypto_info structs, and only then touch the socket: TCP_ULP, TLS_TX,
// TLS_RX. A failure before TLS_TX leaves a plain OpenSSL connection (the
// "tls" ULP with no keys set passes bytes through untouched). Once TLS_TX
// succeeded, TX belongs to the kernel and nothing may hand it back to
// OpenSSL; a failing TLS_RX only leaves RX in OpenSSL.
#include "ktls/offload.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <sys/socket.h>

#include <cstring>
#include <string>
#include <utility>

#include "conn/connection_impl.h"
#include "conn/no_write_bio.h"
#include "conn/offload_internal.h"
#include "conn/socket_bio.h"
#include "conn/traffic_keys.h"
#include "core/errors.h"
#include "handshake/capture.h"
#include "kernel/crypto_info.h"
#include "kernel/syscalls.h"
#include "kernel/tls_uapi.h"
#include "keys/tls13_key_schedule.h"
#include "ktls/probe.h"

namespace ktls {
namespace detail {
namespace {

void CaptureSession(SSL* ssl, SessionInfo& info) {
  info.protocol = SSL_get_version(ssl);
  if (const SSL_CIPHER* cipher = SSL_get_current_cipher(ssl)) {
    if (const char* name = SSL_CIPHER_standard_name(cipher)) info.cipher_suite = name;
  }
  const unsigned char* alpn = nullptr;
  unsigned int alpn_len = 0;
  SSL_get0_alpn_selected(ssl, &alpn, &alpn_len);
  if (alpn != nullptr) info.alpn.assign(reinterpret_cast<const char*>(alpn), alpn_len);
  if (const char* sni = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name)) info.sni = sni;
  info.resumed = SSL_session_reused(ssl) == 1;

  const auto add_der = [&info](X509* cert) {
    const int len = i2d_X509(cert, nullptr);
    if (len <= 0) return;
    std::vector<unsigned char> der(static_cast<std::size_t>(len));
    unsigned char* out = der.data();
    if (i2d_X509(cert, &out) == len) info.peer_certificates.push_back(std::move(der));
  };
  // SSL_get_peer_cert_chain includes the leaf on a client but not on a
  // server; start from the leaf and skip it in the chain either way.
  X509* leaf = SSL_get0_peer_certificate(ssl);
  if (leaf == nullptr) return;
  add_der(leaf);
  if (STACK_OF(X509)* chain = SSL_get_peer_cert_chain(ssl)) {
    for (int i = 0; i < sk_X509_num(chain); ++i) {
      X509* cert = sk_X509_value(chain, i);
      if (X509_cmp(cert, leaf) != 0) add_der(cert);
    }
  }
}

// Plan: what validation decided, before anything touches the socket.
struct Plan {
  bool tx = false;
  bool rx = false;
  Cipher cipher = Cipher::kAes128Gcm;
  KernelCryptoInfo tx_info;
  KernelCryptoInfo rx_info;
  std::string reason;  // Why a direction stays in userspace.
};

void AddReason(std::string& reason, const std::string& more) {
  if (!reason.empty()) reason += "; ";
  reason += more;
}

// DrainOpenSsl moves whatever OpenSSL has buffered (decrypted or not) into
// the connection's early plaintext, so that RX can go to the kernel at a
// record boundary with nothing left behind in userspace. Returns false
// (with a reason) when RX must stay in OpenSSL.
bool DrainOpenSsl(ConnectionImpl& conn, std::string& reason) {
  SSL* ssl = conn.ssl.get();
  while (SSL_has_pending(ssl) == 1) {
    std::byte buf[16384];
    std::size_t n = 0;
    ERR_clear_error();
    const int ret = SSL_read_ex(ssl, buf, sizeof(buf), &n);
    if (ret == 1) {
      conn.early_plaintext.insert(conn.early_plaintext.end(), buf, buf + n);
      continue;
    }
    const int code = SSL_get_error(ssl, ret);
    ERR_clear_error();
    if (code == SSL_ERROR_ZERO_RETURN) {
      conn.peer_closed = true;
      AddReason(reason, "the peer already sent close_notify");
    } else {
      AddReason(reason, "OpenSSL holds a partial record that could not be completed");
    }
    return false;
  }
  return true;
}

Plan Validate(ConnectionImpl& conn, CaptureState& state, const OffloadOptions& options) {
  Plan plan;
  SSL* ssl = conn.ssl.get();
  const Capabilities& caps = CachedCapabilities();
  if (!caps.ulp) {
    plan.reason = "kernel TLS unavailable: " + caps.reason;
    return plan;
  }
  if (SSL_version(ssl) != TLS1_3_VERSION) {
    plan.reason = std::string("protocol ") + SSL_get_version(ssl) + " is not offloaded (TLS 1.3 only so far)";
    return plan;
  }
  const SSL_CIPHER* suite = SSL_get_current_cipher(ssl);
  const auto cipher =
      suite == nullptr ? std::nullopt : CipherFromTls13SuiteId(static_cast<std::uint16_t>(SSL_CIPHER_get_id(suite)));
  if (!cipher) {
    plan.reason = std::string("cipher not offloadable: ") + (suite ? SSL_CIPHER_standard_name(suite) : "none");
    return plan;
  }
  plan.cipher = *cipher;
  if (state.rejected_keylog_lines != 0) {
    plan.reason = "a key-log line for this connection did not parse or match; not trusting the secrets";
    return plan;
  }
  const Secret& own_secret = conn.is_server ? state.server_secret : state.client_secret;
  const Secret& peer_secret = conn.is_server ? state.client_secret : state.server_secret;
  const std::size_t secret_len = Tls13Params(*cipher).secret_len;

  // TX.
  if (!caps.Supports(TlsVersion::kTls13, *cipher, false)) {
    AddReason(plan.reason, std::string("the kernel does not accept TLS 1.3 ") + std::string(CipherName(*cipher)));
  } else if (!state.tx.app_keys || state.tx.key_updated || own_secret.size() != secret_len) {
    AddReason(plan.reason, "TX traffic secret or record count unknown (key update, or the SSL was not prepared "
                           "before its handshake)");
  } else if (BIO_wpending(SSL_get_wbio(ssl)) > 0 || SSL_want_write(ssl)) {
    AddReason(plan.reason, "OpenSSL has unsent data buffered");
  } else if (auto info = PackTls13Direction(*cipher, own_secret, state.tx.records); !info.ok()) {
    AddReason(plan.reason, "TX keys: " + info.error().ToString());
  } else {
    plan.tx = true;
    plan.tx_info = std::move(info).value();
  }

  // RX goes to the kernel only together with TX, and only if asked.
  if (!plan.tx) return plan;
  if (options.rx == RxOffload::kOff) {
    AddReason(plan.reason, "RX offload is turned off");
  } else if (options.rx == RxOffload::kAuto && !caps.rekey) {
    AddReason(plan.reason, "RX stays in OpenSSL: this kernel cannot install new RX keys (needs Linux 6.14), so a "
                           "peer's KeyUpdate would end the connection (RxOffload::kOn forces RX offload)");
  } else if (!caps.Supports(TlsVersion::kTls13, *cipher, true)) {
    AddReason(plan.reason, std::string("the kernel does not accept TLS 1.3 ") + std::string(CipherName(*cipher)) +
                               " for RX");
  } else if (!state.rx.app_keys || state.rx.key_updated || peer_secret.size() != secret_len) {
    AddReason(plan.reason, "RX traffic secret or record count unknown");
  } else if (DrainOpenSsl(conn, plan.reason)) {
    // Draining read records, so the count is taken after it.
    if (auto info = PackTls13Direction(*cipher, peer_secret, state.rx.records); !info.ok()) {
      AddReason(plan.reason, "RX keys: " + info.error().ToString());
    } else {
      plan.rx = true;
      plan.rx_info = std::move(info).value();
    }
  }
  return plan;
}

}  // namespace

Result<Connection> OffloadHandshaken(UniqueFd socket, UniqueSsl ssl, bool is_server, const OffloadOptions& options) {
  CaptureState* state = GetCaptureState(ssl.get());
  if (state == nullptr) return MakeError(ErrorCategory::kUsage, "offload: the SSL was not prepared (PrepareSsl)");
  if (SSL_is_init_finished(ssl.get()) != 1) {
    return MakeError(ErrorCategory::kUsage, "offload: the handshake has not finished");
  }
  auto conn = std::make_unique<ConnectionImpl>(std::move(socket), std::move(ssl), is_server);
  CaptureSession(conn->ssl.get(), conn->session);

  // The socket belongs to the Connection; OpenSSL's BIOs must never close it.
  if (BIO* rbio = SSL_get_rbio(conn->ssl.get())) BIO_set_close(rbio, BIO_NOCLOSE);
  if (BIO* wbio = SSL_get_wbio(conn->ssl.get())) BIO_set_close(wbio, BIO_NOCLOSE);

  Plan plan = Validate(*conn, *state, options);
  // Allocated before the commit, so nothing can fail after TLS_TX. For the
  // directions that stay in OpenSSL: a socket BIO that never blocks (so the
  // Connection can serialise OpenSSL calls without holding a lock while it
  // waits), and, if TX goes to the kernel, a write side that refuses to let
  // OpenSSL put a record on the wire (it would be encrypted twice).
  UniqueBio socket_bio(NewSocketBio(conn->socket.get()));
  UniqueBio no_write(NewNoWriteBio(&conn->openssl_write_attempted));
  if (!socket_bio || !no_write) {
    ERR_clear_error();
    return MakeError(ErrorCategory::kInternal, "offload: out of memory for BIOs");
  }

  const int fd = conn->socket.get();
  if (plan.tx) {
    const int ulp = sys::SetSockOpt(fd, uapi::kSolTcp, uapi::kTcpUlp, uapi::kTlsUlpName, sizeof(uapi::kTlsUlpName) - 1);
    if (ulp != 0) {
      plan.tx = plan.rx = false;
      AddReason(plan.reason, "setsockopt(TCP_ULP, \"tls\"): " + std::string(std::strerror(-ulp)));
    }
  }
  if (plan.tx) {
    const int rc = sys::SetSockOpt(fd, uapi::kSolTls, uapi::kTlsTx, plan.tx_info.data(), plan.tx_info.size());
    if (rc != 0) {
      plan.tx = plan.rx = false;
      AddReason(plan.reason, "setsockopt(TLS_TX): " + std::string(std::strerror(-rc)));
    } else {
      // TX now belongs to the kernel. Nothing below may fail for TX, and
      // OpenSSL must never write to this socket again.
      conn->tx = Offload::kKernel;
    }
  }
  if (plan.rx) {
    const int rc = sys::SetSockOpt(fd, uapi::kSolTls, uapi::kTlsRx, plan.rx_info.data(), plan.rx_info.size());
    if (rc != 0) {
      AddReason(plan.reason, "setsockopt(TLS_RX): " + std::string(std::strerror(-rc)));
    } else {
      conn->rx = Offload::kKernel;
    }
  }
  // Key updates need each offloaded direction's current secret, and only a
  // kernel that can rekey can use them; otherwise no key material stays.
  conn->cipher = plan.cipher;
  conn->kernel_rekey = CachedCapabilities().rekey;
  conn->key_update_threshold =
      options.key_update_after_records != 0 ? options.key_update_after_records : DefaultKeyUpdateThreshold(plan.cipher);
  if (conn->kernel_rekey) {
    Secret& own = conn->is_server ? state->server_secret : state->client_secret;
    Secret& peer = conn->is_server ? state->client_secret : state->server_secret;
    if (conn->tx == Offload::kKernel) conn->tx_secret = own;
    if (conn->rx == Offload::kKernel) conn->rx_secret = peer;
  }
  state->client_secret.Wipe();
  state->server_secret.Wipe();
  plan.tx_info = KernelCryptoInfo();
  plan.rx_info = KernelCryptoInfo();

  if (conn->tx == Offload::kKernel && conn->rx == Offload::kKernel) {
    // Neither direction needs OpenSSL any more: free the SSL and its buffers.
    conn->ssl.reset();
  } else if (conn->tx == Offload::kKernel) {
    SSL_set_bio(conn->ssl.get(), socket_bio.release(), no_write.release());
  } else {
    BIO* bio = socket_bio.release();
    SSL_set_bio(conn->ssl.get(), bio, bio);  // One reference serves both.
  }
  if ((conn->tx == Offload::kUser || conn->rx == Offload::kUser) && options.on_fallback) {
    options.on_fallback(OffloadReport{conn->tx, conn->rx, plan.reason});
  }
  return Connection(std::move(conn));
}

}  // namespace detail

Result<void> PrepareContext(SSL_CTX* ctx) { return detail::InstallContextCapture(ctx); }

Result<void> PrepareSsl(SSL* ssl) { return detail::InstallSslCapture(ssl); }

Result<Connection> OffloadSsl(SSL* ssl, const OffloadOptions& options) {
  if (ssl == nullptr) return detail::MakeError(ErrorCategory::kUsage, "OffloadSsl: null SSL");
  const int fd = SSL_get_fd(ssl);
  if (fd < 0) return detail::MakeError(ErrorCategory::kUsage, "OffloadSsl: the SSL has no socket (SSL_set_fd)");
  if (detail::GetCaptureState(ssl) == nullptr) {
    return detail::MakeError(ErrorCategory::kUsage, "OffloadSsl: the SSL was not prepared (PrepareSsl)");
  }
  if (SSL_is_init_finished(ssl) != 1) {
    return detail::MakeError(ErrorCategory::kUsage, "OffloadSsl: the handshake has not finished");
  }
  const bool is_server = SSL_is_server(ssl) == 1;
  return detail::OffloadHandshaken(detail::UniqueFd(fd), detail::UniqueSsl(ssl), is_server, options);
}

}  // namespace ktls
