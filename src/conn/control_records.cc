// conn/control_records.cc: the non-data records the kernel hands over with
// RX in kTLS: alerts, post-handshake messages (KeyUpdate, NewSessionTicket,
// a TLS 1.2 renegotiation attempt), answered as OpenSSL 3 answers them.
#include <openssl/err.h>
#include <openssl/ssl.h>

#include <cstddef>
#include <mutex>
#include <string>

#include "conn/connection_impl.h"
#include "conn/tls_constants.h"
#include "core/errors.h"
#include "handshake/capture.h"
#include "kernel/tls_uapi.h"

namespace ktls::detail {
namespace {

// The largest body OpenSSL accepts for each post-handshake message (its
// *_MAX_LENGTH constants); a larger one is refused with illegal_parameter,
// as OpenSSL does, before ktls buffers it.
constexpr std::size_t kMaxKeyUpdateLen = 1;
constexpr std::size_t kMaxNewSessionTicketLen = 131338;
// OpenSSL ends a connection at the fifth warning alert in a row
// (MAX_WARN_ALERT_COUNT) with unexpected_message; so does ktls.
constexpr int kMaxWarningAlertsInARow = 5;

}  // namespace

std::optional<Result<IoProgress>> ConnectionImpl::HandleControlRecord(unsigned char type,
                                                                      std::span<const std::byte> bytes,
                                                                      bool record_end) {
  // What ktls answers is what OpenSSL 3 answers to the same record, so a
  // peer sees the same alert whichever side holds RX (see the README's
  // table of alerts).
  if (type == uapi::kRecordAlert) {
    for (std::byte b : bytes) alert_bytes_.push_back(static_cast<unsigned char>(b));
    if (!record_end && alert_bytes_.size() <= 2) return std::nullopt;  // The rest of the record comes next.
    if (alert_bytes_.size() != 2) {
      // An alert record holds exactly one alert (RFC 8446 5.1 forbids
      // fragmenting or coalescing them); OpenSSL answers any other length,
      // 0 included, with unexpected_message.
      const std::size_t len = alert_bytes_.size();
      alert_bytes_.clear();
      SendFatalAlert(kAlertUnexpectedMessage);
      return Fail(AlertError(ErrorCategory::kProtocol, kAlertUnexpectedMessage,
                             "an alert record of " + std::to_string(len) + " bytes (an alert is 2)"));
    }
    const int level = alert_bytes_[0];
    const int description = alert_bytes_[1];
    alert_bytes_.clear();
    // OpenSSL counts every warning-level alert (and TLS 1.3 user_canceled
    // at any level) before it looks at what it says, close_notify
    // included, and ends the connection at the fifth in a row.
    const bool counted = level == kAlertLevelWarning ||
                         (version == TlsVersion::kTls13 && description == kAlertUserCanceled);
    if (counted && ++warning_alerts_in_a_row_ >= kMaxWarningAlertsInARow) {
      SendFatalAlert(kAlertUnexpectedMessage);
      return Fail(AlertError(ErrorCategory::kProtocol, kAlertUnexpectedMessage,
                             "the peer sent " + std::to_string(kMaxWarningAlertsInARow) + " warning alerts in a row"));
    }
    // TLS 1.3 alerts have no meaningful level (RFC 8446 6): OpenSSL takes
    // close_notify at any. In TLS 1.2 only a warning close_notify closes;
    // a fatal one ends the connection as any fatal alert does, and one of
    // another level is refused below, as OpenSSL does.
    if (description == kAlertCloseNotify && (version == TlsVersion::kTls13 || level == kAlertLevelWarning)) {
      peer_closed = true;
      return IoProgress{0, false, true};
    }
    // Warnings that do not end the connection: user_canceled in TLS 1.3
    // (RFC 8446 6.1), any warning in TLS 1.2. OpenSSL ignores them.
    const bool warning = version == TlsVersion::kTls13 ? description == kAlertUserCanceled
                                                       : level == kAlertLevelWarning;
    if (warning && description == kAlertNoRenegotiation) {
      // We never renegotiate, so this answers nothing we sent; OpenSSL
      // takes it as a failed renegotiation.
      SendFatalAlert(kAlertHandshakeFailure);
      return Fail(AlertError(ErrorCategory::kProtocol, kAlertHandshakeFailure,
                             "the peer sent no_renegotiation, and no renegotiation was asked for"));
    }
    if (warning) return std::nullopt;
    if (version == TlsVersion::kTls12 && level != kAlertLevelFatal) {
      SendFatalAlert(kAlertIllegalParameter);
      return Fail(AlertError(ErrorCategory::kProtocol, kAlertIllegalParameter,
                             "an alert of unknown level " + std::to_string(level)));
    }
    return Fail(AlertError(ErrorCategory::kAlert, description, "the peer sent an alert"));
  }
  // OpenSSL counts warnings in a row up to a record that is not empty: an
  // empty handshake record between them does not reset the count.
  if (!bytes.empty()) warning_alerts_in_a_row_ = 0;
  if (type != uapi::kRecordHandshake) {
    SendFatalAlert(kAlertUnexpectedMessage);
    return Fail(AlertError(ErrorCategory::kProtocol, kAlertUnexpectedMessage,
                           "unexpected record type " + std::to_string(type) + " after the handshake"));
  }
  if (version == TlsVersion::kTls13 && bytes.empty() && record_end && handshake_record_len_ == 0) {
    // RFC 8446 5.1: no zero-length handshake records (TLS 1.2 allows them,
    // and OpenSSL skips them there).
    SendFatalAlert(kAlertUnexpectedMessage);
    return Fail(AlertError(ErrorCategory::kProtocol, kAlertUnexpectedMessage, "an empty handshake record"));
  }
  handshake_record_len_ = record_end ? 0 : handshake_record_len_ + bytes.size();
  if (discard_handshake_record_) {
    // The rest of a record that held a refused renegotiation.
    if (record_end) discard_handshake_record_ = false;
    return std::nullopt;
  }
  for (std::byte b : bytes) handshake_bytes_.push_back(static_cast<unsigned char>(b));
  // Consume every complete message; keep a partial one for the next record.
  while (handshake_bytes_.size() >= kHandshakeHeaderLen) {
    const unsigned char msg_type = handshake_bytes_[0];
    const std::size_t body_len = std::size_t{handshake_bytes_[1]} << 16 | std::size_t{handshake_bytes_[2]} << 8 |
                                 std::size_t{handshake_bytes_[3]};
    // As OpenSSL does: the type is checked on the header, then the length,
    // before the body is waited for.
    if (version == TlsVersion::kTls12 && msg_type == (is_server ? kHandshakeClientHello : kHandshakeHelloRequest)) {
      if (!is_server && body_len != 0) {
        // OpenSSL checks the length on the header, with illegal_parameter.
        SendFatalAlert(kAlertIllegalParameter);
        return Fail(AlertError(ErrorCategory::kProtocol, kAlertIllegalParameter, "a HelloRequest with a body"));
      }
      // Renegotiation is refused from the start (SSL_OP_NO_RENEGOTIATION):
      // like OpenSSL, warn with no_renegotiation, drop the rest of the
      // record and go on.
      handshake_bytes_.clear();
      discard_handshake_record_ = !record_end;
      if (auto sent = SendWarningAlert(kAlertNoRenegotiation); !sent) return Fail(std::move(sent).error());
      ++renegotiations_refused;
      return std::nullopt;
    }
    std::size_t max_len = 0;
    if (version == TlsVersion::kTls13 && msg_type == kHandshakeKeyUpdate) {
      max_len = kMaxKeyUpdateLen;
    } else if (version == TlsVersion::kTls13 && msg_type == kHandshakeNewSessionTicket && !is_server) {
      max_len = kMaxNewSessionTicketLen;
    } else {
      handshake_bytes_.clear();
      SendFatalAlert(kAlertUnexpectedMessage);
      return Fail(AlertError(ErrorCategory::kProtocol, kAlertUnexpectedMessage,
                             "unexpected handshake message type " + std::to_string(msg_type) +
                                 " after the handshake"));
    }
    if (body_len > max_len) {
      handshake_bytes_.clear();
      SendFatalAlert(kAlertIllegalParameter);
      return Fail(AlertError(ErrorCategory::kProtocol, kAlertIllegalParameter,
                             "a post-handshake message of type " + std::to_string(msg_type) + " and " +
                                 std::to_string(body_len) + " bytes, more than it can have"));
    }
    const std::size_t message_len = kHandshakeHeaderLen + body_len;
    if (handshake_bytes_.size() < message_len) return std::nullopt;
    if (msg_type == kHandshakeNewSessionTicket) {
      auto done = HandleSessionTicket(std::span<const unsigned char>(handshake_bytes_).first(message_len));
      handshake_bytes_.erase(handshake_bytes_.begin(),
                             handshake_bytes_.begin() + static_cast<std::ptrdiff_t>(message_len));
      if (done) return done;
      continue;
    }
    const unsigned char body_first_byte = body_len > 0 ? handshake_bytes_[kHandshakeHeaderLen] : 0;
    handshake_bytes_.erase(handshake_bytes_.begin(), handshake_bytes_.begin() + static_cast<std::ptrdiff_t>(message_len));
    // KeyUpdate. Keys change at record boundaries (RFC 8446 5.1); OpenSSL
    // checks that first, then the body.
    if (!handshake_bytes_.empty() || !record_end) {
      SendFatalAlert(kAlertUnexpectedMessage);
      return Fail(AlertError(ErrorCategory::kProtocol, kAlertUnexpectedMessage,
                             "a KeyUpdate that does not end its record"));
    }
    if (body_len != 1) {
      SendFatalAlert(kAlertDecodeError);
      return Fail(AlertError(ErrorCategory::kProtocol, kAlertDecodeError, "malformed KeyUpdate"));
    }
    const unsigned char request = body_first_byte;
    if (request != kKeyUpdateNotRequested && request != kKeyUpdateRequested) {
      SendFatalAlert(kAlertIllegalParameter);
      return Fail(AlertError(ErrorCategory::kProtocol, kAlertIllegalParameter, "KeyUpdate with an invalid request"));
    }
    if (!kernel_rekey) {
      // The kernel keeps decrypting with the old key; everything after
      // this record would fail (the lingering close must not read it
      // either). End here, naming why.
      rx_kernel_failed_ = true;
      SendFatalAlert(kAlertInternalError);
      return Fail(AlertError(ErrorCategory::kUnsupported, kAlertInternalError,
                             "the peer sent a TLS 1.3 KeyUpdate, and this kernel cannot install new RX keys "
                             "(needs Linux 6.14); RxOffload::kAuto keeps RX in OpenSSL on such kernels; sent"));
    }
    if (auto rekeyed = RekeyRx(); !rekeyed) {
      rx_kernel_failed_ = true;  // The kernel holds the retired key.
      return Fail(std::move(rekeyed).error());
    }
    if (request == kKeyUpdateRequested) {
      if (auto answered = AnswerPeerKeyUpdate(); !answered) return Fail(std::move(answered).error());
    }
  }
  return std::nullopt;
}

std::optional<Result<IoProgress>> ConnectionImpl::RefuseDataInsideMessage() {
  if (!MessageIsPartial()) return std::nullopt;
  handshake_bytes_.clear();
  SendFatalAlert(kAlertUnexpectedMessage);
  return Fail(AlertError(ErrorCategory::kProtocol, kAlertUnexpectedMessage,
                         "a data record inside a post-handshake message; nothing of it was delivered"));
}

std::optional<Result<IoProgress>> ConnectionImpl::HandleSessionTicket(std::span<const unsigned char> message) {
  // A ticket after our close_notify is relayed too: OpenSSL 3 still makes
  // a session of it then.
  if (!ticket_relay) {
    ++tickets_dropped;
    tickets_dropped_reason = no_relay_reason != nullptr ? no_relay_reason : "no session could be made of it";
    return std::nullopt;
  }
  std::lock_guard lock(ssl_mu_);
  auto delivered = ticket_relay->Deliver(message);
  if (delivered) {
    ++tickets_relayed;
    return std::nullopt;
  }
  // OpenSSL refused the ticket, as it would have without kTLS, and wrote
  // the alert it sends for it: relay that alert and end with its name.
  Error error = std::move(delivered).error();
  if (openssl_write_attempted) {
    openssl_write_attempted = false;
    (void)HandleOpenSslWrites();
  }
  if (const CaptureState* state = GetCaptureState(ssl.get());
      state != nullptr && state->last_written_alert[0] == kAlertLevelFatal) {
    error.category = ErrorCategory::kProtocol;
    error.tls_alert = state->last_written_alert[1];
    error.detail += " (" + std::string(AlertName(error.tls_alert)) + ")";
  } else {
    SendFatalAlert(kAlertInternalError);
  }
  ERR_clear_error();
  return Fail(std::move(error));
}

void ConnectionImpl::DropTicketRelay(const char* reason) {
  std::lock_guard lock(ssl_mu_);
  if (!ticket_relay) return;
  ticket_relay.reset();
  no_relay_reason = reason;
  if (tx == Offload::kKernel && rx == Offload::kKernel && ssl) {
    // The SSL was kept only for tickets. Its session stays good (see
    // offload.cc for why it is marked shut down).
    SSL_set_shutdown(ssl.get(), SSL_get_shutdown(ssl.get()) | SSL_SENT_SHUTDOWN);
    ssl.reset();
  }
}

}  // namespace ktls::detail
