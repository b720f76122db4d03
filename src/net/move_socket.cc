// net/move_socket.cc: SendConnection and ReceiveConnection (ktls/move.h),
// a connection's socket and state over an AF_UNIX socket.
#include <openssl/crypto.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "conn/connection_move.h"
#include "core/errors.h"
#include "kernel/socket_platform.h"
#include "kernel/syscalls.h"
#include "ktls/move.h"
#include "net/socket_util.h"

namespace ktls {
namespace {

constexpr std::size_t kLengthPrefix = 4;
// Room for a few descriptors, so that a sender passing more than one is
// caught (and every one of them closed) rather than cut off unseen.
constexpr std::size_t kMaxFds = 4;
// A state this small always fits in one buffer of an AF_UNIX socket, whose
// SO_SNDBUF is never below the kernel's minimum (SOCK_MIN_SNDBUF, over
// 4 KiB; a buffer takes up to half, less kBufferOverhead).
constexpr std::size_t kSmallestBuffer = 2048;
constexpr std::size_t kBufferOverhead = 64;

// SendRest sends bytes on a blocking socket until all went out.
Result<void> SendRest(int sock, std::span<const std::byte> bytes) {
  while (!bytes.empty()) {
    const ssize_t n = ::send(sock, bytes.data(), bytes.size(), detail::sys::kSendNoSignal);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return detail::SysError(n < 0 ? errno : EPIPE, "SendConnection: send");
    bytes = bytes.subspan(static_cast<std::size_t>(n));
  }
  return {};
}

// RecvExactly fills buf from a blocking socket.
Result<void> RecvExactly(int sock, std::span<std::byte> buf) {
  while (!buf.empty()) {
    const ssize_t n = ::recv(sock, buf.data(), buf.size(), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return detail::SysError(errno, "ReceiveConnection: recv");
    if (n == 0) return detail::MakeError(ErrorCategory::kClosed, "ReceiveConnection: the sender closed mid-state");
    buf = buf.subspan(static_cast<std::size_t>(n));
  }
  return {};
}

// WipedBuffer: a receive buffer for state bytes, wiped when done.
struct WipedBuffer {
  explicit WipedBuffer(std::size_t n) : bytes(n) {}
  ~WipedBuffer() { OPENSSL_cleanse(bytes.data(), bytes.size()); }
  std::vector<std::byte> bytes;
};

// CheckUnixStream: the helpers frame the state themselves, so the socket
// must be an AF_UNIX stream.
Result<void> CheckUnixStream(int sock, const char* who) {
  int type = 0, domain = 0;
  socklen_t len = sizeof(type);
  if (::getsockopt(sock, SOL_SOCKET, SO_TYPE, &type, &len) != 0) {
    return detail::SysError(errno, std::string(who) + ": getsockopt(SO_TYPE)");
  }
  len = sizeof(domain);
  if (::getsockopt(sock, SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0 || domain != AF_UNIX || type != SOCK_STREAM) {
    return detail::MakeError(ErrorCategory::kUsage,
                             std::string(who) + ": needs a connected AF_UNIX SOCK_STREAM socket");
  }
  return {};
}

// CheckRoom (SendConnectionOptions::dont_wait): whether unix_socket can
// take a message of bytes without waiting, as far as can be told before sending.
// A sendmsg on an AF_UNIX stream socket queues up to about half of
// SO_SNDBUF per buffer, and allocates a buffer whenever the queue is below
// SO_SNDBUF: a state that fits in one buffer goes whole or not at all
// (MSG_DONTWAIT says EAGAIN), and only a larger one (a long certificate
// chain) can go in part and then wait for the rest. That one goes only when
// the queue has room for it twice over (the kernel's overhead per buffer
// included).
Result<void> CheckRoom(int unix_socket, std::size_t bytes) {
  if (bytes <= kSmallestBuffer) return {};
  int sndbuf = 0;
  socklen_t len = sizeof(sndbuf);
  if (::getsockopt(unix_socket, SOL_SOCKET, SO_SNDBUF, &sndbuf, &len) != 0) {
    return detail::SysError(errno, "SendConnection: getsockopt(SO_SNDBUF)");
  }
  if (sndbuf > 0 && bytes <= static_cast<std::size_t>(sndbuf) / 2 - kBufferOverhead) return {};
  const int unsent = detail::sys::UnsentBytes(unix_socket);
  if (unsent == -ENOSYS) return {};  // Cannot tell: the rest may wait.
  if (unsent < 0) return detail::SysError(-unsent, "SendConnection: the socket's queue");
  if (static_cast<std::size_t>(unsent) + 2 * bytes < static_cast<std::size_t>(sndbuf)) return {};
  return detail::SysError(EAGAIN, "SendConnection: the receiver is behind (no room for a " +
                                      std::to_string(bytes) + "-byte state)");
}

// DistrustSocket (ReceiveConnectionOptions::untrusted_sender): fd made
// non-blocking, its SO_LINGER off, whatever the sender left there. Errors
// are ignored: a descriptor that is no socket is refused afterwards. Both
// live in state the sender shares (the open file description, the socket)
// and can be set again from its own copy: so a descriptor refused here is
// not closed on the strength of them, but with CloseWithoutWaiting.
void DistrustSocket(int fd) {
  (void)detail::SetNonBlocking(fd, true);
  const linger off{0, 0};
  (void)::setsockopt(fd, SOL_SOCKET, SO_LINGER, &off, sizeof(off));
}

// ReceivedFds: the descriptors one message brought, each closed when this
// goes unless released; from an untrusted sender without waiting.
struct ReceivedFds {
  ~ReceivedFds() {
    for (int fd : fds) {
      if (fd < 0) continue;
      if (untrusted) {
        CloseWithoutWaiting(fd);
      } else {
        ::close(fd);
      }
    }
  }
  std::vector<int> fds;
  bool untrusted = false;
};

}  // namespace

void CloseWithoutWaiting(int fd, bool reset) noexcept {
  if (fd < 0) return;
  if (reset) {
    // Abortive: a close that is the socket's last waits only while a FIN
    // is unacknowledged with SO_LINGER on and a timeout, and this one
    // sends none (the peer gets a reset, what was unsent is dropped).
    const linger abort{1, 0};
    (void)::setsockopt(fd, SOL_SOCKET, SO_LINGER, &abort, sizeof(abort));
  }
  // That alone leaves a window: another holder of the socket can set
  // SO_LINGER again, and close its own copy, between the setsockopt above
  // and the close (it can watch SO_LINGER from its copy to time it, or
  // this thread may be preempted there). So the close is on a thread of
  // its own, which is all that such a holder can make wait; after the
  // reset it is normally done at once.
  detail::CloseOnOwnThread(fd);
}

Result<void> SendConnection(int unix_socket, Connection& conn, const SendConnectionOptions& options) {
  if (auto checked = CheckUnixStream(unix_socket, "SendConnection"); !checked.ok()) return checked;
  auto exported = conn.Export();
  if (!exported.ok()) return std::move(exported).error();
  const std::span<const std::byte> state = exported->state().bytes();
  std::array<std::byte, kLengthPrefix> prefix{};
  for (std::size_t i = 0; i < kLengthPrefix; ++i) {
    prefix[i] = static_cast<std::byte>(state.size() >> (8 * (kLengthPrefix - 1 - i)));
  }
  std::array<iovec, 2> iov{iovec{prefix.data(), prefix.size()},
                           iovec{const_cast<std::byte*>(state.data()), state.size()}};
  alignas(cmsghdr) std::array<unsigned char, CMSG_SPACE(sizeof(int))> control{};
  msghdr msg{};
  msg.msg_iov = iov.data();
  msg.msg_iovlen = iov.size();
  msg.msg_control = control.data();
  msg.msg_controllen = control.size();
  cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
  cmsg->cmsg_level = SOL_SOCKET;
  cmsg->cmsg_type = SCM_RIGHTS;
  cmsg->cmsg_len = CMSG_LEN(sizeof(int));
  const int fd = exported->fd();
  std::memcpy(CMSG_DATA(cmsg), &fd, sizeof(fd));
  Result<void> room = options.dont_wait ? CheckRoom(unix_socket, kLengthPrefix + state.size()) : Result<void>();
  ssize_t n = -1;
  const int flags = detail::sys::kSendNoSignal | (options.dont_wait ? MSG_DONTWAIT : 0);
  while (room.ok() && (n = ::sendmsg(unix_socket, &msg, flags)) < 0 && errno == EINTR) {
  }
  if (n <= 0) {
    // Nothing went out: the connection comes back to conn, as it was.
    Error error = !room.ok() ? room.error() : detail::SysError(n < 0 ? errno : EPIPE, "SendConnection: sendmsg");
    auto back = Connection::Import(fd, state);
    if (!back.ok()) {
      error.detail += "; and the connection could not be taken back: " + back.error().detail;
      return error;
    }
    exported->release_fd();
    conn = std::move(back).value();
    return error;
  }
  // The descriptor went with the first byte; the rest of the state follows.
  // This process's copy is not the socket's last while the receiver holds
  // one, unless that receiver closed it already, having set SO_LINGER: an
  // untrusted one may have.
  if (options.untrusted_receiver) CloseWithoutWaiting(exported->release_fd(), /*reset=*/false);
  const std::size_t total = kLengthPrefix + state.size();
  if (static_cast<std::size_t>(n) < total) {
    const std::size_t sent = static_cast<std::size_t>(n);
    auto rest = sent < kLengthPrefix
                    ? SendRest(unix_socket, std::span<const std::byte>(prefix).subspan(sent))
                    : Result<void>();
    if (rest.ok()) rest = SendRest(unix_socket, state.subspan(sent < kLengthPrefix ? 0 : sent - kLengthPrefix));
    if (!rest.ok()) {
      Error error = rest.error();
      error.detail += " after part of the state went out: the connection is lost";
      return error;
    }
  }
  return {};  // exported closes this process's copy of the socket.
}

Result<Connection> ReceiveConnection(int unix_socket, const ReceiveConnectionOptions& options) {
  if (auto checked = CheckUnixStream(unix_socket, "ReceiveConnection"); !checked.ok()) return checked.error();
  if (options.peer_uid) {
    uid_t sender_uid = 0;
    if (const int rc = detail::sys::PeerUid(unix_socket, &sender_uid); rc != 0) {
      return detail::SysError(-rc, "ReceiveConnection: the sender's uid (SO_PEERCRED)");
    }
    if (sender_uid != *options.peer_uid) {
      return detail::MakeError(ErrorCategory::kUsage, "ReceiveConnection: the sender runs as uid " +
                                                          std::to_string(sender_uid) + ", not " +
                                                          std::to_string(*options.peer_uid));
    }
  }
  std::array<std::byte, kLengthPrefix> prefix{};
  iovec iov{prefix.data(), prefix.size()};
  alignas(cmsghdr) std::array<unsigned char, CMSG_SPACE(kMaxFds * sizeof(int))> control{};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.data();
  msg.msg_controllen = control.size();
  const ssize_t n = detail::sys::RecvMsgCloexec(unix_socket, &msg);
  if (n < 0) return detail::SysError(static_cast<int>(-n), "ReceiveConnection: recvmsg");
  // Every descriptor that arrived is owned here from now on; one refused
  // (any error below) from an untrusted sender is closed without waiting,
  // as its sender may have set it up again since DistrustSocket.
  ReceivedFds received;
  received.untrusted = options.untrusted_sender;
  std::vector<int>& fds = received.fds;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      fds.push_back(fd);
    }
  }
  if (options.untrusted_sender) {
    for (int fd : fds) DistrustSocket(fd);
  }
  if (n == 0 && fds.empty()) {
    return detail::MakeError(ErrorCategory::kClosed, "ReceiveConnection: the sender closed the socket");
  }
  if (static_cast<std::size_t>(n) < prefix.size()) {
    if (auto rest = RecvExactly(unix_socket, std::span<std::byte>(prefix).subspan(static_cast<std::size_t>(n)));
        !rest.ok()) {
      return std::move(rest).error();
    }
  }
  std::size_t len = 0;
  for (std::byte b : prefix) len = (len << 8) | static_cast<std::size_t>(b);
  if (len > kMaxConnectionStateBytes) {
    return detail::MakeError(ErrorCategory::kUsage, "ReceiveConnection: a state of " + std::to_string(len) +
                                                        " bytes is too large (the socket is out of step now)");
  }
  // The whole message is read before anything in it is judged, so that
  // the next one starts where it should.
  WipedBuffer state(len);
  if (auto got = RecvExactly(unix_socket, state.bytes); !got.ok()) return std::move(got).error();
  if ((msg.msg_flags & MSG_CTRUNC) != 0 || fds.size() != 1) {
    return detail::MakeError(ErrorCategory::kUsage, "ReceiveConnection: expected one descriptor, got " +
                                                        std::to_string(fds.size()) +
                                                        ((msg.msg_flags & MSG_CTRUNC) != 0 ? " and more" : ""));
  }
  // From an untrusted sender, the connection never waits on what the
  // sender can still set from its copy (ConnectionImpl::from_untrusted_sender).
  auto conn = detail::ImportConnection(fds[0], state.bytes, options.untrusted_sender);
  if (!conn.ok()) return std::move(conn).error();
  fds[0] = -1;  // The Connection owns it.
  return conn;
}

}  // namespace ktls
