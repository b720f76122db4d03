// tools/ktls-proxy/endpoint.cc: see endpoint.h.
#include "ktls-proxy/endpoint.h"

#include <fcntl.h>
#include <sys/socket.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <utility>

namespace ktls::proxy {
namespace {

ktls::Error SysError(int err, const char* what) {
  return ktls::Error{ktls::ErrorCategory::kIo, err, what, -1};
}

Transfer Blocked(ktls::Wait wait) {
  Transfer t;
  t.would_block = true;
  t.wait = wait;
  return t;
}

Transfer Failed(ktls::Error error) {
  Transfer t;
  t.error = std::move(error);
  return t;
}

// FromProgress turns a ktls call's result into a Transfer; `copied` says
// whether the bytes passed through this process.
Transfer FromProgress(ktls::Result<ktls::IoProgress> got, bool copied) {
  if (!got.ok()) {
    if (got.error().category == ktls::ErrorCategory::kTruncated) {
      Transfer t;
      t.eof = true;
      t.truncated = true;
      return t;
    }
    return Failed(std::move(got).error());
  }
  Transfer t;
  t.bytes = got->bytes;
  t.copied = copied ? got->bytes : 0;
  t.eof = got->end_of_stream;
  t.would_block = got->would_block && got->bytes == 0;
  t.wait = got->wait;
  return t;
}

// FromSplice: a SpliceRead or SpliceWrite result; IoProgress::copied says
// how many of the bytes passed through this process.
Transfer FromSplice(ktls::Result<ktls::IoProgress> got) {
  const std::size_t copied = got.ok() ? got->copied : 0;
  Transfer t = FromProgress(std::move(got), false);
  t.copied = copied;
  return t;
}

// A plain socket's recv, send or splice result, as a Transfer.
Transfer FromSyscall(ssize_t n, int err, ktls::Wait when_blocked, bool reading, std::size_t copied_bytes,
                     const char* what) {
  if (n > 0) {
    Transfer t;
    t.bytes = static_cast<std::size_t>(n);
    t.copied = copied_bytes;
    return t;
  }
  if (n == 0) {
    Transfer t;
    t.eof = reading;  // A write of nothing is nothing.
    return t;
  }
  if (err == EAGAIN || err == EWOULDBLOCK) return Blocked(when_blocked);
  return Failed(SysError(err, what));
}

constexpr unsigned kSpliceFlags = SPLICE_F_MOVE | SPLICE_F_NONBLOCK;

}  // namespace

Endpoint Endpoint::Plain(UniqueFd fd) {
  Endpoint e;
  e.plain_ = std::move(fd);
  return e;
}

Endpoint Endpoint::Tls(ktls::Connection conn) {
  Endpoint e;
  e.tls_ = true;
  e.conn_ = std::move(conn);
  return e;
}

int Endpoint::fd() const noexcept { return tls_ ? conn_.fd() : plain_.get(); }

Transfer Endpoint::Read(std::span<std::byte> buf) {
  if (tls_) return FromProgress(conn_.Read(buf), true);
  ssize_t n;
  while ((n = ::recv(plain_.get(), buf.data(), buf.size(), 0)) < 0 && errno == EINTR) {
  }
  return FromSyscall(n, errno, ktls::Wait::kReadable, true, n > 0 ? static_cast<std::size_t>(n) : 0, "recv");
}

Transfer Endpoint::Write(std::span<const std::byte> data) {
  if (tls_) {
    Transfer t = FromProgress(conn_.Write(data), false);
    t.eof = false;
    return t;
  }
  ssize_t n;
  while ((n = ::send(plain_.get(), data.data(), data.size(), MSG_NOSIGNAL)) < 0 && errno == EINTR) {
  }
  return FromSyscall(n, errno, ktls::Wait::kWritable, false, 0, "send");
}

Transfer Endpoint::SpliceRead(int pipe_fd, std::size_t len) {
  if (tls_) return FromSplice(conn_.SpliceRead(pipe_fd, len));
  ssize_t n;
  while ((n = ::splice(plain_.get(), nullptr, pipe_fd, nullptr, len, kSpliceFlags)) < 0 && errno == EINTR) {
  }
  return FromSyscall(n, errno, ktls::Wait::kReadable, true, 0, "splice from the socket");
}

Transfer Endpoint::SpliceWrite(int pipe_fd, std::size_t len) {
  if (tls_) {
    Transfer t = FromSplice(conn_.SpliceWrite(pipe_fd, len));
    t.eof = false;
    return t;
  }
  ssize_t n;
  while ((n = ::splice(pipe_fd, nullptr, plain_.get(), nullptr, len, kSpliceFlags)) < 0 && errno == EINTR) {
  }
  return FromSyscall(n, errno, ktls::Wait::kWritable, false, 0, "splice to the socket");
}

Transfer Endpoint::Flush() {
  if (!tls_) return {};
  // A Write without kMore sends what the connection holds (a SpliceWrite
  // with TX in OpenSSL takes bytes from the pipe that the socket had no
  // room for, and holds them); with nothing held it is no system call.
  Transfer t = FromProgress(conn_.Write({}), false);
  t.eof = false;
  return t;
}

Transfer Endpoint::ShutdownWrite(bool with_close_notify) {
  if (tls_ && with_close_notify) {
    Transfer t = FromProgress(conn_.Shutdown(), false);
    t.eof = false;
    return t;
  }
  if (::shutdown(fd(), SHUT_WR) != 0 && errno != ENOTCONN) return Failed(SysError(errno, "shutdown"));
  return {};
}

void Endpoint::Reset() {
  if (fd() >= 0) {
    const linger hard{1, 0};
    (void)::setsockopt(fd(), SOL_SOCKET, SO_LINGER, &hard, sizeof(hard));
  }
  Close();
}

void Endpoint::Close() {
  if (tls_) {
    conn_.Close();  // Non-blocking: never lingers here.
  } else {
    plain_.reset();
  }
}

bool IsReset(const ktls::Error& error) {
  return error.category == ktls::ErrorCategory::kIo &&
         (error.sys_errno == ECONNRESET || error.sys_errno == EPIPE || error.sys_errno == ECONNABORTED);
}

}  // namespace ktls::proxy
