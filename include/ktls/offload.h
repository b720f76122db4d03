// ktls/offload.h: offloading a connection whose handshake you ran yourself
// with OpenSSL ("bring your own OpenSSL"), and the options every way of
// making a connection shares.
//
//   SSL_CTX* ctx = ...;                  // your context
//   ktls::PrepareContext(ctx);           // once, before handshakes
//   SSL* ssl = SSL_new(ctx);
//   ktls::PrepareSsl(ssl);               // before the handshake
//   SSL_set_fd(ssl, fd); SSL_accept(ssl);
//   auto conn = ktls::OffloadSsl(ssl, {});  // ktls now owns ssl and fd
#ifndef KTLS_OFFLOAD_H_
#define KTLS_OFFLOAD_H_

#include <openssl/ssl.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "ktls/connection.h"
#include "ktls/export.h"
#include "ktls/result.h"
#include "ktls/types.h"

namespace ktls {

// OffloadReport: told to OffloadOptions::on_fallback when a direction
// stayed in OpenSSL, and why.
struct KTLS_API OffloadReport {
  Offload tx = Offload::kUser;
  Offload rx = Offload::kUser;
  std::string reason;  // Why TX and/or RX stayed in userspace, in words.
  // Each direction's reason (kNone where it went to the kernel). RX goes to
  // the kernel only with TX: where TX stayed, RX has TX's reason.
  FallbackReason tx_reason = FallbackReason::kNone;
  FallbackReason rx_reason = FallbackReason::kNone;
};

// RxOffload: whether the receive direction goes to the kernel.
enum class RxOffload : std::uint8_t {
  // kAuto: where the kernel can install new RX keys (TLS 1.3 KeyUpdate,
  // Linux 6.14 and later), yes; elsewhere no, because a peer's KeyUpdate
  // would end an RX-offloaded connection there. The default.
  kAuto,
  kOn,   // Always (a peer's KeyUpdate then ends the connection on old kernels).
  kOff,  // Never: RX stays in OpenSSL, only TX is offloaded.
};

// TxOffload: whether the send direction (and with it, anything) goes to
// the kernel.
enum class TxOffload : std::uint8_t {
  kOn,   // Where the kernel can (the default).
  kOff,  // Never: the connection stays whole in OpenSSL (to compare, or to
         // switch offload off without changing code paths).
};

// kMaxLingerTime: the longest LingerOptions::time (a day). A longer one is
// a usage error, so that every connection that can be exported can be
// imported again (ParseMovedState refuses a state that says more).
inline constexpr std::chrono::milliseconds kMaxLingerTime = std::chrono::hours(24);

// LingerOptions: what Connection::Close does after ktls ended a connection
// (our close_notify, or a fatal alert) while the peer may still be sending.
// Closing a socket with unread data makes the kernel send a TCP reset, and
// a reset can destroy our alert or close_notify in the peer's receive
// buffer before the peer reads it. So, as nginx's lingering close does,
// ktls first shuts down its write side, then reads and discards what the
// peer still sends, until the peer closes or a budget is spent, and only
// then closes.
struct KTLS_API LingerOptions {
  // time: the longest Close waits for the peer to close, at most
  // kMaxLingerTime. Zero: close at once (the peer may get a reset).
  std::chrono::milliseconds time{2000};
  // max_bytes: the most Close reads and discards before it closes anyway.
  std::size_t max_bytes = 256 * 1024;
};

// OffloadOptions: how to offload. Every way of making a connection checks
// them first and fails with ErrorCategory::kUsage on a value that cannot
// work.
struct KTLS_API OffloadOptions {
  TxOffload tx = TxOffload::kOn;
  RxOffload rx = RxOffload::kAuto;
  // key_update_after_records: send a KeyUpdate before the TX record
  // sequence number reaches this. 0 means the AEAD's limit as ktls sets it:
  // 2^24 records for AES-GCM (RFC 8446 5.5 allows 2^24.5), 2^21 for
  // AES-CCM, never for ChaCha20-Poly1305 (its limit is beyond 2^64 records).
  // On kernels that cannot rekey (and in TLS 1.2), the connection ends
  // before the limit with an internal_error alert instead (never with
  // close_notify, which would make the cut stream look complete). 1 is
  // refused: a KeyUpdate record alone would fill each key.
  std::uint64_t key_update_after_records = 0;
  // keep_peer_certificates: copy the peer's certificate chain (DER) into
  // SessionInfo::peer_certificates, so it outlives the SSL. false leaves it
  // empty and saves the chain's size on every connection (a few hundred
  // bytes to several KiB; with both directions in the kernel it is most of
  // what an idle connection keeps in userspace): for servers that check
  // client certificates during the handshake and need nothing of them
  // afterwards. Everything else in SessionInfo is kept either way.
  bool keep_peer_certificates = true;
  // session_tickets: for a TLS 1.3 client with RX in the kernel, turn the
  // NewSessionTickets the kernel receives into resumable sessions, as
  // OpenSSL does without kTLS: the context's new-session callback
  // (SSL_CTX_sess_set_new_cb) gets each one as an SSL_SESSION. This keeps
  // the SSL (its buffers released) and the peer's offload-time key and IV
  // for the connection's life, or until the peer's first KeyUpdate (RFC
  // 8446 7.2: the old key must go); see the README for the bytes. It is
  // done only where the context stores client sessions
  // (SSL_CTX_set_session_cache_mode with SSL_SESS_CACHE_CLIENT, which
  // ktls::Connect's own context sets when ClientConfig::session_cache is
  // set). false, or a server: nothing is kept, and tickets that arrive
  // after RX offload are dropped (Connection::tickets_dropped). Tickets
  // OpenSSL reads itself (RX in OpenSSL, or before offload) always reach it.
  bool session_tickets = true;
  // rx_expect_no_pad: with TLS 1.3 RX in the kernel, turn on
  // TLS_RX_EXPECT_NO_PAD (Linux 6.0): the kernel then decrypts each data
  // record straight into the reader's buffer, guessing that the peer adds
  // no padding (RFC 8446 5.4), which saves a copy. For a peer known not to
  // pad (OpenSSL does not by default; nor does ktls): a padded record still
  // reads correctly, but is decrypted twice. Done only where the probe
  // found it safe (Capabilities::rx_no_pad; Linux 6.1 returns wrong bytes
  // for padded records with it on); KernelState::rx_no_pad says whether it
  // is on and, if not, why. Off by default.
  bool rx_expect_no_pad = false;
  // on_fallback: called (on the thread that offloads) when a direction could
  // not go to the kernel, with the reason. The connection works anyway.
  std::function<void(const OffloadReport&)> on_fallback;
  // linger: how Close waits for the peer after ktls ended the connection.
  LingerOptions linger;
};

// PrepareContext makes ctx ready for offload: it installs a key-log
// callback that captures each connection's traffic secrets (and calls any
// key-log callback you had set, with the same lines). Call once per
// SSL_CTX, before its handshakes. Idempotent.
KTLS_API Result<void> PrepareContext(SSL_CTX* ctx);

// PrepareSsl makes ssl ready for offload: call before its handshake, after
// PrepareContext on its context. It turns off read-ahead (so OpenSSL never
// reads records meant for the kernel; OffloadSsl turns it back on where RX
// stays in OpenSSL) and OpenSSL's own kTLS, disables TLS 1.3 early data,
// and installs a message callback that counts records for exact sequence
// numbers. It takes over ssl's message callback.
KTLS_API Result<void> PrepareSsl(SSL* ssl);

// OffloadSsl hands a connection whose handshake has completed to the
// kernel, each direction as far as possible. On success the Connection owns
// ssl and its socket (SSL_get_fd(ssl)); once both directions are in the
// kernel, ssl is freed. Fails, leaving ssl and its socket with the caller
// and nothing offloaded, when called wrongly (handshake not finished, ssl
// not prepared, no socket) or out of memory.
KTLS_API Result<Connection> OffloadSsl(SSL* ssl, const OffloadOptions& options);

}  // namespace ktls

#endif  // KTLS_OFFLOAD_H_
