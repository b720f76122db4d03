// conn/connection.cc: reading and writing on a connection in each offload
// state.
#include <openssl/err.h>
#include <fcntl.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <string>

#include "conn/connection_impl.h"
#include "core/errors.h"
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
constexpr int kAlertDecodeError = 50;
constexpr int kAlertInternalError = 80;
constexpr unsigned char kAlertLevelWarning = 1;
constexpr unsigned char kAlertLevelFatal = 2;

// Post-handshake messages a peer may send (RFC 8446 4).
constexpr unsigned char kHandshakeNewSessionTicket = 4;
constexpr unsigned char kHandshakeKeyUpdate = 24;
constexpr std::size_t kHandshakeHeaderLen = 4;
// A post-handshake message bigger than this is refused (a ticket is a few
// hundred bytes; this bounds what a hostile peer can make us buffer).
constexpr std::size_t kMaxPostHandshakeMessageLen = 64 * 1024;

// sendfile with TX in OpenSSL reads the file in pieces of one record.
constexpr std::size_t kUserSendFileChunk = 16 * 1024;

bool WouldBlock(int err) { return err == EAGAIN || err == EWOULDBLOCK; }

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
  pollfd pfd{socket.get(), events, 0};
  while (::poll(&pfd, 1, -1) < 0 && errno == EINTR) {
  }
  return true;
}

Result<IoProgress> ConnectionImpl::ReadUser(std::span<std::byte> buf) {
  for (;;) {
    std::unique_lock lock(ssl_mu_);
    std::size_t n = 0;
    ERR_clear_error();
    errno = 0;
    const int ret = SSL_read_ex(ssl.get(), buf.data(), buf.size(), &n);
    if (ret == 1) return IoProgress{n, false, false};
    const int code = SSL_get_error(ssl.get(), ret);
    if (code == SSL_ERROR_ZERO_RETURN) {
      peer_closed = true;
      return IoProgress{0, false, true};
    }
    if (openssl_write_attempted) {
      // With TX in the kernel OpenSSL must not write. What it wanted to
      // write while reading is an answer to the peer's KeyUpdate
      // (update_requested), or an alert: this connection cannot go on
      // correctly.
      ERR_clear_error();
      lock.unlock();
      SendFatalAlert(kAlertInternalError);
      return Fail(MakeError(ErrorCategory::kUnsupported,
                            "the peer asked for something OpenSSL must answer (a KeyUpdate with "
                            "update_requested, or an alert) while TX is in the kernel"));
    }
    if (code == SSL_ERROR_WANT_READ || code == SSL_ERROR_WANT_WRITE) {
      lock.unlock();
      if (!WaitFor(code == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT)) return IoProgress{0, true, false};
      continue;
    }
    return Fail(SslCallError(ssl.get(), ret, "SSL_read"));
  }
}

Result<IoProgress> ConnectionImpl::ReadKernel(std::span<std::byte> buf) {
  for (;;) {
    // With TLS_RX set, every recvmsg must offer a control buffer: the kernel
    // returns a non-data record only to a caller that can learn its type,
    // and never mixes record types in one call.
    alignas(cmsghdr) std::array<unsigned char, CMSG_SPACE(sizeof(unsigned char))> control{};
    iovec iov{buf.data(), buf.size()};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    const ssize_t n = sys::RecvMsg(socket.get(), &msg, 0);
    if (n < 0) {
      const int err = static_cast<int>(-n);
      if (WouldBlock(err)) return IoProgress{0, true, false};
      if (err == EBADMSG) {
        SendFatalAlert(kAlertBadRecordMac);
        return Fail(AlertError(ErrorCategory::kProtocol, kAlertBadRecordMac,
                               "a record failed authentication; nothing of it was delivered"));
      }
      if (err == EMSGSIZE) {
        SendFatalAlert(kAlertRecordOverflow);
        return Fail(AlertError(ErrorCategory::kProtocol, kAlertRecordOverflow, "the peer sent an oversized record"));
      }
      return Fail(SysError(err, "recvmsg on the kTLS socket"));
    }
    if (n == 0) {
      return Fail(MakeError(ErrorCategory::kTruncated, "the peer closed the connection without close_notify"));
    }
    unsigned char type = uapi::kRecordApplicationData;
    for (cmsghdr* cmsg = CMSG_FIRSTHDR(&msg); cmsg != nullptr; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
      if (cmsg->cmsg_level == uapi::kSolTls && cmsg->cmsg_type == uapi::kTlsGetRecordType) {
        type = *CMSG_DATA(cmsg);
      }
    }
    if (type == uapi::kRecordApplicationData) return IoProgress{static_cast<std::size_t>(n), false, false};
    if (auto done = HandleControlRecord(type, buf.first(static_cast<std::size_t>(n)))) return std::move(*done);
  }
}

std::optional<Result<IoProgress>> ConnectionImpl::HandleControlRecord(unsigned char type,
                                                                      std::span<const std::byte> bytes) {
  if (type == uapi::kRecordAlert) {
    for (std::byte b : bytes) alert_bytes_.push_back(static_cast<unsigned char>(b));
    if (alert_bytes_.size() < 2) return std::nullopt;  // The rest comes in the next read.
    if (alert_bytes_.size() > 2) {
      SendFatalAlert(kAlertDecodeError);
      return Fail(AlertError(ErrorCategory::kProtocol, kAlertDecodeError, "malformed alert record"));
    }
    const int description = alert_bytes_[1];
    alert_bytes_.clear();
    if (description == kAlertCloseNotify) {
      peer_closed = true;
      return IoProgress{0, false, true};
    }
    return Fail(AlertError(ErrorCategory::kAlert, description, "the peer sent an alert"));
  }
  if (type != uapi::kRecordHandshake) {
    SendFatalAlert(kAlertUnexpectedMessage);
    return Fail(AlertError(ErrorCategory::kProtocol, kAlertUnexpectedMessage,
                           "unexpected record type " + std::to_string(type) + " after the handshake"));
  }
  for (std::byte b : bytes) handshake_bytes_.push_back(static_cast<unsigned char>(b));
  // Consume every complete message; keep a partial one for the next record.
  while (handshake_bytes_.size() >= kHandshakeHeaderLen) {
    const std::size_t body_len = std::size_t{handshake_bytes_[1]} << 16 | std::size_t{handshake_bytes_[2]} << 8 |
                                 std::size_t{handshake_bytes_[3]};
    if (body_len > kMaxPostHandshakeMessageLen) {
      SendFatalAlert(kAlertDecodeError);
      return Fail(AlertError(ErrorCategory::kProtocol, kAlertDecodeError, "oversized post-handshake message"));
    }
    if (handshake_bytes_.size() < kHandshakeHeaderLen + body_len) return std::nullopt;
    const unsigned char msg_type = handshake_bytes_[0];
    handshake_bytes_.erase(handshake_bytes_.begin(),
                           handshake_bytes_.begin() + static_cast<std::ptrdiff_t>(kHandshakeHeaderLen + body_len));
    if (msg_type == kHandshakeNewSessionTicket && !is_server) {
      // The SSL object that could store it may already be gone: a ticket
      // after RX offload is dropped (counted), never surfaced as an error.
      ++tickets_dropped;
      continue;
    }
    if (msg_type == kHandshakeKeyUpdate) {
      SendFatalAlert(kAlertInternalError);
      return Fail(MakeError(ErrorCategory::kUnsupported,
                            "the peer sent a TLS 1.3 KeyUpdate; ktls cannot yet rekey a connection whose RX "
                            "is in the kernel"));
    }
    SendFatalAlert(kAlertUnexpectedMessage);
    return Fail(AlertError(ErrorCategory::kProtocol, kAlertUnexpectedMessage,
                           "unexpected handshake message type " + std::to_string(msg_type) + " after the handshake"));
  }
  return std::nullopt;
}

Result<void> ConnectionImpl::SendKernelControlRecord(unsigned char type, std::span<const unsigned char> payload) {
  alignas(cmsghdr) std::array<unsigned char, CMSG_SPACE(sizeof(unsigned char))> control{};
  iovec iov{const_cast<unsigned char*>(payload.data()), payload.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.data();
  msg.msg_controllen = control.size();
  cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
  cmsg->cmsg_level = uapi::kSolTls;
  cmsg->cmsg_type = uapi::kTlsSetRecordType;
  cmsg->cmsg_len = CMSG_LEN(sizeof(unsigned char));
  *CMSG_DATA(cmsg) = type;
  const ssize_t n = sys::SendMsg(socket.get(), &msg, MSG_NOSIGNAL);
  if (n < 0) return SysError(static_cast<int>(-n), "sendmsg of a control record");
  if (static_cast<std::size_t>(n) != payload.size()) {
    return MakeError(ErrorCategory::kIo, "short write of a control record");
  }
  return {};
}

void ConnectionImpl::SendFatalAlert(int alert) {
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

Result<IoProgress> ConnectionImpl::Write(std::span<const std::byte> data) {
  if (socket.get() < 0) return MakeError(ErrorCategory::kUsage, "write on a closed connection");
  if (failed_) return MakeError(ErrorCategory::kClosed, "write after the connection failed");
  if (sent_close_) return MakeError(ErrorCategory::kClosed, "write after Shutdown");
  if (data.empty()) return IoProgress{};
  if (tx == Offload::kKernel) {
    iovec iov{const_cast<std::byte*>(data.data()), data.size()};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    const ssize_t n = sys::SendMsg(socket.get(), &msg, MSG_NOSIGNAL);
    if (n >= 0) return IoProgress{static_cast<std::size_t>(n), false, false};
    if (WouldBlock(static_cast<int>(-n))) return IoProgress{0, true, false};
    return Fail(SysError(static_cast<int>(-n), "sendmsg on the kTLS socket"));
  }
  for (;;) {
    std::unique_lock lock(ssl_mu_);
    std::size_t n = 0;
    ERR_clear_error();
    errno = 0;
    const int ret = SSL_write_ex(ssl.get(), data.data(), data.size(), &n);
    if (ret == 1) return IoProgress{n, false, false};
    const int code = SSL_get_error(ssl.get(), ret);
    if (code == SSL_ERROR_WANT_WRITE || code == SSL_ERROR_WANT_READ) {
      lock.unlock();
      if (!WaitFor(code == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN)) return IoProgress{0, true, false};
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
    off_t pos = offset;
    const ssize_t n = sys::SendFile(socket.get(), file_fd, &pos, count);
    if (n >= 0) return IoProgress{static_cast<std::size_t>(n), false, false};
    if (WouldBlock(static_cast<int>(-n))) return IoProgress{0, true, false};
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
      return IoProgress{sent, sent == 0 && wrote->would_block, false};
    }
  }
  return IoProgress{sent, false, false};
}

Result<void> ConnectionImpl::Shutdown() {
  if (socket.get() < 0) return MakeError(ErrorCategory::kUsage, "shutdown on a closed connection");
  if (sent_close_) return {};
  if (tx == Offload::kKernel) {
    const std::array<unsigned char, 2> close_notify{kAlertLevelWarning, kAlertCloseNotify};
    if (auto sent = SendKernelControlRecord(uapi::kRecordAlert, close_notify); !sent) return sent;
  } else {
    for (;;) {
      std::unique_lock lock(ssl_mu_);
      ERR_clear_error();
      const int ret = SSL_shutdown(ssl.get());  // 0: close_notify sent, the peer's not yet seen.
      if (ret >= 0) break;
      const int code = SSL_get_error(ssl.get(), ret);
      lock.unlock();
      if (code == SSL_ERROR_WANT_WRITE && WaitFor(POLLOUT)) continue;
      if (code == SSL_ERROR_WANT_WRITE) return MakeError(ErrorCategory::kIo, "close_notify would block; retry");
      return SslCallError(ssl.get(), ret, "SSL_shutdown");
    }
  }
  sent_close_ = true;
  ::shutdown(socket.get(), SHUT_WR);
  return {};
}

void ConnectionImpl::Close() {
  ssl.reset();
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

Result<IoProgress> Connection::WriteAll(std::span<const std::byte> data) {
  std::size_t done = 0;
  while (done < data.size()) {
    auto wrote = Write(data.subspan(done));
    if (!wrote.ok()) return wrote;
    done += wrote->bytes;
    if (wrote->would_block) return IoProgress{done, true, false};
  }
  return IoProgress{done, false, false};
}

Result<IoProgress> Connection::SendFile(int file_fd, off_t offset, std::size_t count) {
  return impl_ ? impl_->SendFile(file_fd, offset, count) : Result<IoProgress>(EmptyConnection());
}

Result<void> Connection::Shutdown() { return impl_ ? impl_->Shutdown() : Result<void>(EmptyConnection()); }

void Connection::Close() {
  if (impl_) impl_->Close();
}

Offload Connection::tx() const noexcept { return impl_ ? impl_->tx : Offload::kUser; }
Offload Connection::rx() const noexcept { return impl_ ? impl_->rx : Offload::kUser; }
const SessionInfo& Connection::session() const noexcept { return impl_ ? impl_->session : kNoSession; }
int Connection::fd() const noexcept { return impl_ ? impl_->socket.get() : -1; }
std::uint64_t Connection::tickets_dropped() const noexcept { return impl_ ? impl_->tickets_dropped.load() : 0; }

}  // namespace ktls
