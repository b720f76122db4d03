// conn/connection.cc: reading and writing on a connection in each offload
// state.
#include <openssl/err.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <cstring>
#include <string>

#include "conn/connection_impl.h"
#include "conn/kernel_io.h"
#include "conn/traffic_keys.h"
#include "handshake/capture.h"
#include "core/errors.h"
#include "keys/tls13_key_schedule.h"
#include "kernel/syscalls.h"
#include "kernel/tls_uapi.h"

namespace ktls {
namespace detail {
namespace {

// TLS alert descriptions ktls sends or names (RFC 8446 6).
constexpr int kAlertCloseNotify = 0;
constexpr int kAlertUnexpectedMessage = 10;
constexpr int kAlertBadRecordMac = 20;
constexpr int kAlertRecordOverflow = 22;
constexpr int kAlertHandshakeFailure = 40;
constexpr int kAlertIllegalParameter = 47;
constexpr int kAlertDecodeError = 50;
constexpr int kAlertProtocolVersion = 70;
constexpr int kAlertInternalError = 80;
constexpr int kAlertUserCanceled = 90;
constexpr int kAlertNoRenegotiation = 100;
constexpr unsigned char kAlertLevelWarning = 1;
constexpr unsigned char kAlertLevelFatal = 2;

// Post-handshake messages a peer may send (RFC 8446 4), and TLS 1.2's
// renegotiation openers (RFC 5246 7.4).
constexpr unsigned char kHandshakeHelloRequest = 0;
constexpr unsigned char kHandshakeClientHello = 1;
constexpr unsigned char kHandshakeNewSessionTicket = 4;
constexpr unsigned char kHandshakeKeyUpdate = 24;
constexpr std::size_t kHandshakeHeaderLen = 4;
// The largest body OpenSSL accepts for each post-handshake message (its
// *_MAX_LENGTH constants); a larger one is refused with illegal_parameter,
// as OpenSSL does, before ktls buffers it.
constexpr std::size_t kMaxKeyUpdateLen = 1;
constexpr std::size_t kMaxNewSessionTicketLen = 131338;
// OpenSSL ends a connection at the fifth warning alert in a row
// (MAX_WARN_ALERT_COUNT) with unexpected_message; so does ktls.
constexpr int kMaxWarningAlertsInARow = 5;

// sendfile with TX in OpenSSL reads the file in pieces of one record.
constexpr std::size_t kUserSendFileChunk = 16 * 1024;

// The largest TLS plaintext record (RFC 8446 5.1).
constexpr std::size_t kMaxRecordPlaintext = 16 * 1024;

// MaxRecordsFor bounds the records one write of len bytes makes: full
// records first, one more for a record left open by the previous write.
std::uint64_t MaxRecordsFor(std::size_t len) { return (len + kMaxRecordPlaintext - 1) / kMaxRecordPlaintext + 1; }

// KeyUpdate (RFC 8446 4.6.3): handshake type 24, a 1-byte body.
constexpr unsigned char kKeyUpdateNotRequested = 0;
constexpr unsigned char kKeyUpdateRequested = 1;

// Blocked: no progress now; call again once the socket is ready for `wait`.
IoProgress Blocked(Wait wait) { return IoProgress{0, true, false, wait}; }

}  // namespace

ConnectionImpl::ConnectionImpl(UniqueFd fd, UniqueSsl ssl_in, bool server)
    : socket(std::move(fd)), ssl(std::move(ssl_in)), is_server(server) {}

Result<IoProgress> ConnectionImpl::Fail(Error error) {
  failed_ = true;
  return error;
}

Result<IoProgress> ConnectionImpl::Read(std::span<std::byte> buf) {
  if (socket.get() < 0) return MakeError(ErrorCategory::kUsage, "read on a closed connection");
  if (early_plaintext_offset < early_plaintext.size()) {
    const std::size_t n = std::min(buf.size(), early_plaintext.size() - early_plaintext_offset);
    std::memcpy(buf.data(), early_plaintext.data() + early_plaintext_offset, n);
    early_plaintext_offset += n;
    if (early_plaintext_offset == early_plaintext.size()) {
      early_plaintext.clear();
      early_plaintext.shrink_to_fit();
      early_plaintext_offset = 0;
    }
    return IoProgress{n, false, false};
  }
  if (peer_closed) return IoProgress{0, false, true};
  if (failed_) return MakeError(ErrorCategory::kClosed, "read after the connection failed");
  if (buf.empty()) return IoProgress{};
  return rx == Offload::kKernel ? ReadKernel(buf) : ReadUser(buf);
}

bool ConnectionImpl::WaitFor(short events) {
  const int flags = ::fcntl(socket.get(), F_GETFL);
  if (flags < 0 || (flags & O_NONBLOCK) != 0) return false;
  // Wait no longer than a blocking recvmsg/sendmsg would: the kernel path
  // honours SO_RCVTIMEO/SO_SNDTIMEO, so the OpenSSL path must too.
  timeval tv{};
  socklen_t len = sizeof(tv);
  int timeout_ms = -1;
  if (sys::GetSockOpt(socket.get(), SOL_SOCKET, events == POLLIN ? SO_RCVTIMEO : SO_SNDTIMEO, &tv, &len) == 0 &&
      (tv.tv_sec != 0 || tv.tv_usec != 0)) {
    timeout_ms = static_cast<int>(std::min<long long>(tv.tv_sec * 1000LL + tv.tv_usec / 1000, INT_MAX));
  }
  pollfd pfd{socket.get(), events, 0};
  int rc;
  while ((rc = ::poll(&pfd, 1, timeout_ms)) < 0 && errno == EINTR) {
  }
  return rc > 0;  // Timed out: the caller reports would_block, as recvmsg would.
}

Result<IoProgress> ConnectionImpl::ReadUser(std::span<std::byte> buf) {
  for (;;) {
    std::unique_lock lock(ssl_mu_);
    std::size_t n = 0;
    ERR_clear_error();
    errno = 0;
    const int ret = SSL_read_ex(ssl.get(), buf.data(), buf.size(), &n);
    if (tx == Offload::kKernel) {
      if (auto done = AnswerOpenSslKeyUpdates()) {
        ERR_clear_error();
        return std::move(*done);
      }
    }
    if (ret == 1 && !openssl_write_attempted) return IoProgress{n, false, false};
    const int code = ret == 1 ? SSL_ERROR_NONE : SSL_get_error(ssl.get(), ret);
    if (code == SSL_ERROR_ZERO_RETURN) {
      peer_closed = true;
      return IoProgress{0, false, true};
    }
    if (openssl_write_attempted) {
      // TX is in the kernel: what OpenSSL meant to send goes out from here.
      openssl_write_attempted = false;
      if (auto done = HandleOpenSslWrites()) {
        ERR_clear_error();
        return std::move(*done);
      }
      if (ret == 1) return IoProgress{n, false, false};
    }
    if (code == SSL_ERROR_WANT_READ || code == SSL_ERROR_WANT_WRITE) {
      lock.unlock();
      if (!WaitFor(code == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT)) {
        return Blocked(code == SSL_ERROR_WANT_READ ? Wait::kReadable : Wait::kWritable);
      }
      continue;
    }
    Error error = SslCallError(ssl.get(), ret, "SSL_read");
    if (error.category == ErrorCategory::kTruncated) return Fail(EndWithoutCloseNotify(std::move(error)));
    if (const CaptureState* state = GetCaptureState(ssl.get());
        error.category == ErrorCategory::kProtocol && error.tls_alert < 0 && state != nullptr &&
        state->last_written_alert[0] == kAlertLevelFatal) {
      // OpenSSL refused the peer's input and sent a fatal alert (itself, or
      // through the kernel, HandleOpenSslWrites): name it, as the kernel
      // path does.
      error.tls_alert = state->last_written_alert[1];
      error.detail += " (" + std::string(AlertName(error.tls_alert)) + ")";
    }
    return Fail(std::move(error));
  }
}

Result<IoProgress> ConnectionImpl::ReadKernel(std::span<std::byte> buf) {
  for (;;) {
    const KernelRecv got = RecvKernelRecord(socket.get(), buf, 0);
    const ssize_t n = got.n;
    if (n < 0) {
      const int err = static_cast<int>(-n);
      if (WouldBlock(err)) return Blocked(Wait::kReadable);
      // Past any other error the kernel cannot hand over another record
      // (6.1 even decrypts the bad one again at every call): the lingering
      // close must not read through it.
      rx_kernel_failed_ = !(err == EKEYEXPIRED && kernel_rekey);
      if (err == EBADMSG) {
        SendFatalAlert(kAlertBadRecordMac);
        return Fail(AlertError(ErrorCategory::kProtocol, kAlertBadRecordMac,
                               "a record failed authentication; nothing of it was delivered"));
      }
      if (err == EKEYEXPIRED && kernel_rekey) {
        // The kernel pauses RX after every handshake record whose first
        // byte is 24, KeyUpdate's type (net/tls tls_check_pending_rekey): it
        // cannot see where messages start when one spans records. A whole
        // KeyUpdate was re-keyed when its record was read (RekeyRx), so this
        // pause came from a fragment: a byte inside another message (a
        // NewSessionTicket sent one byte a record), or the start of a
        // KeyUpdate. Go on under the same key.
        if (auto resumed = ResumeRx(); !resumed) return Fail(std::move(resumed).error());
        continue;
      }
      if (err == EKEYEXPIRED) {
        // A pause on a kernel that cannot rekey: nothing can be decrypted
        // any more.
        SendFatalAlert(kAlertInternalError);
        return Fail(AlertError(ErrorCategory::kInternal, kAlertInternalError,
                               "the kernel paused RX for a key update ktls did not expect; sent"));
      }
      if (err == EMSGSIZE) {
        SendFatalAlert(kAlertRecordOverflow);
        return Fail(AlertError(ErrorCategory::kProtocol, kAlertRecordOverflow, "the peer sent an oversized record"));
      }
      if (err == EINVAL) {
        // The kernel's record parser refused a header whose version is not
        // 0x0303 (net/tls tls_rx_msg_size): bytes that are no TLS record.
        // OpenSSL answers the same bytes with protocol_version, and so does
        // ktls, whichever side RX is on.
        SendFatalAlert(kAlertProtocolVersion);
        return Fail(AlertError(ErrorCategory::kProtocol, kAlertProtocolVersion,
                               "the peer sent bytes that are not a TLS record (a record header with a wrong version)"));
      }
      return Fail(SysError(err, "recvmsg on the kTLS socket"));
    }
    // A record type came with every record the call returned; no control
    // message at all means the end of the stream.
    const unsigned char type = got.type;
    if (n == 0 && !got.typed) {
      return Fail(EndWithoutCloseNotify(
          MakeError(ErrorCategory::kTruncated, "the peer closed the connection without close_notify")));
    }
    if (type == uapi::kRecordApplicationData) {
      // Zero-length application data records are legal (RFC 8446 5.1) and
      // carry nothing: read on. (The kernel returns 0 for one only when a
      // record of another type follows it.)
      if (n == 0) continue;
      warning_alerts_in_a_row_ = 0;
      return IoProgress{static_cast<std::size_t>(n), false, false};
    }
    // kTLS returns a control record alone, and sets MSG_EOR once its last
    // byte was returned (a buffer smaller than the record gets the rest in
    // the following calls): record boundaries are exact.
    if (auto done = HandleControlRecord(type, buf.first(static_cast<std::size_t>(n)), got.record_end)) {
      return std::move(*done);
    }
  }
}

std::optional<Error> ConnectionImpl::SendWentNowhere(std::size_t len) {
  // kTLS (6.1, 7.2) on a socket that can no longer send: sendmsg and
  // sendfile copy the bytes into a record, fail to push it, and return the
  // count anyway (the push's error is swallowed; sendfile also raises
  // SIGPIPE). Each later call does the same, so a server would "send" a
  // whole file to a client that is gone. TCP's state tells: only
  // ESTABLISHED and CLOSE_WAIT can still send. One getsockopt, reading one
  // byte of tcp_info.
  unsigned char state = 0;
  socklen_t state_len = sizeof(state);
  if (sys::GetSockOpt(socket.get(), IPPROTO_TCP, TCP_INFO, &state, &state_len) != 0 || state_len != 1 ||
      state == TCP_ESTABLISHED || state == TCP_CLOSE_WAIT) {
    return std::nullopt;
  }
  const std::string lost = "the kernel took " + std::to_string(len) + " bytes it cannot send";
  if (state == TCP_CLOSE) return SysError(ECONNRESET, "send: the peer reset the connection; " + lost);
  return SysError(EPIPE, "send: the socket can no longer send; " + lost);
}

Error ConnectionImpl::EndWithoutCloseNotify(Error truncated) {
  peer_eof_ = true;
  // A FIN leaves our socket in CLOSE_WAIT (our side is still open); a reset
  // leaves it in CLOSE. Once we sent our own FIN, CLOSE is a normal end too.
  tcp_info info{};
  socklen_t len = sizeof(info);
  if (!sent_close_ && sys::GetSockOpt(socket.get(), IPPROTO_TCP, TCP_INFO, &info, &len) == 0 && len > 0 &&
      info.tcpi_state == TCP_CLOSE) {
    return SysError(ECONNRESET, "read: the peer reset the connection");
  }
  return truncated;
}

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
    if (description == kAlertCloseNotify) {
      peer_closed = true;
      return IoProgress{0, false, true};
    }
    // Warnings that do not end the connection: user_canceled in TLS 1.3
    // (RFC 8446 6.1), any warning in TLS 1.2. OpenSSL ignores them, up to
    // a limit.
    const bool warning = version == TlsVersion::kTls13 ? description == kAlertUserCanceled
                                                       : level == kAlertLevelWarning;
    if (warning && description == kAlertNoRenegotiation) {
      // We never renegotiate, so this answers nothing we sent; OpenSSL
      // takes it as a failed renegotiation.
      SendFatalAlert(kAlertHandshakeFailure);
      return Fail(AlertError(ErrorCategory::kProtocol, kAlertHandshakeFailure,
                             "the peer sent no_renegotiation, and no renegotiation was asked for"));
    }
    if (warning) {
      if (++warning_alerts_in_a_row_ < kMaxWarningAlertsInARow) return std::nullopt;
      SendFatalAlert(kAlertUnexpectedMessage);
      return Fail(AlertError(ErrorCategory::kProtocol, kAlertUnexpectedMessage,
                             "the peer sent " + std::to_string(kMaxWarningAlertsInARow) + " warning alerts in a row"));
    }
    if (version == TlsVersion::kTls12 && level != kAlertLevelFatal) {
      SendFatalAlert(kAlertIllegalParameter);
      return Fail(AlertError(ErrorCategory::kProtocol, kAlertIllegalParameter,
                             "an alert of unknown level " + std::to_string(level)));
    }
    return Fail(AlertError(ErrorCategory::kAlert, description, "the peer sent an alert"));
  }
  warning_alerts_in_a_row_ = 0;
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
        SendFatalAlert(kAlertDecodeError);
        return Fail(AlertError(ErrorCategory::kProtocol, kAlertDecodeError, "a HelloRequest with a body"));
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
    // KeyUpdate.
    if (body_len != 1) {
      SendFatalAlert(kAlertDecodeError);
      return Fail(AlertError(ErrorCategory::kProtocol, kAlertDecodeError, "malformed KeyUpdate"));
    }
    const unsigned char request = body_first_byte;
    if (request != kKeyUpdateNotRequested && request != kKeyUpdateRequested) {
      SendFatalAlert(kAlertIllegalParameter);
      return Fail(AlertError(ErrorCategory::kProtocol, kAlertIllegalParameter, "KeyUpdate with an invalid request"));
    }
    if (!handshake_bytes_.empty() || !record_end) {
      // Keys change at record boundaries (RFC 8446 5.1).
      SendFatalAlert(kAlertUnexpectedMessage);
      return Fail(AlertError(ErrorCategory::kProtocol, kAlertUnexpectedMessage,
                             "a KeyUpdate that does not end its record"));
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

ConnectionImpl::~ConnectionImpl() { ReleaseSsl(); }

void ConnectionImpl::ReleaseSsl() {
  if (ssl && sent_close_ && !failed_) {
    // close_notify went out through the kernel, where OpenSSL did not see
    // it. Without this, SSL_free takes the connection for a truncated one
    // and marks its session not resumable (ssl_clear_bad_session): a server
    // would drop it from its cache, and a client's newest session, the one
    // in its SessionCache, would never be offered.
    SSL_set_shutdown(ssl.get(), SSL_get_shutdown(ssl.get()) | SSL_SENT_SHUTDOWN);
  }
  ticket_relay.reset();
  ssl.reset();
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

Result<void> ConnectionImpl::SendKernelControlRecord(unsigned char type, std::span<const unsigned char> payload) {
  const ssize_t n = SendControlRecord(socket.get(), type, payload, MSG_NOSIGNAL);
  if (n < 0) return SysError(static_cast<int>(-n), "sendmsg of a control record");
  if (static_cast<std::size_t>(n) != payload.size()) {
    return MakeError(ErrorCategory::kIo, "short write of a control record");
  }
  return {};
}

Result<void> ConnectionImpl::SendWarningAlert(int alert) {
  if (sent_close_ || tx != Offload::kKernel) return {};
  // Never between a KeyUpdate and the key after it, and never wait for a
  // writer (it may be blocked on a peer that waits for us to read): if a
  // write is in progress, the alert goes out ahead of the next write.
  std::unique_lock lock(tx_mu_, std::try_to_lock);
  if (!lock.owns_lock()) {
    tx_warning_pending_ = alert;
    return {};
  }
  return SendPendingWarningLocked(alert);
}

Result<void> ConnectionImpl::SendPendingWarningLocked(int alert) {
  const std::array<unsigned char, 2> payload{kAlertLevelWarning, static_cast<unsigned char>(alert)};
  auto sent = SendKernelControlRecord(uapi::kRecordAlert, payload);
  if (!sent && IsWouldBlock(sent.error())) {
    tx_warning_pending_ = alert;  // The send buffer is full: the next write sends it.
    return {};
  }
  if (sent) ++tx_records_bound_;
  return sent;
}

void ConnectionImpl::SendFatalAlert(int alert) {
  // Without tx_mu_: a writer may hold it, blocked on a peer that waits for
  // us. The connection ends either way.
  if (socket.get() < 0 || sent_close_.exchange(true)) return;
  if (tx == Offload::kKernel) {
    // A record that failed to decrypt leaves the kernel's error on the
    // socket (tls_err_abort), and kTLS refuses to send while it is set.
    // Reading SO_ERROR clears it, so the alert can still go out.
    int pending = 0;
    socklen_t len = sizeof(pending);
    (void)sys::GetSockOpt(socket.get(), SOL_SOCKET, SO_ERROR, &pending, &len);
    const std::array<unsigned char, 2> payload{kAlertLevelFatal, static_cast<unsigned char>(alert)};
    (void)SendKernelControlRecord(uapi::kRecordAlert, payload);  // Best effort: we are failing anyway.
  }
  // With TX in OpenSSL, OpenSSL already sent its own alert for the errors it
  // detects itself. Either way a FIN follows the alert, so the peer reads the
  // alert before our close can turn into a reset.
  ::shutdown(socket.get(), SHUT_WR);
}

Result<IoProgress> ConnectionImpl::Write(std::span<const std::byte> data, WriteFlags flags) {
  if (socket.get() < 0) return MakeError(ErrorCategory::kUsage, "write on a closed connection");
  if (failed_) return MakeError(ErrorCategory::kClosed, "write after the connection failed");
  if (sent_close_) return MakeError(ErrorCategory::kClosed, "write after Shutdown");
  if (data.empty() && tx_held_.empty()) return IoProgress{};
  const bool more = flags == WriteFlags::kMore;
  if (tx == Offload::kKernel) {
    std::lock_guard lock(tx_mu_);
    std::size_t len = data.size();
    if (auto ready = BeforeKernelWrite(&len); !ready) {
      if (IsWouldBlock(ready.error())) return Blocked(Wait::kWritable);
      return Fail(std::move(ready).error());
    }
    iovec iov{const_cast<std::byte*>(data.data()), len};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    // MSG_MORE: kTLS leaves the record open for the next send to fill.
    const ssize_t n = sys::SendMsg(socket.get(), &msg, MSG_NOSIGNAL | (more ? MSG_MORE : 0));
    if (n >= 0) {
      tx_records_bound_ += MaxRecordsFor(static_cast<std::size_t>(n));
      if (auto dead = SendWentNowhere(static_cast<std::size_t>(n))) return Fail(std::move(*dead));
      return IoProgress{static_cast<std::size_t>(n), false, false};
    }
    if (WouldBlock(static_cast<int>(-n))) return Blocked(Wait::kWritable);
    return Fail(SysError(static_cast<int>(-n), "sendmsg on the kTLS socket"));
  }
  if (more && tx_held_.size() + data.size() <= kMaxRecordPlaintext) {
    // Held for the next write's first record, as kTLS would with MSG_MORE.
    tx_held_.insert(tx_held_.end(), data.begin(), data.end());
    return IoProgress{data.size(), false, false};
  }
  // Held bytes lead: one buffer, so they share the first record. On a retry
  // after would_block the same bytes are joined again, as OpenSSL requires.
  std::vector<std::byte> joined;
  if (!tx_held_.empty()) {
    joined.reserve(tx_held_.size() + data.size());
    joined.insert(joined.end(), tx_held_.begin(), tx_held_.end());
    joined.insert(joined.end(), data.begin(), data.end());
  }
  const std::span<const std::byte> out = joined.empty() ? data : std::span<const std::byte>(joined);
  for (;;) {
    std::unique_lock lock(ssl_mu_);
    std::size_t n = 0;
    ERR_clear_error();
    errno = 0;
    // TX in OpenSSL: the same AEAD limit, counted by the message callback.
    if (const CaptureState* state = GetCaptureState(ssl.get());
        state != nullptr && key_update_threshold != 0 &&
        state->tx.records + MaxRecordsFor(out.size()) >= key_update_threshold &&
        SSL_get_key_update_type(ssl.get()) == SSL_KEY_UPDATE_NONE) {
      SSL_key_update(ssl.get(), SSL_KEY_UPDATE_NOT_REQUESTED);  // Sent ahead of this write's data.
    }
    const int ret = SSL_write_ex(ssl.get(), out.data(), out.size(), &n);
    if (ret == 1) {
      // A partial write is whole records, and the first holds all the held
      // bytes (at most one record's worth): n covers them.
      const std::size_t held = std::min(n, tx_held_.size());
      tx_held_.erase(tx_held_.begin(), tx_held_.begin() + static_cast<std::ptrdiff_t>(held));
      return IoProgress{n - held, false, false};
    }
    const int code = SSL_get_error(ssl.get(), ret);
    if (code == SSL_ERROR_WANT_WRITE || code == SSL_ERROR_WANT_READ) {
      lock.unlock();
      if (!WaitFor(code == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN)) {
        return Blocked(code == SSL_ERROR_WANT_WRITE ? Wait::kWritable : Wait::kReadable);
      }
      continue;  // OpenSSL wants the same buffer again (ACCEPT_MOVING_WRITE_BUFFER is set).
    }
    return Fail(SslCallError(ssl.get(), ret, "SSL_write"));
  }
}

Result<IoProgress> ConnectionImpl::SendFile(int file_fd, off_t offset, std::size_t count) {
  if (socket.get() < 0) return MakeError(ErrorCategory::kUsage, "sendfile on a closed connection");
  if (failed_) return MakeError(ErrorCategory::kClosed, "sendfile after the connection failed");
  if (sent_close_) return MakeError(ErrorCategory::kClosed, "sendfile after Shutdown");
  if (count == 0) return IoProgress{};
  if (tx == Offload::kKernel) {
    std::lock_guard lock(tx_mu_);
    std::size_t len = count;
    if (auto ready = BeforeKernelWrite(&len); !ready) {
      if (IsWouldBlock(ready.error())) return Blocked(Wait::kWritable);
      return Fail(std::move(ready).error());
    }
    off_t pos = offset;
    // sendfile(2) has no MSG_NOSIGNAL: to a peer that is gone it can raise
    // SIGPIPE, as plain sendfile does (see SendFile in ktls/connection.h).
    const ssize_t n = sys::SendFile(socket.get(), file_fd, &pos, len);
    if (n >= 0) {
      tx_records_bound_ += MaxRecordsFor(static_cast<std::size_t>(n));
      if (auto dead = SendWentNowhere(static_cast<std::size_t>(n))) return Fail(std::move(*dead));
      return IoProgress{static_cast<std::size_t>(n), false, false};
    }
    if (WouldBlock(static_cast<int>(-n))) return Blocked(Wait::kWritable);
    // A bad file is the caller's error, not the connection's.
    if (n == -EBADF || n == -EINVAL || n == -ESPIPE) return SysError(static_cast<int>(-n), "sendfile: bad input file");
    return Fail(SysError(static_cast<int>(-n), "sendfile on the kTLS socket"));
  }
  // TX in OpenSSL: one record's worth at a time, never the whole file.
  std::array<std::byte, kUserSendFileChunk> chunk;
  std::size_t sent = 0;
  while (sent < count) {
    const std::size_t want = std::min(chunk.size(), count - sent);
    const ssize_t got = ::pread(file_fd, chunk.data(), want, offset + static_cast<off_t>(sent));
    if (got < 0) {
      if (errno == EINTR) continue;
      if (sent > 0) break;
      return SysError(errno, "pread of the file to send");
    }
    if (got == 0) break;  // End of file: report what was sent.
    auto wrote = Write(std::span(chunk.data(), static_cast<std::size_t>(got)));
    if (!wrote.ok()) {
      if (sent > 0) break;  // Report the progress; the next call reports the error.
      return wrote;
    }
    sent += wrote->bytes;
    if (wrote->would_block || wrote->bytes < static_cast<std::size_t>(got)) {
      if (sent == 0) return *wrote;  // Blocked: says what to wait for.
      return IoProgress{sent, false, false};
    }
  }
  return IoProgress{sent, false, false};
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

Result<IoProgress> ConnectionImpl::Shutdown() {
  if (socket.get() < 0) return MakeError(ErrorCategory::kUsage, "shutdown on a closed connection");
  if (sent_close_) return IoProgress{};
  if (tx == Offload::kKernel) {
    std::lock_guard lock(tx_mu_);  // Never between a KeyUpdate and the new key.
    const std::array<unsigned char, 2> close_notify{kAlertLevelWarning, kAlertCloseNotify};
    if (auto sent = SendKernelControlRecord(uapi::kRecordAlert, close_notify); !sent) {
      if (IsWouldBlock(sent.error())) return Blocked(Wait::kWritable);
      return std::move(sent).error();
    }
    sent_close_ = true;  // Under tx_mu_: a KeyUpdate answer that waited for it sees it.
  } else {
    if (!tx_held_.empty()) {  // What a Write with kMore held goes before close_notify.
      auto flushed = Write({}, WriteFlags::kNone);
      if (!flushed.ok()) return flushed;
      if (flushed->would_block) return flushed;
    }
    for (;;) {
      std::unique_lock lock(ssl_mu_);
      ERR_clear_error();
      const int ret = SSL_shutdown(ssl.get());  // 0: close_notify sent, the peer's not yet seen.
      if (ret >= 0) break;
      const int code = SSL_get_error(ssl.get(), ret);
      lock.unlock();
      if (code == SSL_ERROR_WANT_WRITE && WaitFor(POLLOUT)) continue;
      if (code == SSL_ERROR_WANT_WRITE) return Blocked(Wait::kWritable);
      return SslCallError(ssl.get(), ret, "SSL_shutdown");
    }
  }
  sent_close_ = true;
  ::shutdown(socket.get(), SHUT_WR);
  return IoProgress{};
}

bool ConnectionImpl::LingerOwed() const {
  return socket.get() >= 0 && linger.time.count() > 0 && !linger_done_ && !peer_eof_ && !peer_closed &&
         (sent_close_ || failed_);
}

std::chrono::steady_clock::time_point ConnectionImpl::LingerDeadline() {
  if (!linger_started_) return std::chrono::steady_clock::now() + linger.time;
  return linger_deadline_;
}

Result<IoProgress> ConnectionImpl::Linger() {
  if (socket.get() < 0) return MakeError(ErrorCategory::kUsage, "Linger on a closed connection");
  const IoProgress done{0, false, true};
  if (!LingerOwed()) return done;
  if (rx == Offload::kKernel && rx_kernel_failed_) {
    // Nothing more can be read through the kernel: close now.
    linger_done_ = true;
    ::shutdown(socket.get(), SHUT_WR);
    return done;
  }
  if (!linger_started_) {
    linger_started_ = true;
    linger_deadline_ = std::chrono::steady_clock::now() + linger.time;
    ::shutdown(socket.get(), SHUT_WR);  // Our FIN, where no alert sent one yet.
  }
  // Read and drop whatever the peer still sends, never blocking: the
  // caller waits (Close with poll, an event loop, ktls::asio).
  std::array<std::byte, 16 * 1024> scratch;
  std::size_t discarded = 0;
  for (;;) {
    if (linger_discarded_ >= linger.max_bytes || std::chrono::steady_clock::now() >= linger_deadline_) {
      linger_done_ = true;
      return done;
    }
    ssize_t n = 0;
    bool typed = false;
    if (rx == Offload::kKernel) {
      const KernelRecv got = RecvKernelRecord(socket.get(), scratch, MSG_DONTWAIT);
      n = got.n;
      typed = got.typed;
    } else {
      // Records for OpenSSL nobody will read: the raw bytes will do.
      n = ::recv(socket.get(), scratch.data(), scratch.size(), MSG_DONTWAIT);
      if (n < 0) n = -errno;
    }
    if (n > 0 || (n == 0 && typed)) {
      linger_discarded_ += static_cast<std::size_t>(n);
      discarded += static_cast<std::size_t>(n);
      continue;
    }
    if (n < 0 && WouldBlock(static_cast<int>(-n))) return IoProgress{discarded, true, false, Wait::kReadable};
    if (n < 0 && n == -EINTR) continue;
    // The peer's FIN, a reset, or records the kernel can no longer
    // decrypt: nothing more to wait for.
    if (n == 0) peer_eof_ = true;
    linger_done_ = true;
    return done;
  }
}

void ConnectionImpl::Close() {
  // A blocking socket lingers here, bounded by OffloadOptions::linger; a
  // non-blocking one never waits (its owner drives Linger from its loop).
  const int flags = socket.get() >= 0 ? ::fcntl(socket.get(), F_GETFL) : -1;
  while (flags >= 0 && (flags & O_NONBLOCK) == 0 && LingerOwed()) {
    auto step = Linger();
    if (!step.ok() || !step->would_block) break;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(linger_deadline_ -
                                                                            std::chrono::steady_clock::now());
    pollfd pfd{socket.get(), POLLIN | POLLRDHUP, 0};
    int rc;
    while ((rc = ::poll(&pfd, 1, static_cast<int>(std::max<long long>(left.count(), 0) + 1))) < 0 && errno == EINTR) {
    }
    if (rc <= 0) break;  // The time is up.
  }
  ReleaseSsl();
  socket.reset();
}

}  // namespace detail

const char* OffloadName(Offload where) noexcept { return where == Offload::kKernel ? "kernel" : "user"; }

Connection::Connection() = default;
Connection::Connection(std::unique_ptr<detail::ConnectionImpl> impl) : impl_(std::move(impl)) {}
Connection::Connection(Connection&&) noexcept = default;
Connection& Connection::operator=(Connection&&) noexcept = default;
Connection::~Connection() = default;

namespace {
Error EmptyConnection() { return detail::MakeError(ErrorCategory::kUsage, "empty ktls::Connection"); }
const SessionInfo kNoSession{};
}  // namespace

Result<IoProgress> Connection::Read(std::span<std::byte> buf) {
  return impl_ ? impl_->Read(buf) : Result<IoProgress>(EmptyConnection());
}

Result<IoProgress> Connection::Write(std::span<const std::byte> data) {
  return impl_ ? impl_->Write(data) : Result<IoProgress>(EmptyConnection());
}

Result<IoProgress> Connection::Write(std::span<const std::byte> data, WriteFlags flags) {
  return impl_ ? impl_->Write(data, flags) : Result<IoProgress>(EmptyConnection());
}

Result<IoProgress> Connection::WriteAll(std::span<const std::byte> data) {
  std::size_t done = 0;
  while (done < data.size()) {
    auto wrote = Write(data.subspan(done));
    if (!wrote.ok()) return wrote;
    done += wrote->bytes;
    if (wrote->would_block) return IoProgress{done, true, false, wrote->wait};
  }
  return IoProgress{done, false, false};
}

Result<IoProgress> Connection::SendFile(int file_fd, off_t offset, std::size_t count) {
  return impl_ ? impl_->SendFile(file_fd, offset, count) : Result<IoProgress>(EmptyConnection());
}

Result<IoProgress> Connection::Shutdown() {
  return impl_ ? impl_->Shutdown() : Result<IoProgress>(EmptyConnection());
}

void Connection::Close() {
  if (impl_) impl_->Close();
}

Result<IoProgress> Connection::Linger() {
  return impl_ ? impl_->Linger() : Result<IoProgress>(EmptyConnection());
}

std::chrono::steady_clock::time_point Connection::linger_deadline() const noexcept {
  return impl_ ? impl_->LingerDeadline() : std::chrono::steady_clock::time_point{};
}

Result<void> Connection::UpdateKeys(bool request_peer_update) {
  return impl_ ? impl_->UpdateKeys(request_peer_update) : Result<void>(EmptyConnection());
}

std::uint64_t Connection::tx_key_updates() const noexcept {
  if (!impl_) return 0;
  std::uint64_t n = impl_->tx_key_updates.load();  // Those the kernel sent.
  if (impl_->tx == Offload::kUser && impl_->ssl) {
    if (const detail::CaptureState* state = detail::GetCaptureState(impl_->ssl.get())) n += state->sent_key_updates;
  }
  return n;
}

std::uint64_t Connection::rx_key_updates() const noexcept {
  if (!impl_) return 0;
  std::uint64_t n = impl_->rx_key_updates.load();
  // OpenSSL reads KeyUpdates only while it has RX (RX is never offloaded
  // after one), and the SSL may be freed by the reader once both
  // directions are in the kernel.
  if (impl_->rx == Offload::kUser && impl_->ssl) {
    if (const detail::CaptureState* state = detail::GetCaptureState(impl_->ssl.get())) n += state->read_key_updates;
  }
  return n;
}

Offload Connection::tx() const noexcept { return impl_ ? impl_->tx : Offload::kUser; }
Offload Connection::rx() const noexcept { return impl_ ? impl_->rx : Offload::kUser; }
const SessionInfo& Connection::session() const noexcept { return impl_ ? impl_->session : kNoSession; }
int Connection::fd() const noexcept { return impl_ ? impl_->socket.get() : -1; }
std::uint64_t Connection::tickets_relayed() const noexcept { return impl_ ? impl_->tickets_relayed.load() : 0; }
std::uint64_t Connection::tickets_dropped() const noexcept { return impl_ ? impl_->tickets_dropped.load() : 0; }
const char* Connection::tickets_dropped_reason() const noexcept {
  return impl_ ? impl_->tickets_dropped_reason.load() : nullptr;
}

}  // namespace ktls
