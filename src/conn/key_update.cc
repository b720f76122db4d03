// conn/key_update.cc: TLS 1.3 key updates with a direction in the kernel:
// ours (on request, or at the AEAD limit before a write), the peer's (RX
// rekeyed, an update_requested answered), and those OpenSSL read or wrote
// in mixed mode.
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>

#include <array>
#include <mutex>
#include <optional>
#include <string>

#include "conn/connection_impl.h"
#include "conn/kernel_io.h"
#include "conn/tls_constants.h"
#include "conn/traffic_keys.h"
#include "core/errors.h"
#include "handshake/capture.h"
#include "kernel/syscalls.h"
#include "kernel/tls_uapi.h"
#include "keys/tls13_key_schedule.h"

namespace ktls::detail {

Result<void> ConnectionImpl::UpdateKeys(bool request_peer_update) {
  if (socket.get() < 0) return MakeError(ErrorCategory::kUsage, "UpdateKeys on a closed connection");
  if (failed_ || sent_close_) return MakeError(ErrorCategory::kClosed, "UpdateKeys after the connection ended");
  if (tx == Offload::kKernel) {
    std::lock_guard lock(tx_mu_);
    auto updated = UpdateTxKeyLocked(request_peer_update);
    if (!updated && IsWouldBlock(updated.error())) {
      // The send buffer is full (non-blocking socket): the KeyUpdate goes
      // out ahead of the next write's data.
      if (request_peer_update) tx_update_request_peer_ = true;
      tx_update_pending_ = true;
      return {};
    }
    if (!updated && failed_) (void)Fail(updated.error());
    return updated;
  }
  std::unique_lock lock(ssl_mu_);
  if (SSL_key_update(ssl.get(), request_peer_update ? SSL_KEY_UPDATE_REQUESTED : SSL_KEY_UPDATE_NOT_REQUESTED) != 1) {
    return OpenSslError(ErrorCategory::kUsage, "SSL_key_update");
  }
  for (;;) {
    ERR_clear_error();
    const int ret = SSL_do_handshake(ssl.get());  // Sends the KeyUpdate now.
    if (ret == 1) break;
    const int code = SSL_get_error(ssl.get(), ret);
    if (code != SSL_ERROR_WANT_WRITE && code != SSL_ERROR_WANT_READ) return SslCallError(ssl.get(), ret, "KeyUpdate");
    lock.unlock();
    // Non-blocking and the send buffer is full: OpenSSL keeps the KeyUpdate
    // and sends it ahead of the next write's data.
    if (!WaitFor(code == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN)) return {};
    lock.lock();
  }
  return {};
}

Result<std::uint64_t> ConnectionImpl::KernelRecSeq(int direction) {
  alignas(8) std::array<unsigned char, 64> info{};
  socklen_t len = CryptoInfoSize(cipher);  // The kernel wants exactly this.
  const int rc = sys::GetSockOpt(socket.get(), uapi::kSolTls, direction, info.data(), &len);
  const std::optional<std::uint64_t> seq = rc == 0 ? RecSeqOf(info.data(), len) : std::nullopt;
  OPENSSL_cleanse(info.data(), info.size());  // The kernel returns the key too.
  const std::string what = direction == uapi::kTlsTx ? "getsockopt(TLS_TX)" : "getsockopt(TLS_RX)";
  if (rc != 0) return SysError(-rc, what + " for the record sequence number");
  if (!seq) return MakeError(ErrorCategory::kInternal, what + " returned an unknown crypto_info");
  return *seq;
}

Result<void> ConnectionImpl::UpdateTxKeyLocked(bool request_peer_update) {
  if (version == TlsVersion::kTls12) return MakeError(ErrorCategory::kUnsupported, "TLS 1.2 has no key updates");
  if (!kernel_rekey) {
    return MakeError(ErrorCategory::kUnsupported, "this kernel cannot install new TX keys (needs Linux 6.14)");
  }
  // Everything that can fail is done before the KeyUpdate goes out.
  auto next = NextTls13TrafficSecret(cipher, tx_secret.bytes());
  if (!next.ok()) return std::move(next).error();
  auto info = PackTls13Direction(cipher, *next, 0);
  if (!info.ok()) return std::move(info).error();
  const std::array<unsigned char, 5> key_update{
      kHandshakeKeyUpdate, 0, 0, 1, request_peer_update ? kKeyUpdateRequested : kKeyUpdateNotRequested};
  if (auto sent = SendKernelControlRecord(uapi::kRecordHandshake, key_update); !sent) return sent;
  tx_open_record_ = 0;  // kTLS pushed the open data record first.
  // The peer now expects the next key: if the kernel refused it, nothing
  // more can be sent on this connection.
  const int rc = sys::SetSockOpt(socket.get(), uapi::kSolTls, uapi::kTlsTx, info->data(), info->size());
  if (rc != 0) {
    failed_ = true;
    return SysError(-rc, "setsockopt(TLS_TX) with the updated key, after sending KeyUpdate");
  }
  tx_secret = *next;
  tx_records_bound_ = 0;
  ++tx_key_updates;
  return {};
}

Result<void> ConnectionImpl::BeforeKernelWrite(std::size_t* len) {
  if (const int warning = tx_warning_pending_.exchange(0); warning != 0) {
    if (auto sent = SendPendingWarningLocked(warning); !sent) return sent;
  }
  if (tx_update_pending_.exchange(false)) {
    const bool request_peer_update = tx_update_request_peer_.exchange(false);
    if (auto updated = UpdateTxKeyLocked(request_peer_update); !updated) {
      if (IsWouldBlock(updated.error())) {  // Still owed; nothing was sent.
        if (request_peer_update) tx_update_request_peer_ = true;
        tx_update_pending_ = true;
      }
      return updated;
    }
  }
  if (key_update_threshold == 0 || tx_records_bound_ + MaxRecordsFor(*len) < key_update_threshold) return {};
  // Near the limit: ask the kernel for the exact count (it includes the
  // records sendfile made).
  auto seq = KernelRecSeq(uapi::kTlsTx);
  if (!seq.ok()) return std::move(seq).error();
  tx_records_bound_ = *seq;
  if (*seq + 2 > key_update_threshold) {
    if (!kernel_rekey) {
      // Ending is the only safe way on, and the alert still fits under the
      // limit. Not close_notify: the peer must not take a stream cut short
      // for a complete one.
      SendFatalAlert(kAlertInternalError);
      return AlertError(ErrorCategory::kUnsupported, kAlertInternalError,
                        "TX reached " + std::to_string(*seq) + " records under one key, the AEAD limit ktls keeps, " +
                            (version == TlsVersion::kTls12 ? std::string("and TLS 1.2 has no key updates")
                                                           : std::string("and this kernel cannot rekey (needs Linux 6.14)")) +
                            "; sent");
    }
    if (auto updated = UpdateTxKeyLocked(false); !updated) return updated;
  }
  // Keep this write's records under the limit: a write of L bytes makes at
  // most MaxRecordsFor(L) records.
  const std::uint64_t room = key_update_threshold - tx_records_bound_;
  if (MaxRecordsFor(*len) > room) *len = static_cast<std::size_t>((room - 1) * kMaxRecordPlaintext);
  return {};
}

Result<void> ConnectionImpl::AnswerPeerKeyUpdate() {
  // After our close_notify (or a fatal alert) nothing more goes out, and
  // no answer is owed: RFC 8446 4.6.3 wants it before our next application
  // data. Sending one anyway would put a record after close_notify, on a
  // socket already shut down for writing.
  if (sent_close_) return {};
  tx_update_pending_ = true;
  std::unique_lock lock(tx_mu_, std::try_to_lock);
  if (!lock.owns_lock()) return {};  // A write (or Shutdown) is in progress; a write answers first.
  if (!tx_update_pending_.exchange(false) || sent_close_) return {};
  auto updated = UpdateTxKeyLocked(false);
  if (!updated && IsWouldBlock(updated.error())) {
    tx_update_pending_ = true;  // The send buffer is full: the next write answers.
    return {};
  }
  return updated;
}

Result<void> ConnectionImpl::ResumeRx() {
  auto seq = KernelRecSeq(uapi::kTlsRx);
  if (!seq.ok()) {
    SendFatalAlert(kAlertInternalError);
    return std::move(seq).error();
  }
  auto info = PackTls13Direction(cipher, rx_secret, *seq);
  if (!info.ok()) return std::move(info).error();
  const int rc = sys::SetSockOpt(socket.get(), uapi::kSolTls, uapi::kTlsRx, info->data(), info->size());
  if (rc != 0) {
    SendFatalAlert(kAlertInternalError);
    return SysError(-rc, "setsockopt(TLS_RX) with the same key, to resume RX the kernel paused");
  }
  return {};
}

Result<void> ConnectionImpl::RekeyRx() {
  auto next = NextTls13TrafficSecret(cipher, rx_secret.bytes());
  if (!next.ok()) return std::move(next).error();
  auto info = PackTls13Direction(cipher, *next, 0);
  if (!info.ok()) return std::move(info).error();
  const int rc = sys::SetSockOpt(socket.get(), uapi::kSolTls, uapi::kTlsRx, info->data(), info->size());
  if (rc != 0) {
    SendFatalAlert(kAlertInternalError);
    return SysError(-rc, "setsockopt(TLS_RX) with the peer's updated key");
  }
  rx_secret = *next;
  ++rx_key_updates;
  // RFC 8446 7.2: once the next key is in use, delete the old one. The
  // ticket relay holds it (and so does the SSL it feeds).
  DropTicketRelay("the ticket came after the peer's KeyUpdate, which retired the key OpenSSL reads with");
  return {};
}

std::optional<Result<IoProgress>> ConnectionImpl::HandleOpenSslWrites() {
  CaptureState* state = GetCaptureState(ssl.get());
  if (state == nullptr) return Fail(MakeError(ErrorCategory::kInternal, "OpenSSL wrote, and its state is gone"));
  if (state->written_alerts > 0) {
    // OpenSSL hit an error and sent an alert: relay it, unless our
    // close_notify (or an alert) already went out, which nothing follows.
    // SSL_read fails too.
    state->written_alerts = 0;
    const std::array<unsigned char, 2> alert{state->last_written_alert[0], state->last_written_alert[1]};
    if (alert[0] == kAlertLevelWarning) {
      // A warning (no_renegotiation, for a TLS 1.2 peer that tried to
      // renegotiate): the connection goes on.
      if (auto sent = SendWarningAlert(alert[1]); !sent) return Fail(std::move(sent).error());
      return std::nullopt;
    }
    SendFatalAlert(alert[1]);
    return std::nullopt;
  }
  if (state->written_key_updates > 0) {
    // OpenSSL's own answer to a peer's update_requested, discarded:
    // AnswerOpenSslKeyUpdates already answered through the kernel.
    state->written_key_updates = 0;
    return std::nullopt;
  }
  return Fail(MakeError(ErrorCategory::kInternal, "OpenSSL wrote a record ktls cannot relay"));
}

std::optional<Result<IoProgress>> ConnectionImpl::AnswerOpenSslKeyUpdates() {
  CaptureState* state = GetCaptureState(ssl.get());
  if (state == nullptr || state->read_update_requests == answered_update_requests_) return std::nullopt;
  // One KeyUpdate of ours answers every request received so far.
  answered_update_requests_ = state->read_update_requests;
  if (sent_close_) return std::nullopt;  // We send nothing more: no answer is owed (see AnswerPeerKeyUpdate).
  if (!kernel_rekey) {
    // Not close_notify: the peer must not take a stream cut short for a
    // complete one.
    SendFatalAlert(kAlertInternalError);
    return Fail(AlertError(ErrorCategory::kUnsupported, kAlertInternalError,
                           "the peer asked for a key update (update_requested) and this kernel cannot install new "
                           "TX keys (needs Linux 6.14); sent"));
  }
  if (auto answered = AnswerPeerKeyUpdate(); !answered) return Fail(std::move(answered).error());
  return std::nullopt;
}

}  // namespace ktls::detail
