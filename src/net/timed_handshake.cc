// net/timed_handshake.cc
#include "net/timed_handshake.h"

#include <fcntl.h>
#include <openssl/err.h>
#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <string>

#include "core/errors.h"

namespace ktls::detail {
namespace {

using Clock = std::chrono::steady_clock;

Error TimedOut(std::chrono::milliseconds timeout) {
  Error error = MakeError(ErrorCategory::kIo, "TLS handshake timed out after " + std::to_string(timeout.count()) +
                                                  " ms (the handshake timeout)");
  error.sys_errno = ETIMEDOUT;
  return error;
}

Result<void> Drive(SSL* ssl, int fd, bool is_server, std::chrono::milliseconds timeout) {
  const Clock::time_point deadline = Clock::now() + timeout;
  for (;;) {
    ERR_clear_error();
    errno = 0;
    const int ret = is_server ? SSL_accept(ssl) : SSL_connect(ssl);
    if (ret == 1) return {};
    const int saved_errno = errno;
    const int code = SSL_get_error(ssl, ret);
    if (code != SSL_ERROR_WANT_READ && code != SSL_ERROR_WANT_WRITE) {
      errno = saved_errno;
      return SslCallError(ssl, ret, "TLS handshake");
    }
    int wait_ms = -1;  // No limit: a caller's non-blocking socket waits here.
    if (timeout.count() > 0) {
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) return TimedOut(timeout);
      wait_ms = static_cast<int>(std::min<long long>(left.count(), INT_MAX));
    }
    pollfd pfd{fd, static_cast<short>(code == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT), 0};
    const int rc = ::poll(&pfd, 1, wait_ms);
    if (rc < 0 && errno != EINTR) return SysError(errno, "poll during the TLS handshake");
    if (rc == 0) return TimedOut(timeout);
  }
}

}  // namespace

Result<void> RunHandshake(SSL* ssl, int fd, bool is_server, std::chrono::milliseconds timeout) {
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0) return SysError(errno, "fcntl(F_GETFL) on the socket");
  const bool set_nonblocking = timeout.count() > 0 && (flags & O_NONBLOCK) == 0;
  if (set_nonblocking && ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
    return SysError(errno, "fcntl(F_SETFL, O_NONBLOCK) on the socket");
  }
  Result<void> done = Drive(ssl, fd, is_server, timeout);
  if (set_nonblocking && ::fcntl(fd, F_SETFL, flags) != 0 && done.ok()) {
    return SysError(errno, "fcntl(F_SETFL) restoring the socket's flags");
  }
  return done;
}

}  // namespace ktls::detail
