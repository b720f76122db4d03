// conn/kernel_io.h: sending and receiving on a socket whose directions are
// in the kernel (kTLS): a record's type travels in a SOL_TLS control
// message. The one implementation, for the library and its tests alike;
// every call goes through the syscall seam (kernel/syscalls.h).
#ifndef KTLS_SRC_CONN_KERNEL_IO_H_
#define KTLS_SRC_CONN_KERNEL_IO_H_

#include <sys/types.h>

#include <cerrno>
#include <cstddef>
#include <span>

#include "core/errors.h"
#include "kernel/tls_uapi.h"

namespace ktls::detail {

inline bool WouldBlock(int err) { return err == EAGAIN || err == EWOULDBLOCK; }

// IsWouldBlock: a control record could not go out now (non-blocking socket
// with a full send buffer). Nothing was sent; trying again later is safe.
inline bool IsWouldBlock(const Error& error) {
  return error.category == ErrorCategory::kIo && WouldBlock(error.sys_errno);
}

// KernelRecv: what one recvmsg on a socket with kTLS RX returned.
struct KernelRecv {
  ssize_t n = 0;       // Bytes, or -errno.
  bool typed = false;  // The kernel named a record type: n == 0 is then an empty record, not the end.
  unsigned char type = uapi::kRecordApplicationData;
  bool record_end = false;  // MSG_EOR: the call returned a control record's last byte.
  int msg_flags = 0;        // All of the call's msg_flags (MSG_EOR, MSG_CTRUNC).
};

// RecvKernelRecord reads into buf. With TLS_RX set, every recvmsg must
// offer a control buffer: the kernel returns a non-data record only to a
// caller that can learn its type, and never mixes record types in one call.
KernelRecv RecvKernelRecord(int fd, std::span<std::byte> buf, int flags);

// SendControlRecord sends payload as one record of the given content type
// (sendmsg with a TLS_SET_RECORD_TYPE control message; Linux 4.13) on a
// socket whose TX is in the kernel. Returns the bytes sent, or -errno.
ssize_t SendControlRecord(int fd, unsigned char type, std::span<const unsigned char> payload, int flags);

}  // namespace ktls::detail

#endif  // KTLS_SRC_CONN_KERNEL_IO_H_
