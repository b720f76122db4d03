// kernel/socket_platform.cc: each platform's spelling of the calls in
// socket_platform.h. The Linux spellings are chosen where the system's
// headers define them; the rest is POSIX.
#include "kernel/socket_platform.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <netinet/tcp.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "kernel/syscalls.h"

namespace ktls::detail::sys {
namespace {

#if defined(MSG_NOSIGNAL)
constexpr bool kNeedSoNoSigPipe = false;
#else
constexpr bool kNeedSoNoSigPipe = true;
#endif

// SetNoSigPipe sets SO_NOSIGPIPE where sends have no MSG_NOSIGNAL (a fd
// that is no socket is left alone). Returns 0, or -errno.
int SetNoSigPipe(int fd) {
  if constexpr (kNeedSoNoSigPipe) {
#if defined(SO_NOSIGPIPE)
    const int one = 1;
    if (::setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof(one)) != 0 && errno != ENOTSOCK) return -errno;
#endif
  }
  (void)fd;
  return 0;
}

// Prepare sets close-on-exec where the call could not, and SO_NOSIGPIPE
// where sends have no MSG_NOSIGNAL. Returns fd, or -errno (fd closed).
int Prepare(int fd, bool set_cloexec) {
  int err = 0;
  if (set_cloexec && ::fcntl(fd, F_SETFD, FD_CLOEXEC) != 0) err = -errno;
  if (err == 0) err = SetNoSigPipe(fd);
  if (err != 0) {
    ::close(fd);
    return err;
  }
  return fd;
}

}  // namespace

#if defined(MSG_NOSIGNAL)
const int kSendNoSignal = MSG_NOSIGNAL;
#else
const int kSendNoSignal = 0;
#endif

#if defined(MSG_MORE)
const int kSendMore = MSG_MORE;
#else
const int kSendMore = 0;
#endif

int Socket(int domain, int type, int protocol) {
#if defined(SOCK_CLOEXEC)
  const int fd = ::socket(domain, type | SOCK_CLOEXEC, protocol);
  return fd < 0 ? -errno : Prepare(fd, false);
#else
  const int fd = ::socket(domain, type, protocol);
  return fd < 0 ? -errno : Prepare(fd, true);
#endif
}

int Accept(int listen_fd) {
#if defined(__linux__) || defined(__FreeBSD__) || defined(__NetBSD__) || defined(__OpenBSD__)
  const int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
  return fd < 0 ? -errno : Prepare(fd, false);
#else
  const int fd = ::accept(listen_fd, nullptr, nullptr);
  return fd < 0 ? -errno : Prepare(fd, true);
#endif
}

ssize_t RecvMsgCloexec(int fd, struct msghdr* msg) {
  // ::recvmsg, not the seam's RecvMsg: moving a connection is not a kTLS
  // socket's I/O, and a test's stand-in for that must not see it.
  ssize_t n;
#if defined(MSG_CMSG_CLOEXEC)
  while ((n = ::recvmsg(fd, msg, MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR) {
  }
  return n < 0 ? -errno : n;
#else
  while ((n = ::recvmsg(fd, msg, 0)) < 0 && errno == EINTR) {
  }
  if (n < 0) return -errno;
  for (cmsghdr* c = CMSG_FIRSTHDR(msg); c != nullptr; c = CMSG_NXTHDR(msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int received;
      std::memcpy(&received, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      (void)::fcntl(received, F_SETFD, FD_CLOEXEC);
    }
  }
  return n;
#endif
}

int KeepSendsFromSignalling(int fd) { return SetNoSigPipe(fd); }

int PeerUid(int fd, uid_t* uid) {
#if defined(SO_PEERCRED)
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return -errno;
  *uid = cred.uid;
  return 0;
#elif defined(__APPLE__) || defined(__FreeBSD__) || defined(__NetBSD__) || defined(__OpenBSD__)
  gid_t gid;
  return ::getpeereid(fd, uid, &gid) == 0 ? 0 : -errno;
#else
  (void)fd, (void)uid;
  return -ENOSYS;
#endif
}

TcpState TcpStateOf(int fd) {
#if defined(__linux__)
  // tcpi_state is tcp_info's first byte (include/uapi/linux/tcp.h): reading
  // one byte is enough, and works with any kernel's tcp_info size.
  unsigned char state = 0;
  socklen_t state_len = sizeof(state);
  if (GetSockOpt(fd, IPPROTO_TCP, TCP_INFO, &state, &state_len) != 0 || state_len != 1) return TcpState::kUnknown;
  if (state == TCP_ESTABLISHED || state == TCP_CLOSE_WAIT) return TcpState::kCanSend;
  if (state == TCP_CLOSE) return TcpState::kReset;
  return TcpState::kCannotSend;
#else
  (void)fd;
  return TcpState::kUnknown;
#endif
}

int PipeCapacity(int pipe_fd) {
#if defined(F_GETPIPE_SZ)
  const int size = ::fcntl(pipe_fd, F_GETPIPE_SZ);
  return size < 0 ? -errno : size;
#else
  (void)pipe_fd;
  return -ENOSYS;
#endif
}

int UnsentBytes(int fd) {
  int bytes = 0;
#if defined(SIOCOUTQ)
  return ::ioctl(fd, SIOCOUTQ, &bytes) < 0 ? -errno : bytes;
#elif defined(FIONWRITE)
  return ::ioctl(fd, FIONWRITE, &bytes) < 0 ? -errno : bytes;
#elif defined(SO_NWRITE)
  socklen_t len = sizeof(bytes);
  return ::getsockopt(fd, SOL_SOCKET, SO_NWRITE, &bytes, &len) < 0 ? -errno : bytes;
#else
  (void)fd;
  (void)bytes;
  return -ENOSYS;
#endif
}

#if defined(SPLICE_F_MOVE)
const unsigned int kSpliceMove = SPLICE_F_MOVE;
const unsigned int kSpliceNonblock = SPLICE_F_NONBLOCK;
const unsigned int kSpliceMore = SPLICE_F_MORE;
#else
const unsigned int kSpliceMove = 0;
const unsigned int kSpliceNonblock = 0;
const unsigned int kSpliceMore = 0;
#endif

}  // namespace ktls::detail::sys
