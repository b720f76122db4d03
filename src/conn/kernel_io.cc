// conn/kernel_io.cc: recvmsg and sendmsg with a record type, on kTLS.
#include "conn/kernel_io.h"

#include <sys/socket.h>

#include <array>

#include "kernel/syscalls.h"

namespace ktls::detail {

KernelRecv RecvKernelRecord(int fd, std::span<std::byte> buf, int flags) {
  alignas(cmsghdr) std::array<unsigned char, CMSG_SPACE(sizeof(unsigned char))> control{};
  iovec iov{buf.data(), buf.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.data();
  msg.msg_controllen = control.size();
  KernelRecv got;
  got.n = sys::RecvMsg(fd, &msg, flags);
  if (got.n < 0) return got;
  for (cmsghdr* cmsg = CMSG_FIRSTHDR(&msg); cmsg != nullptr; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
    if (cmsg->cmsg_level == uapi::kSolTls && cmsg->cmsg_type == uapi::kTlsGetRecordType) {
      got.type = *CMSG_DATA(cmsg);
      got.typed = true;
    }
  }
  got.msg_flags = msg.msg_flags;
  got.record_end = (msg.msg_flags & MSG_EOR) != 0;
  return got;
}

ssize_t SendControlRecord(int fd, unsigned char type, std::span<const unsigned char> payload, int flags) {
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
  return sys::SendMsg(fd, &msg, flags);
}

}  // namespace ktls::detail
