// kernel/socket_platform.h: the socket calls and flags whose spelling
// differs between Linux and other POSIX systems, in one place.
//
// Everything outside src/kernel/ uses these instead of the Linux spellings
// (accept4, SOCK_CLOEXEC, MSG_NOSIGNAL, MSG_MORE, MSG_CMSG_CLOEXEC,
// SO_PEERCRED, TCP_INFO, F_GETPIPE_SZ, SIOCOUTQ, SPLICE_F_*), so the library builds
// from its portable parts where Linux is not there; scripts/check-portable
// fails the build's tests if one comes back. socket_platform.cc picks each
// spelling by what the system's headers offer, not by KTLS_KERNEL_TLS: a
// build without kernel TLS on Linux still uses MSG_NOSIGNAL.
#ifndef KTLS_SRC_KERNEL_SOCKET_PLATFORM_H_
#define KTLS_SRC_KERNEL_SOCKET_PLATFORM_H_

#include <sys/socket.h>
#include <sys/types.h>

namespace ktls::detail::sys {

// kSendNoSignal: flags for send/sendmsg that keep a send to a peer that is
// gone from raising SIGPIPE (MSG_NOSIGNAL). 0 where the system has no such
// flag; there every socket from Socket and Accept has SO_NOSIGPIPE instead.
extern const int kSendNoSignal;

// kSendMore: sendmsg's MSG_MORE (more data follows: kTLS keeps the record
// open), or 0 where there is none.
extern const int kSendMore;

// Socket: socket(2) with close-on-exec (and SO_NOSIGPIPE where sends need
// it). Returns the descriptor, or -errno.
int Socket(int domain, int type, int protocol);

// Accept: accept(2) on listen_fd with close-on-exec (and SO_NOSIGPIPE where
// sends need it). Returns the descriptor, or -errno (EINTR not retried: the
// caller decides).
int Accept(int listen_fd);

// KeepSendsFromSignalling: for a socket ktls did not make (the caller's, for
// a handshake or OffloadSsl), what Socket and Accept do for theirs: where
// sends have no MSG_NOSIGNAL, SO_NOSIGPIPE, so that a send to a peer that
// is gone is EPIPE for that connection, never SIGPIPE for the process.
// Nothing to do on Linux. Returns 0, or -errno.
int KeepSendsFromSignalling(int fd);

// RecvMsgCloexec: recvmsg(2) whose received descriptors (SCM_RIGHTS) are
// close-on-exec (MSG_CMSG_CLOEXEC; elsewhere FD_CLOEXEC right after, which
// a concurrent fork+exec can race). Retries EINTR. Returns the bytes read,
// or -errno.
ssize_t RecvMsgCloexec(int fd, struct msghdr* msg);

// PeerUid: the uid of the process at the other end of a connected AF_UNIX
// socket, in *uid. Returns 0, or -errno (-ENOSYS where the system cannot
// tell).
int PeerUid(int fd, uid_t* uid);

// TcpState: what TCP's state says about whether a socket can still send.
enum class TcpState {
  kCanSend,  // ESTABLISHED or CLOSE_WAIT.
  kReset,    // CLOSE: the peer reset the connection (or both sides closed).
  kCannotSend,  // Any other state: our FIN went out, or the socket never connected.
  kUnknown,     // The system does not say (or the call failed).
};

// TcpStateOf asks the kernel for fd's TCP state (Linux: one byte of
// TCP_INFO, through the syscall seam). kUnknown where the system has no
// such query.
TcpState TcpStateOf(int fd);

// PipeCapacity: the bytes a pipe holds when full (F_GETPIPE_SZ), or -errno
// (-ENOSYS where the system cannot tell; -EBADF or -EINVAL: not a pipe).
int PipeCapacity(int pipe_fd);

// UnsentBytes: what fd's send queue holds that the receiver has not taken
// yet, as the kernel counts it against SO_SNDBUF (Linux: SIOCOUTQ, which on
// an AF_UNIX socket includes the kernel's own overhead per buffer). Returns
// the count, or -errno (-ENOSYS where the system cannot tell).
int UnsentBytes(int fd);

// splice(2) flags (SPLICE_F_*, Linux 2.6.17); 0 where there is no splice.
extern const unsigned int kSpliceMove;
extern const unsigned int kSpliceNonblock;
extern const unsigned int kSpliceMore;

}  // namespace ktls::detail::sys

#endif  // KTLS_SRC_KERNEL_SOCKET_PLATFORM_H_
