// kernel/syscalls.h: the one seam between ktls and the kernel.
//
// Every system call ktls makes on a socket goes through these functions.
// Each returns the call's non-negative result, or -errno on failure (the
// liburing convention), and retries EINTR itself where the call is
// restartable.
//
// The seam is a link-time one: the production library links
// syscalls_linux.cc, which calls the kernel and nothing else. The unit-test
// build links tests/support/fault_syscalls.cc instead, which forwards to the
// kernel unless a test asked for a failure. No hook exists in the production
// library for anything to reach.
#ifndef KTLS_SRC_KERNEL_SYSCALLS_H_
#define KTLS_SRC_KERNEL_SYSCALLS_H_

#include <sys/socket.h>
#include <sys/types.h>

#include <cstddef>

namespace ktls::detail::sys {

int SetSockOpt(int fd, int level, int name, const void* value, socklen_t value_len);
int GetSockOpt(int fd, int level, int name, void* value, socklen_t* value_len);
ssize_t SendMsg(int fd, const struct msghdr* msg, int flags);
ssize_t RecvMsg(int fd, struct msghdr* msg, int flags);
ssize_t SendFile(int out_fd, int in_fd, off_t* offset, std::size_t count);
ssize_t Read(int fd, void* buf, std::size_t len);
ssize_t Write(int fd, const void* buf, std::size_t len);
// Splice: splice(2) between a socket and a pipe (no offsets).
ssize_t Splice(int fd_in, int fd_out, std::size_t len, unsigned int flags);
// Shutdown: shutdown(2).
int Shutdown(int fd, int how);

}  // namespace ktls::detail::sys

#endif  // KTLS_SRC_KERNEL_SYSCALLS_H_
