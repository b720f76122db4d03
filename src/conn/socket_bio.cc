// conn/socket_bio.cc
#include "conn/socket_bio.h"

#include <sys/socket.h>

#include <cerrno>
#include <cstdint>

#include "kernel/socket_platform.h"
#include "kernel/syscalls.h"

namespace ktls::detail {
namespace {

int Fd(BIO* bio) { return static_cast<int>(reinterpret_cast<std::intptr_t>(BIO_get_data(bio))); }

int Transfer(BIO* bio, char* buf, int len, bool write) {
  BIO_clear_retry_flags(bio);
  iovec iov{buf, static_cast<std::size_t>(len)};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  const ssize_t n = write ? sys::SendMsg(Fd(bio), &msg, MSG_DONTWAIT | sys::kSendNoSignal)
                          : sys::RecvMsg(Fd(bio), &msg, MSG_DONTWAIT);
  if (n == 0 && !write && sys::TcpStateOf(Fd(bio)) != sys::TcpState::kReset) {
    // The end of the stream: BIO_eof says so, and OpenSSL then sends
    // decode_error for a missing close_notify, as over its own socket
    // BIO. Not after a reset, which gets no alert (and is then told apart
    // by the caller, EndWithoutCloseNotify).
    BIO_set_flags(bio, BIO_FLAGS_IN_EOF);
  }
  if (n >= 0) return static_cast<int>(n);
  if (n == -EAGAIN || n == -EWOULDBLOCK) {
    if (write) {
      BIO_set_retry_write(bio);
    } else {
      BIO_set_retry_read(bio);
    }
  }
  errno = static_cast<int>(-n);  // SSL_ERROR_SYSCALL callers read errno.
  return -1;
}

int Read(BIO* bio, char* buf, int len) { return Transfer(bio, buf, len, false); }
int Write(BIO* bio, const char* buf, int len) { return Transfer(bio, const_cast<char*>(buf), len, true); }

long Ctrl(BIO* bio, int cmd, long /*num*/, void* ptr) {
  switch (cmd) {
    case BIO_CTRL_FLUSH:
      return 1;
    case BIO_CTRL_EOF:
      return BIO_test_flags(bio, BIO_FLAGS_IN_EOF) != 0 ? 1 : 0;
    case BIO_C_GET_FD:
      if (ptr != nullptr) *static_cast<int*>(ptr) = Fd(bio);
      return Fd(bio);
    default:
      return 0;
  }
}

int Create(BIO* bio) {
  BIO_set_init(bio, 1);
  return 1;
}

const BIO_METHOD* Method() {
  static BIO_METHOD* method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK | BIO_TYPE_DESCRIPTOR, "ktls socket");
    if (m != nullptr) {
      BIO_meth_set_read(m, Read);
      BIO_meth_set_write(m, Write);
      BIO_meth_set_ctrl(m, Ctrl);
      BIO_meth_set_create(m, Create);
    }
    return m;
  }();
  return method;
}

}  // namespace

BIO* NewSocketBio(int fd) {
  const BIO_METHOD* method = Method();
  if (method == nullptr) return nullptr;
  BIO* bio = BIO_new(method);
  if (bio != nullptr) BIO_set_data(bio, reinterpret_cast<void*>(static_cast<std::intptr_t>(fd)));
  return bio;
}

}  // namespace ktls::detail
