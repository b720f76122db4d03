// net/pending_handshake.cc: PendingHandshake, the one handshake driver.
// The blocking Listener::Handshake and Connect run it too (FinishBlocking),
// so both kinds of caller get the same handshake and the same offload.
#include "net/pending_handshake.h"

#include <openssl/err.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <utility>

#include "conn/offload_internal.h"
#include "core/errors.h"
#include "kernel/socket_platform.h"
#include "net/handshake_bio.h"
#include "net/socket_util.h"

namespace ktls {
namespace detail {
namespace {

using Clock = std::chrono::steady_clock;

// DrainInput reads (and drops) what the peer already sent, without waiting:
// closing a socket with unread input sends a reset, which can overtake the
// alert we just sent.
void DrainInput(int fd) {
  char discard[4096];
  for (int i = 0; i < 16 && ::recv(fd, discard, sizeof(discard), MSG_DONTWAIT) > 0; ++i) {
  }
}

int RemainingMs(Clock::time_point deadline) {
  if (deadline == Clock::time_point::max()) return -1;
  const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return static_cast<int>(std::clamp<long long>(left, 0, INT_MAX));
}

}  // namespace

PendingHandshakeImpl::~PendingHandshakeImpl() {
  if (state == State::kFailed && socket.get() >= 0) DrainInput(socket.get());
  ssl.reset();  // Before the socket: the SSL's BIO refers to it.
}

Result<PendingHandshake> NewPendingHandshake(UniqueFd&& socket, UniqueSsl ssl, bool is_server,
                                             const OffloadOptions& offload, std::chrono::milliseconds timeout,
                                             HandshakeWaits waits) {
  const bool blocking = waits == HandshakeWaits::kInside;
  if (waits == HandshakeWaits::kOutside) {
    if (auto set = SetNonBlocking(socket.get(), true); !set) return std::move(set).error();
  }
  if (const int err = sys::KeepSendsFromSignalling(socket.get()); err < 0) {
    return SysError(-err, "handshake: setsockopt(SO_NOSIGPIPE)");
  }
  // Blocking, the BIO keeps the timeout, from its first wait.
  const Clock::time_point deadline =
      timeout.count() > 0 && !blocking ? Clock::now() + timeout : Clock::time_point::max();
  // ktls's handshake BIO, not OpenSSL's socket BIO: a flight in one read
  // and never a byte past the handshake (see net/handshake_bio.h), and
  // sends with MSG_NOSIGNAL, so a client that vanishes mid-handshake is an
  // error for that connection, never a SIGPIPE for the process. It does not
  // own the socket.
  BIO* bio = NewHandshakeBio(socket.get(), blocking, timeout);
  if (bio == nullptr) return OpenSslError(ErrorCategory::kInternal, "out of memory for the handshake BIO");
  SSL_set_bio(ssl.get(), bio, bio);  // One reference, for both directions.
  if (is_server) {
    SSL_set_accept_state(ssl.get());
  } else {
    SSL_set_connect_state(ssl.get());
  }
  auto impl = std::make_unique<PendingHandshakeImpl>();
  impl->socket = std::move(socket);
  impl->ssl = std::move(ssl);
  impl->is_server = is_server;
  impl->blocking = blocking;
  impl->offload = offload;
  impl->deadline = deadline;
  return PendingHandshake(std::move(impl));
}

Result<Connection> FinishBlocking(PendingHandshake handshake) {
  for (;;) {
    auto wait = handshake.Step();
    if (!wait.ok()) {
      if (handshake.fd() >= 0 && wait.error().sys_errno != ETIMEDOUT) {
        // Give the client a moment to read our alert and close first.
        pollfd pfd{handshake.fd(), POLLIN, 0};
        (void)::poll(&pfd, 1, 100);
      }
      return std::move(wait).error();
    }
    if (*wait == Wait::kNone) break;
    if (handshake.impl_->blocking) {
      // The BIO waits itself; a handshake that waits leaves no deadline here.
      return MakeError(ErrorCategory::kInternal, "a blocking handshake asked to wait");
    }
    pollfd pfd{handshake.fd(), static_cast<short>(*wait == Wait::kReadable ? POLLIN : POLLOUT), 0};
    const int rc = ::poll(&pfd, 1, RemainingMs(handshake.deadline()));
    if (rc < 0 && errno != EINTR) return SysError(errno, "poll during the TLS handshake");
    // rc == 0: the deadline passed; Step reports it.
  }
  // kInside left the socket as it was; kOutside made it non-blocking.
  if (handshake.impl_ && !handshake.impl_->blocking) {
    if (auto set = SetNonBlocking(handshake.fd(), false); !set) return std::move(set).error();
  }
  return handshake.Finish();
}

}  // namespace detail

PendingHandshake::PendingHandshake(std::unique_ptr<detail::PendingHandshakeImpl> impl) : impl_(std::move(impl)) {}
PendingHandshake::PendingHandshake(PendingHandshake&&) noexcept = default;
PendingHandshake& PendingHandshake::operator=(PendingHandshake&&) noexcept = default;
PendingHandshake::~PendingHandshake() = default;

Result<Wait> PendingHandshake::Step() {
  using State = detail::PendingHandshakeImpl::State;
  if (!impl_) return detail::MakeError(ErrorCategory::kUsage, "empty ktls::PendingHandshake");
  switch (impl_->state) {
    case State::kDone:
      return Wait::kNone;
    case State::kFailed:
      return detail::MakeError(ErrorCategory::kClosed, "the handshake already failed");
    case State::kFinished:
      return detail::MakeError(ErrorCategory::kUsage, "the handshake was already finished");
    case State::kRunning:
    case State::kSettling:
      break;
  }
  SSL* ssl = impl_->ssl.get();
  const auto fail = [this, ssl](Error error) -> Result<Wait> {
    impl_->state = State::kFailed;
    // OpenSSL's alert (if any) waits in the BIO; a FIN after it tells the
    // peer nothing more comes.
    detail::FlushHandshakeBio(SSL_get_wbio(ssl));
    ::shutdown(impl_->socket.get(), SHUT_WR);
    return error;
  };
  const auto timed_out = [&fail] {
    Error error = detail::MakeError(ErrorCategory::kIo, "TLS handshake timed out");
    error.sys_errno = ETIMEDOUT;
    return fail(std::move(error));
  };
  // Blocking (kInside), the BIO keeps the timeout on each of its waits.
  if (!impl_->blocking && std::chrono::steady_clock::now() >= impl_->deadline) return timed_out();
  if (impl_->state == State::kRunning) {
    ERR_clear_error();
    errno = 0;
    const int ret = SSL_do_handshake(ssl);
    if (ret != 1) {
      const int code = SSL_get_error(ssl, ret);
      if (code == SSL_ERROR_WANT_READ) return Wait::kReadable;
      if (code == SSL_ERROR_WANT_WRITE) return Wait::kWritable;
      if (code == SSL_ERROR_SYSCALL && errno == ETIMEDOUT && impl_->blocking) return timed_out();
      const long verify = SSL_get_verify_result(ssl);
      Error error = detail::SslCallError(ssl, ret, "TLS handshake");
      if (!impl_->is_server && verify != X509_V_OK) {
        error.detail += ": certificate verification failed: ";
        error.detail += X509_verify_cert_error_string(verify);
      }
      return fail(std::move(error));
    }
    impl_->state = State::kSettling;
  }
  // The handshake is complete; what OpenSSL wrote last (its Finished, the
  // tickets) leaves, and the bytes it read leave the socket.
  const bool only_tickets_left = impl_->is_server && SSL_version(ssl) == TLS1_3_VERSION;
  if (const int settled = detail::SettleHandshakeBio(SSL_get_rbio(ssl), only_tickets_left); settled != 0) {
    if (settled == -EAGAIN) return Wait::kWritable;
    if (settled == -ETIMEDOUT) return timed_out();
    if (settled == -EPROTO) {
      return fail(detail::MakeError(ErrorCategory::kProtocol, "TLS handshake: the peer sent data before the handshake let it"));
    }
    return fail(detail::SysError(-settled, "TLS handshake: sending its last flight"));
  }
  impl_->state = State::kDone;
  return Wait::kNone;
}

Result<Connection> PendingHandshake::Finish() {
  using State = detail::PendingHandshakeImpl::State;
  if (!impl_) return detail::MakeError(ErrorCategory::kUsage, "empty ktls::PendingHandshake");
  if (impl_->state != State::kDone) {
    return detail::MakeError(ErrorCategory::kUsage, "Finish before Step reported the handshake complete");
  }
  impl_->state = State::kFinished;
  return detail::OffloadHandshaken(std::move(impl_->socket), std::move(impl_->ssl), impl_->is_server,
                                   impl_->offload);
}

int PendingHandshake::fd() const noexcept { return impl_ ? impl_->socket.get() : -1; }

std::chrono::steady_clock::time_point PendingHandshake::deadline() const noexcept {
  return impl_ ? impl_->deadline : std::chrono::steady_clock::time_point::max();
}

}  // namespace ktls
