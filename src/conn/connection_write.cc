// conn/connection_write.cc: writing a connection, through OpenSSL (TX in
// userspace) or the kernel (TX in kTLS): data, files, close_notify and the
// alerts ktls sends.
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <mutex>
#include <string>
#include <vector>

#include "conn/connection_impl.h"
#include "conn/kernel_io.h"
#include "conn/tls_constants.h"
#include "core/errors.h"
#include "handshake/capture.h"
#include "kernel/socket_platform.h"
#include "kernel/syscalls.h"
#include "kernel/tls_uapi.h"

namespace ktls::detail {
namespace {

// sendfile with TX in OpenSSL reads the file in pieces of one record.
constexpr std::size_t kUserSendFileChunk = 16 * 1024;

}  // namespace

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
    const ssize_t n = sys::SendMsg(socket.get(), &msg, sys::kSendNoSignal | DontWait() | (more ? sys::kSendMore : 0));
    if (n >= 0) {
      tx_records_bound_ += MaxRecordsFor(static_cast<std::size_t>(n));
      // A kMore write that fills no record pushes nothing to TCP, so none
      // of its bytes can have gone nowhere: the write that pushes the
      // record checks (one check per response, not per piece).
      const std::size_t open = tx_open_record_ + static_cast<std::size_t>(n);
      const bool pushed = !more || open >= kMaxRecordPlaintext;
      tx_open_record_ = more ? open % kMaxRecordPlaintext : 0;
      if (pushed) {
        if (auto dead = SendWentNowhere(static_cast<std::size_t>(n))) return Fail(std::move(*dead));
      }
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
      tx_open_record_ = 0;
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

Result<IoProgress> ConnectionImpl::Shutdown(ShutdownFlags flags) {
  if (socket.get() < 0) return MakeError(ErrorCategory::kUsage, "shutdown on a closed connection");
  const bool fin = flags != ShutdownFlags::kCloseNotifyOnly;
  if (sent_close_) {
    if (fin) SendFin();
    return IoProgress{};
  }
  if (tx == Offload::kKernel) {
    std::lock_guard lock(tx_mu_);  // Never between a KeyUpdate and the new key.
    const std::array<unsigned char, 2> close_notify{kAlertLevelWarning, kAlertCloseNotify};
    if (auto sent = SendKernelControlRecord(uapi::kRecordAlert, close_notify); !sent) {
      if (IsWouldBlock(sent.error())) return Blocked(Wait::kWritable);
      return std::move(sent).error();
    }
    sent_close_ = true;  // Under tx_mu_: a KeyUpdate answer that waited for it sees it.
  } else {
    while (!tx_held_.empty()) {  // What Write (kMore) or SpliceWrite held goes before close_notify.
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
  if (fin) SendFin();
  return IoProgress{};
}

void ConnectionImpl::SendFin() {
  if (!sent_fin_.exchange(true)) (void)sys::Shutdown(socket.get(), SHUT_WR);
}

std::optional<Error> ConnectionImpl::SendWentNowhere(std::size_t len) {
  // kTLS (6.1, 7.2) on a socket that can no longer send: sendmsg and
  // sendfile copy the bytes into a record, fail to push it, and return the
  // count anyway (the push's error is swallowed; sendfile also raises
  // SIGPIPE). Each later call does the same, so a server would "send" a
  // whole file to a client that is gone. TCP's state tells: only
  // ESTABLISHED and CLOSE_WAIT can still send (sys::TcpStateOf: one
  // getsockopt, reading one byte of tcp_info).
  const sys::TcpState state = sys::TcpStateOf(socket.get());
  if (state == sys::TcpState::kCanSend || state == sys::TcpState::kUnknown) return std::nullopt;
  const std::string lost = "the kernel took " + std::to_string(len) + " bytes it cannot send";
  if (state == sys::TcpState::kReset) return SysError(ECONNRESET, "send: the peer reset the connection; " + lost);
  return SysError(EPIPE, "send: the socket can no longer send; " + lost);
}

Result<void> ConnectionImpl::SendKernelControlRecord(unsigned char type, std::span<const unsigned char> payload) {
  const ssize_t n = SendControlRecord(socket.get(), type, payload, sys::kSendNoSignal | DontWait());
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
  if (sent) tx_open_record_ = 0;  // kTLS pushes an open data record before a control record.
  if (!sent && IsWouldBlock(sent.error())) {
    tx_warning_pending_ = alert;  // The send buffer is full: the next write sends it.
    return {};
  }
  if (sent) ++tx_records_bound_;
  return sent;
}

void ConnectionImpl::SendFatalAlert(int alert, bool fin) {
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
  if (fin) SendFin();
}

}  // namespace ktls::detail
