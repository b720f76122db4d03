// conn/offload.cc: handing a finished handshake to the kernel.
//
// The order is fixed: validate everything for both directions, build both
// crypto_info structs, and only then touch the socket: TCP_ULP, TLS_TX,
// TLS_RX. A failure before TLS_TX leaves a plain OpenSSL connection (the
// "tls" ULP with no keys set passes bytes through untouched). Once TLS_TX
// succeeded, TX belongs to the kernel and nothing may hand it back to
// OpenSSL; a failing TLS_RX only leaves RX in OpenSSL.
#include "ktls/offload.h"

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <sys/socket.h>

#include <array>
#include <cstring>
#include <memory>
#include <optional>
#include <string_view>
#include <string>
#include <utility>

#include "conn/connection_impl.h"
#include "conn/no_write_bio.h"
#include "conn/offload_internal.h"
#include "conn/socket_bio.h"
#include "conn/ticket_relay.h"
#include "conn/traffic_keys.h"
#include "core/errors.h"
#include "core/scope_exit.h"
#include "handshake/capture.h"
#include "kernel/crypto_info.h"
#include "kernel/socket_platform.h"
#include "kernel/syscalls.h"
#include "kernel/tls_uapi.h"
#include "keys/tls12_key_block.h"
#include "keys/tls13_key_schedule.h"
#include "ktls/probe.h"

namespace ktls {
namespace detail {
namespace {

void CaptureSession(SSL* ssl, SessionInfo& info, bool keep_peer_certificates) {
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
  if (!keep_peer_certificates) return;

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
  TlsVersion version = TlsVersion::kTls13;
  Cipher cipher = Cipher::kAes128Gcm;
  KernelCryptoInfo tx_info;
  KernelCryptoInfo rx_info;
  std::string reason;  // Why a direction stays in userspace.
  FallbackReason tx_reason = FallbackReason::kNone;
  FallbackReason rx_reason = FallbackReason::kNone;
  // Refuse: neither direction, for `why`.
  void Refuse(FallbackReason why, std::string text) {
    tx_reason = rx_reason = why;
    reason = std::move(text);
  }
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

// Tls12Cipher maps a negotiated TLS 1.2 suite to a kernel cipher: the AEAD
// suites with AES-128/256-GCM, ChaCha20-Poly1305 or AES-128-CCM (16-byte
// tag). CBC suites and CCM_8 have no kernel implementation.
std::optional<Cipher> Tls12Cipher(const SSL_CIPHER* suite) {
  if (suite == nullptr || SSL_CIPHER_is_aead(suite) != 1) return std::nullopt;
  const std::string_view name = SSL_CIPHER_standard_name(suite);
  if (name.find("CCM_8") != std::string_view::npos) return std::nullopt;
  switch (SSL_CIPHER_get_cipher_nid(suite)) {
    case NID_aes_128_gcm: return Cipher::kAes128Gcm;
    case NID_aes_256_gcm: return Cipher::kAes256Gcm;
    case NID_chacha20_poly1305: return Cipher::kChaCha20Poly1305;
    case NID_aes_128_ccm: return Cipher::kAes128Ccm;
    default: return std::nullopt;
  }
}

// DirectionKeys packs one direction's crypto_info for the negotiated
// version, or says why it cannot.
class DirectionKeys {
 public:
  virtual ~DirectionKeys() = default;
  // Pack builds the crypto_info for our side (own) or the peer's.
  virtual Result<KernelCryptoInfo> Pack(bool own, std::uint64_t rec_seq) const = 0;
};

// TLS 1.3: each direction from its traffic secret (captured from the key log).
class Tls13Keys final : public DirectionKeys {
 public:
  Tls13Keys(Cipher cipher, const Secret& own, const Secret& peer) : cipher_(cipher), own_(own), peer_(peer) {}
  Result<KernelCryptoInfo> Pack(bool own, std::uint64_t rec_seq) const override {
    const Secret& secret = own ? own_ : peer_;
    if (secret.size() != Tls13Params(cipher_).secret_len) {
      return MakeError(ErrorCategory::kInternal, "traffic secret not captured (was the SSL prepared before its handshake?)");
    }
    return PackTls13Direction(cipher_, secret, rec_seq);
  }

 private:
  Cipher cipher_;
  const Secret& own_;
  const Secret& peer_;
};

// TLS 1.2: both directions from the key block. For AES-GCM and AES-CCM the
// kernel takes the explicit nonce of the next record in `iv` and counts up
// from it; ktls starts it at the record's sequence number (RFC 5288 3 allows
// this; OpenSSL does the same for CCM), which never repeats under one key.
class Tls12KeysFromBlock final : public DirectionKeys {
 public:
  Tls12KeysFromBlock(Cipher cipher, bool is_server, Tls12Keys keys)
      : cipher_(cipher), is_server_(is_server), keys_(std::move(keys)) {}
  Result<KernelCryptoInfo> Pack(bool own, std::uint64_t rec_seq) const override {
    const bool client_side = own != is_server_;
    const Secret& key = client_side ? keys_.client_key : keys_.server_key;
    const Secret& fixed_iv = client_side ? keys_.client_iv : keys_.server_iv;
    std::array<unsigned char, kNonceLen> iv{};
    std::copy(fixed_iv.bytes().begin(), fixed_iv.bytes().end(), iv.begin());
    if (cipher_ != Cipher::kChaCha20Poly1305) {
      for (int i = 0; i < 8; ++i) iv[kNonceLen - 1 - i] = static_cast<unsigned char>(rec_seq >> (8 * i));
    }
    auto info = PackCryptoInfo(TlsVersion::kTls12, cipher_, key.bytes(), iv, rec_seq);
    OPENSSL_cleanse(iv.data(), iv.size());
    return info;
  }

 private:
  Cipher cipher_;
  bool is_server_;
  Tls12Keys keys_;
};

Result<std::unique_ptr<DirectionKeys>> Tls12KeysFor(SSL* ssl, Cipher cipher, bool is_server) {
  std::array<unsigned char, 48> master{};
  std::array<unsigned char, 32> client_random{}, server_random{};
  const SSL_SESSION* session = SSL_get_session(ssl);
  const SSL_CIPHER* suite = SSL_get_current_cipher(ssl);
  const EVP_MD* prf_md = suite != nullptr ? SSL_CIPHER_get_handshake_digest(suite) : nullptr;
  if (session == nullptr || prf_md == nullptr ||
      SSL_SESSION_get_master_key(session, master.data(), master.size()) != master.size() ||
      SSL_get_client_random(ssl, client_random.data(), client_random.size()) != client_random.size() ||
      SSL_get_server_random(ssl, server_random.data(), server_random.size()) != server_random.size()) {
    OPENSSL_cleanse(master.data(), master.size());
    return MakeError(ErrorCategory::kInternal, "TLS 1.2 master secret or randoms unavailable");
  }
  auto keys = DeriveTls12Keys(cipher, EVP_MD_get0_name(prf_md), master, client_random, server_random);
  OPENSSL_cleanse(master.data(), master.size());
  if (!keys.ok()) return std::move(keys).error();
  return std::unique_ptr<DirectionKeys>(std::make_unique<Tls12KeysFromBlock>(cipher, is_server, std::move(keys).value()));
}

Plan Validate(ConnectionImpl& conn, CaptureState& state, const OffloadOptions& options) {
  Plan plan;
  SSL* ssl = conn.ssl.get();
  if (options.tx == TxOffload::kOff) {
    plan.Refuse(FallbackReason::kDisabled, "offload is turned off (TxOffload::kOff)");
    return plan;
  }
  const Capabilities& caps = CachedCapabilities();
  if (!caps.ulp) {
    plan.Refuse(FallbackReason::kNoKernelTls, "kernel TLS unavailable: " + caps.reason);
    return plan;
  }
  const int version = SSL_version(ssl);
  if (version != TLS1_3_VERSION && version != TLS1_2_VERSION) {
    plan.Refuse(FallbackReason::kProtocol, std::string("protocol ") + SSL_get_version(ssl) + " cannot be offloaded");
    return plan;
  }
  plan.version = version == TLS1_3_VERSION ? TlsVersion::kTls13 : TlsVersion::kTls12;
  const SSL_CIPHER* suite = SSL_get_current_cipher(ssl);
  const auto cipher = plan.version == TlsVersion::kTls13
                          ? (suite == nullptr ? std::nullopt
                                              : CipherFromTls13SuiteId(static_cast<std::uint16_t>(SSL_CIPHER_get_id(suite))))
                          : Tls12Cipher(suite);
  if (!cipher) {
    plan.Refuse(FallbackReason::kCipher,
                std::string("cipher not offloadable: ") + (suite ? SSL_CIPHER_standard_name(suite) : "none"));
    return plan;
  }
  plan.cipher = *cipher;
  if (state.rejected_keylog_lines != 0) {
    plan.Refuse(FallbackReason::kSessionState,
                "a key-log line for this connection did not parse or match; not trusting the secrets");
    return plan;
  }
  std::unique_ptr<DirectionKeys> keys;
  if (plan.version == TlsVersion::kTls13) {
    keys = std::make_unique<Tls13Keys>(*cipher, conn.is_server ? state.server_secret : state.client_secret,
                                       conn.is_server ? state.client_secret : state.server_secret);
  } else {
    auto derived = Tls12KeysFor(ssl, *cipher, conn.is_server);
    if (!derived.ok()) {
      plan.Refuse(FallbackReason::kSessionState, derived.error().ToString());
      return plan;
    }
    keys = std::move(derived).value();
  }
  const std::string cipher_text =
      std::string("TLS ") + std::string(TlsVersionName(plan.version)) + " " + std::string(CipherName(*cipher));

  // TX.
  if (!caps.Supports(plan.version, *cipher, false)) {
    plan.Refuse(FallbackReason::kCipher, "the kernel does not accept " + cipher_text);
  } else if (!state.tx.app_keys || state.tx.key_updated) {
    plan.Refuse(FallbackReason::kSessionState,
                "TX record count unknown (a key update, or the SSL was not prepared before its handshake)");
  } else if (BIO_wpending(SSL_get_wbio(ssl)) > 0 || SSL_want_write(ssl)) {
    plan.Refuse(FallbackReason::kSessionState, "OpenSSL has unsent data buffered");
  } else if (auto info = keys->Pack(/*own=*/true, state.tx.records); !info.ok()) {
    plan.Refuse(FallbackReason::kSessionState, "TX keys: " + info.error().ToString());
  } else {
    plan.tx = true;
    plan.tx_info = std::move(info).value();
  }

  // RX goes to the kernel only together with TX, and only if asked.
  if (!plan.tx) return plan;
  const bool rekey = caps.rekey || plan.version == TlsVersion::kTls12;  // TLS 1.2 has no key updates.
  plan.rx_reason = FallbackReason::kSessionState;  // Unless one below says otherwise.
  if (options.rx == RxOffload::kOff) {
    plan.rx_reason = FallbackReason::kDisabled;
    AddReason(plan.reason, "RX offload is turned off");
  } else if (options.rx == RxOffload::kAuto && !rekey) {
    plan.rx_reason = FallbackReason::kNoRekey;
    AddReason(plan.reason, "RX stays in OpenSSL: this kernel cannot install new RX keys (needs Linux 6.14), so a "
                           "peer's KeyUpdate would end the connection (RxOffload::kOn forces RX offload)");
  } else if (!caps.Supports(plan.version, *cipher, true)) {
    plan.rx_reason = FallbackReason::kCipher;
    AddReason(plan.reason, "the kernel does not accept " + cipher_text + " for RX");
  } else if (!state.rx.app_keys || state.rx.key_updated) {
    AddReason(plan.reason, "RX record count unknown");
  } else if (DrainOpenSsl(conn, plan.reason)) {
    // Draining read records, so the count is taken after it.
    if (auto info = keys->Pack(/*own=*/false, state.rx.records); !info.ok()) {
      AddReason(plan.reason, "RX keys: " + info.error().ToString());
    } else {
      plan.rx = true;
      plan.rx_reason = FallbackReason::kNone;
      plan.rx_info = std::move(info).value();
    }
  }
  return plan;
}

// TicketRelayRefusal says why NewSessionTickets that reach the kernel
// cannot become sessions on this connection, or nullptr if they can.
const char* TicketRelayRefusal(SSL* ssl, bool is_server, TlsVersion version, const OffloadOptions& options) {
  if (is_server) return "a server receives no session tickets";
  if (version != TlsVersion::kTls13) return "TLS 1.2 tickets come during the handshake";
  if (!options.session_tickets) return "OffloadOptions::session_tickets is off";
  if ((SSL_CTX_get_session_cache_mode(SSL_get_SSL_CTX(ssl)) & SSL_SESS_CACHE_CLIENT) == 0) {
    return "the SSL_CTX keeps no client sessions (SSL_SESS_CACHE_CLIENT is not set)";
  }
  return nullptr;
}

// SetRxNoPad turns TLS_RX_EXPECT_NO_PAD on for a connection whose TLS 1.3
// RX is in the kernel, where asked and where the probe found it safe, and
// records the outcome. It runs after TLS_RX: a failure leaves RX in the
// kernel exactly as it was, only without the option.
void SetRxNoPad(ConnectionImpl& conn, const OffloadOptions& options) {
  using NoPad = ConnectionImpl::NoPad;
  if (!options.rx_expect_no_pad) {
    conn.rx_no_pad = NoPad::kNotAsked;
  } else if (conn.rx != Offload::kKernel) {
    conn.rx_no_pad = NoPad::kRxInOpenSsl;
  } else if (conn.version != TlsVersion::kTls13) {
    conn.rx_no_pad = NoPad::kTls12;
  } else if (!CachedCapabilities().rx_no_pad) {
    conn.rx_no_pad = NoPad::kUnsafeKernel;
  } else {
    const int one = 1;
    const int rc = sys::SetSockOpt(conn.socket.get(), uapi::kSolTls, uapi::kTlsRxExpectNoPad, &one, sizeof(one));
    conn.rx_no_pad = rc == 0 ? NoPad::kOn : NoPad::kRefused;
    conn.rx_no_pad_errno = -rc;
  }
}

}  // namespace

Result<Connection> OffloadHandshaken(UniqueFd&& socket, UniqueSsl&& ssl, bool is_server,
                                     const OffloadOptions& options) {
  CaptureState* state = GetCaptureState(ssl.get());
  if (state == nullptr) return MakeError(ErrorCategory::kUsage, "offload: the SSL was not prepared (PrepareSsl)");
  if (SSL_is_init_finished(ssl.get()) != 1) {
    return MakeError(ErrorCategory::kUsage, "offload: the handshake has not finished");
  }
  auto conn = std::make_unique<ConnectionImpl>(std::move(socket), std::move(ssl), is_server);
  conn->linger = options.linger;
  CaptureSession(conn->ssl.get(), conn->session, options.keep_peer_certificates);

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
    socket = std::move(conn->socket);  // Nothing was offloaded: the caller's again.
    ssl = std::move(conn->ssl);
    return MakeError(ErrorCategory::kInternal, "offload: out of memory for BIOs");
  }
  // The socket belongs to the Connection; OpenSSL's BIOs must never close it.
  if (BIO* rbio = SSL_get_rbio(conn->ssl.get())) BIO_set_close(rbio, BIO_NOCLOSE);
  if (BIO* wbio = SSL_get_wbio(conn->ssl.get())) BIO_set_close(wbio, BIO_NOCLOSE);

  const int fd = conn->socket.get();
  if (plan.tx) {
    const int ulp = sys::SetSockOpt(fd, uapi::kSolTcp, uapi::kTcpUlp, uapi::kTlsUlpName, sizeof(uapi::kTlsUlpName) - 1);
    if (ulp != 0) {
      plan.tx = plan.rx = false;
      plan.tx_reason = plan.rx_reason = FallbackReason::kKernelRefused;
      AddReason(plan.reason, "setsockopt(TCP_ULP, \"tls\"): " + std::string(std::strerror(-ulp)));
    }
  }
  if (plan.tx) {
    const int rc = sys::SetSockOpt(fd, uapi::kSolTls, uapi::kTlsTx, plan.tx_info.data(), plan.tx_info.size());
    if (rc != 0) {
      plan.tx = plan.rx = false;
      plan.tx_reason = plan.rx_reason = FallbackReason::kKernelRefused;
      AddReason(plan.reason, "setsockopt(TLS_TX): " + std::string(std::strerror(-rc)));
    } else {
      // TX now belongs to the kernel. Nothing below may fail for TX, and
      // OpenSSL must never write to this socket again.
      conn->tx = Offload::kKernel;
      conn->SetTxRecordsBound(state->tx.records);
    }
  }
  if (plan.rx) {
    const int rc = sys::SetSockOpt(fd, uapi::kSolTls, uapi::kTlsRx, plan.rx_info.data(), plan.rx_info.size());
    if (rc != 0) {
      plan.rx_reason = FallbackReason::kKernelRefused;
      AddReason(plan.reason, "setsockopt(TLS_RX): " + std::string(std::strerror(-rc)));
    } else {
      conn->rx = Offload::kKernel;
    }
  }
  // Key updates need each offloaded direction's current secret, and only a
  // kernel that can rekey can use them; otherwise no key material stays.
  conn->cipher = plan.cipher;
  conn->version = plan.version;
  conn->kernel_rekey = CachedCapabilities().rekey && plan.version == TlsVersion::kTls13;
  conn->key_update_threshold =
      options.key_update_after_records != 0 ? options.key_update_after_records : DefaultKeyUpdateThreshold(plan.cipher);
  SetRxNoPad(*conn, options);
  if (conn->kernel_rekey) {
    Secret& own = conn->is_server ? state->server_secret : state->client_secret;
    Secret& peer = conn->is_server ? state->client_secret : state->server_secret;
    if (conn->tx == Offload::kKernel) conn->tx_secret = own;
    if (conn->rx == Offload::kKernel) conn->rx_secret = peer;
  }
  if (conn->rx == Offload::kKernel) {
    conn->no_relay_reason = TicketRelayRefusal(conn->ssl.get(), conn->is_server, plan.version, options);
    if (conn->no_relay_reason == nullptr) {
      // Only the relay ever reads through the SSL from now on (see
      // conn/ticket_relay.h); OpenSSL's writes are caught as in mixed mode.
      SSL_set0_wbio(conn->ssl.get(), no_write.release());
      auto relay = TicketRelay::Create(conn->ssl.get(), plan.cipher,
                                       conn->is_server ? state->client_secret : state->server_secret, state->rx.records);
      if (relay.ok()) {
        conn->ticket_relay = std::move(relay).value();
      } else {
        ERR_clear_error();
        conn->no_relay_reason = "the session-ticket relay could not be set up (out of memory)";
      }
    }
  }
  state->client_secret.Wipe();
  state->server_secret.Wipe();
  plan.tx_info = KernelCryptoInfo();
  plan.rx_info = KernelCryptoInfo();

  if (conn->ticket_relay) {
    // Both directions are in the kernel; the SSL stays for the tickets.
  } else if (conn->tx == Offload::kKernel && conn->rx == Offload::kKernel) {
    // Neither direction needs OpenSSL any more: free the SSL and its buffers.
    // Mark it shut down first: OpenSSL drops the session of an SSL freed
    // without one from the server's cache (as possibly truncated), which
    // would make every session-ID resumption fail.
    SSL_set_shutdown(conn->ssl.get(), SSL_get_shutdown(conn->ssl.get()) | SSL_SENT_SHUTDOWN);
    conn->ssl.reset();
  } else if (conn->tx == Offload::kKernel) {
    SSL_set_bio(conn->ssl.get(), socket_bio.release(), no_write.release());
  } else {
    BIO* bio = socket_bio.release();
    SSL_set_bio(conn->ssl.get(), bio, bio);  // One reference serves both.
  }
  if (conn->rx == Offload::kUser) {
    // RX stays in OpenSSL for the connection's life (nothing moves it to
    // the kernel later), so no record is meant for the kernel any more:
    // let OpenSSL read ahead, one read(2) a record (or fewer) instead of
    // two (header, then body). What it buffers is delivered by SSL_read,
    // which ReadUser calls before it ever waits for the socket.
    SSL_set_read_ahead(conn->ssl.get(), 1);
  }
  if (conn->ssl && (conn->rx == Offload::kUser || conn->tx == Offload::kUser)) {
    // A direction in OpenSSL for good: its record buffers (some 34 KB with
    // read-ahead) are freed whenever they hold nothing, as nginx does, so
    // an idle keep-alive connection does not keep them.
    SSL_set_mode(conn->ssl.get(), SSL_MODE_RELEASE_BUFFERS);
    // The handshake's buffers go now (kept, and 0 returned, while they
    // hold bytes not yet read).
    (void)SSL_free_buffers(conn->ssl.get());
  }
  conn->tx_fallback = plan.tx_reason;
  conn->rx_fallback = plan.rx_reason;
  if ((conn->tx == Offload::kUser || conn->rx == Offload::kUser) && options.on_fallback) {
    options.on_fallback(OffloadReport{conn->tx, conn->rx, plan.reason, plan.tx_reason, plan.rx_reason});
  }
  return Connection(std::move(conn));
}

Result<void> ValidateOffloadOptions(const OffloadOptions& options) {
  if (options.tx != TxOffload::kOn && options.tx != TxOffload::kOff) {
    return MakeError(ErrorCategory::kUsage, "OffloadOptions::tx is not a TxOffload value");
  }
  if (options.rx != RxOffload::kAuto && options.rx != RxOffload::kOn && options.rx != RxOffload::kOff) {
    return MakeError(ErrorCategory::kUsage, "OffloadOptions::rx is not an RxOffload value");
  }
  if (options.key_update_after_records == 1) {
    // Each key's records would be the KeyUpdate that retires it: writes
    // would send KeyUpdates and never data.
    return MakeError(ErrorCategory::kUsage,
                     "OffloadOptions::key_update_after_records must be 0 (the cipher's limit) or at least 2");
  }
  if (options.linger.time.count() < 0) {
    return MakeError(ErrorCategory::kUsage, "OffloadOptions::linger.time must not be negative");
  }
  if (options.linger.time > kMaxLingerTime) {
    // Import refuses more (ParseMovedState): a connection could move out
    // and never in, nor back when SendConnection takes it back.
    return MakeError(ErrorCategory::kUsage, "OffloadOptions::linger.time must be at most a day (kMaxLingerTime)");
  }
  return {};
}

Result<void> ValidateConfig(const OffloadOptions& offload, std::chrono::milliseconds handshake_timeout,
                            TlsVersion max_version) {
  if (auto valid = ValidateOffloadOptions(offload); !valid) return valid;
  if (handshake_timeout.count() < 0) return MakeError(ErrorCategory::kUsage, "handshake_timeout must not be negative");
  if (max_version != TlsVersion::kTls12 && max_version != TlsVersion::kTls13) {
    return MakeError(ErrorCategory::kUsage, "max_version is not a TlsVersion value");
  }
  return {};
}

}  // namespace detail

Result<void> PrepareContext(SSL_CTX* ctx) { return detail::InstallContextCapture(ctx); }

Result<void> PrepareSsl(SSL* ssl) { return detail::InstallSslCapture(ssl); }

Result<Connection> OffloadSsl(SSL* ssl, const OffloadOptions& options) {
  if (ssl == nullptr) return detail::MakeError(ErrorCategory::kUsage, "OffloadSsl: null SSL");
  if (auto valid = detail::ValidateOffloadOptions(options); !valid) return std::move(valid).error();
  const int fd = SSL_get_fd(ssl);
  if (fd < 0) return detail::MakeError(ErrorCategory::kUsage, "OffloadSsl: the SSL has no socket (SSL_set_fd)");
  if (detail::GetCaptureState(ssl) == nullptr) {
    return detail::MakeError(ErrorCategory::kUsage, "OffloadSsl: the SSL was not prepared (PrepareSsl)");
  }
  if (SSL_is_init_finished(ssl) != 1) {
    return detail::MakeError(ErrorCategory::kUsage, "OffloadSsl: the handshake has not finished");
  }
  // Where sends have no MSG_NOSIGNAL: before the SSL and its socket become
  // the Connection's, so that a failure leaves both with the caller.
  if (const int err = detail::sys::KeepSendsFromSignalling(fd); err < 0) {
    return detail::SysError(-err, "OffloadSsl: setsockopt(SO_NOSIGPIPE)");
  }
  const bool is_server = SSL_is_server(ssl) == 1;
  detail::UniqueFd owned_fd(fd);
  detail::UniqueSsl owned_ssl(ssl);
  // Moved into the Connection, or (failed, nothing offloaded, even by an
  // exception) the caller's still.
  const detail::ScopeExit give_back([&] {
    (void)owned_fd.release();
    (void)owned_ssl.release();
  });
  return detail::OffloadHandshaken(std::move(owned_fd), std::move(owned_ssl), is_server, options);
}

}  // namespace ktls
