// kernel/syscalls_linux.cc: the production side of the syscall seam.
// Plain POSIX but for sendfile(2) and splice(2), which only a build with
// kernel TLS (KTLS_KERNEL_TLS, Linux) has; without it they answer -ENOSYS
// and nothing in the library calls them.
#include "kernel/syscalls.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

#include "kernel/kernel_tls_build.h"

#if KTLS_KERNEL_TLS
#include <sys/sendfile.h>
#endif

namespace ktls::detail::sys {
namespace {

// Retry calls interrupted by a signal; turn -1/errno into -errno.
template <typename Call>
auto Restart(Call call) -> decltype(call()) {
  for (;;) {
    auto result = call();
    if (result >= 0) return result;
    if (errno != EINTR) return -errno;
  }
}

}  // namespace

int SetSockOpt(int fd, int level, int name, const void* value, socklen_t value_len) {
  return Restart([&] { return ::setsockopt(fd, level, name, value, value_len); });
}

int GetSockOpt(int fd, int level, int name, void* value, socklen_t* value_len) {
  return Restart([&] { return ::getsockopt(fd, level, name, value, value_len); });
}

ssize_t SendMsg(int fd, const struct msghdr* msg, int flags) {
  return Restart([&] { return ::sendmsg(fd, msg, flags); });
}

ssize_t RecvMsg(int fd, struct msghdr* msg, int flags) {
  return Restart([&] { return ::recvmsg(fd, msg, flags); });
}

ssize_t SendFile(int out_fd, int in_fd, off_t* offset, std::size_t count) {
#if KTLS_KERNEL_TLS
  return Restart([&] { return ::sendfile(out_fd, in_fd, offset, count); });
#else
  (void)out_fd, (void)in_fd, (void)offset, (void)count;
  return -ENOSYS;
#endif
}

ssize_t Read(int fd, void* buf, std::size_t len) {
  return Restart([&] { return ::read(fd, buf, len); });
}

ssize_t Write(int fd, const void* buf, std::size_t len) {
  return Restart([&] { return ::write(fd, buf, len); });
}

ssize_t Splice(int fd_in, int fd_out, std::size_t len, unsigned int flags) {
#if KTLS_KERNEL_TLS
  return Restart([&] { return ::splice(fd_in, nullptr, fd_out, nullptr, len, flags); });
#else
  (void)fd_in, (void)fd_out, (void)len, (void)flags;
  return -ENOSYS;
#endif
}

int Shutdown(int fd, int how) { return ::shutdown(fd, how) == 0 ? 0 : -errno; }

}  // namespace ktls::detail::sys
