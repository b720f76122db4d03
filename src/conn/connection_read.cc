// conn/connection_read.cc: reading a connection, from OpenSSL (RX in
// userspace) or from the kernel (RX in kTLS), and how a read that meets the
// end of the stream tells a truncation from a reset.
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <string>

#include "conn/connection_impl.h"
#include "conn/kernel_io.h"
#include "conn/tls_constants.h"
#include "core/errors.h"
#include "handshake/capture.h"
#include "kernel/socket_platform.h"
#include "kernel/syscalls.h"
#include "kernel/tls_uapi.h"

namespace ktls::detail {

Result<IoProgress> ConnectionImpl::Read(std::span<std::byte> buf) {
  if (socket.get() < 0) return MakeError(ErrorCategory::kUsage, "read on a closed connection");
  if (!splice_rx_held_.empty()) {  // A SpliceRead's bytes that its pipe had no room for.
    const std::size_t n = std::min(buf.size(), splice_rx_held_.size());
    std::memcpy(buf.data(), splice_rx_held_.data(), n);
    splice_rx_held_.erase(splice_rx_held_.begin(), splice_rx_held_.begin() + static_cast<std::ptrdiff_t>(n));
    return IoProgress{n, false, false};
  }
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
    if (error.category == ErrorCategory::kTruncated) {
      // The socket BIO marks a FIN it read (never a reset) as EOF, and
      // OpenSSL then sent decode_error: that send may have drawn a reset
      // since, which must not turn the truncation into one.
      const BIO* rbio = SSL_get_rbio(ssl.get());
      const bool fin_read = rbio != nullptr && BIO_test_flags(rbio, BIO_FLAGS_IN_EOF) != 0;
      return Fail(EndWithoutCloseNotify(std::move(error), fin_read));
    }
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
  // Where the rest of a control record goes when buf was too small for it:
  // a record is at most kMaxRecordPlaintext bytes, so one more call takes
  // it all, not one call per buf.size() bytes (a 229-byte session ticket
  // through a 16-byte buf was 15 recvmsg). Left uninitialised: the kernel
  // writes what we read.
  std::array<std::byte, kMaxRecordPlaintext> control_rest;
  std::span<std::byte> into = buf;
  for (;;) {
    const KernelRecv got = RecvKernelRecord(socket.get(), into, DontWait());
    const ssize_t n = got.n;
    if (n < 0) {
      const int err = static_cast<int>(-n);
      if (WouldBlock(err)) return Blocked(Wait::kReadable);
      if (auto done = KernelRxFailed(err)) return std::move(*done);
      continue;
    }
    // A record type came with every record the call returned; no control
    // message at all means the end of the stream.
    const unsigned char type = got.type;
    if (n == 0 && !got.typed) {
      return Fail(EndWithoutCloseNotify(
          MakeError(ErrorCategory::kTruncated, "the peer closed the connection without close_notify")));
    }
    if (type == uapi::kRecordApplicationData) {
      if (auto refused = RefuseDataInsideMessage()) return std::move(*refused);
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
    if (auto done = HandleControlRecord(type, into.first(static_cast<std::size_t>(n)), got.record_end)) {
      return std::move(*done);
    }
    // Only the rest of this record can come next (see above), never data.
    into = got.record_end || buf.size() >= control_rest.size() ? buf : std::span<std::byte>(control_rest);
  }
}

std::optional<Result<IoProgress>> ConnectionImpl::KernelRxFailed(int err) {
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
    return std::nullopt;
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

Error ConnectionImpl::EndWithoutCloseNotify(Error truncated, bool fin_read) {
  peer_eof_ = true;
  // A FIN leaves our socket in CLOSE_WAIT (our side is still open); a reset
  // leaves it in CLOSE. Once we sent our own FIN, CLOSE is a normal end too.
  if (!fin_read && !sent_close_ && sys::TcpStateOf(socket.get()) == sys::TcpState::kReset) {
    return SysError(ECONNRESET, "read: the peer reset the connection");
  }
  // OpenSSL answers a FIN without close_notify with decode_error
  // (SSL_R_UNEXPECTED_EOF_WHILE_READING); so does ktls, after the reset
  // check above (a send to a closed peer can draw a reset). The send
  // raises no SIGPIPE (MSG_NOSIGNAL); with RX in OpenSSL, OpenSSL already
  // sent it, and this sends nothing more.
  // No FIN with it: the peer has closed its side already, and a writer
  // between its push and its check (SendWentNowhere) would take our own
  // FIN for a socket that can no longer send, and report bytes that went
  // out as lost. The close sends the FIN.
  SendFatalAlert(kAlertDecodeError, /*fin=*/false);
  return truncated;
}

}  // namespace ktls::detail
