// The test seam itself: faults hit only the calls they match, in order.
#include "tests/support/fault_syscalls.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <optional>
#include <vector>

#include "conn/kernel_io.h"
#include "kernel/syscalls.h"
#include "kernel/tls_uapi.h"
#include "tests/support/scripted_ktls.h"

namespace ktls::testing {
namespace {

class FaultSyscalls : public ::testing::Test {
 protected:
  void SetUp() override {
    ClearFaults();
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_GE(fd_, 0);
  }
  void TearDown() override {
    ClearFaults();
    ::close(fd_);
  }
  int SetNoDelay() {
    int one = 1;
    return detail::sys::SetSockOpt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  }
  int fd_ = -1;
};

TEST_F(FaultSyscalls, PassesThroughWithoutFaults) {
  EXPECT_EQ(SetNoDelay(), 0);
  EXPECT_EQ(CallCount(Syscall::kSetSockOpt), 1);
}

TEST_F(FaultSyscalls, FailsMatchingCallAfterSkip) {
  InjectFault({.call = Syscall::kSetSockOpt, .err = EBUSY, .level = IPPROTO_TCP, .name = TCP_NODELAY, .skip = 1});
  EXPECT_EQ(SetNoDelay(), 0);        // Skipped.
  EXPECT_EQ(SetNoDelay(), -EBUSY);   // Failed.
  EXPECT_EQ(SetNoDelay(), 0);        // times = 1: spent.
  EXPECT_EQ(CallCount(Syscall::kSetSockOpt), 3);
}

TEST_F(FaultSyscalls, IgnoresOtherOptionsAndCalls) {
  ScopedFault fault({.call = Syscall::kSetSockOpt, .err = ENOENT, .level = IPPROTO_TCP, .name = TCP_CORK});
  EXPECT_EQ(SetNoDelay(), 0);
  char byte = 0;
  EXPECT_EQ(detail::sys::Read(fd_, &byte, 1), -ENOTCONN);  // The real kernel's answer.
}

TEST_F(FaultSyscalls, RealErrorsComeBackAsNegativeErrno) {
  EXPECT_EQ(detail::sys::SetSockOpt(-1, IPPROTO_TCP, TCP_NODELAY, nullptr, 0), -EBADF);
}

TEST_F(FaultSyscalls, ForeverFault) {
  InjectFault({.call = Syscall::kRecvMsg, .err = EIO, .times = -1});
  msghdr msg{};
  for (int i = 0; i < 3; ++i) EXPECT_EQ(detail::sys::RecvMsg(fd_, &msg, 0), -EIO);
}

TEST_F(FaultSyscalls, StandInTakesTheCallAfterFaultsAndClearFaultsRemovesIt) {
  int seen_level = -1;
  SetStandIns({.set_sock_opt = [&](int, int level, int, const void*, socklen_t) -> std::optional<int> {
    seen_level = level;
    return level == IPPROTO_TCP ? std::optional<int>(-EPERM) : std::nullopt;
  }});
  EXPECT_EQ(SetNoDelay(), -EPERM);  // Answered by the stand-in, never reached the kernel.
  EXPECT_EQ(seen_level, IPPROTO_TCP);
  int one = 1;
  EXPECT_EQ(detail::sys::SetSockOpt(fd_, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one)), 0);  // nullopt: the kernel.
  InjectFault({.call = Syscall::kSetSockOpt, .err = EBUSY});
  EXPECT_EQ(SetNoDelay(), -EBUSY);  // The fault first.
  ClearFaults();
  EXPECT_EQ(SetNoDelay(), 0);
}

// ScriptedKtlsRx: the recvmsg answers kTLS RX gives, which the kernel_rx
// fuzzer and the connection tests rely on.
struct TypedRead {
  ssize_t rc = 0;
  int type = -1;  // -1: no TLS_GET_RECORD_TYPE control message.
  std::vector<std::uint8_t> bytes;
};

TypedRead ReadFrom(ScriptedKtlsRx& rx, std::size_t len, bool with_control = true) {
  std::vector<std::uint8_t> buf(len);
  alignas(cmsghdr) unsigned char control[CMSG_SPACE(1)] = {};
  iovec iov{buf.data(), buf.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (with_control) {
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
  }
  TypedRead out;
  out.rc = rx.RecvMsg(&msg);
  if (out.rc > 0) out.bytes.assign(buf.begin(), buf.begin() + out.rc);
  if (with_control && msg.msg_controllen > 0) {
    const cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
    if (cmsg->cmsg_level == detail::uapi::kSolTls && cmsg->cmsg_type == detail::uapi::kTlsGetRecordType) {
      out.type = *CMSG_DATA(cmsg);
    }
  }
  return out;
}

TEST(ScriptedKtlsRx, AnswersLikeKtlsRx) {
  using B = std::vector<std::uint8_t>;
  ScriptedKtlsRx rx;
  EXPECT_EQ(ReadFrom(rx, 10).rc, -EAGAIN);
  rx.QueueRecord(23, B{1, 2});
  rx.QueueRecord(23, B{3, 4, 5});
  rx.QueueRecord(21, B{1, 0});
  rx.QueueRecord(22, B{4, 0, 0, 0});
  rx.QueueRecord(22, B{4, 0, 0, 0});
  rx.QueueError(EBADMSG);
  rx.QueueError(0);
  TypedRead read = ReadFrom(rx, 4);  // Data records merge, up to the buffer.
  EXPECT_EQ(read.type, 23);
  EXPECT_EQ(read.bytes, (B{1, 2, 3, 4}));
  read = ReadFrom(rx, 100);  // The rest of the data record, never with the alert.
  EXPECT_EQ(read.bytes, (B{5}));
  EXPECT_EQ(ReadFrom(rx, 100, /*with_control=*/false).rc, -EIO);  // No room to say "alert".
  read = ReadFrom(rx, 1);  // A control record in pieces, each with its type.
  EXPECT_EQ(read.type, 21);
  EXPECT_EQ(read.bytes, (B{1}));
  read = ReadFrom(rx, 100);
  EXPECT_EQ(read.type, 21);
  EXPECT_EQ(read.bytes, (B{0}));
  EXPECT_EQ(ReadFrom(rx, 100).bytes, (B{4, 0, 0, 0}));  // Control records never merge.
  EXPECT_EQ(ReadFrom(rx, 100).bytes, (B{4, 0, 0, 0}));
  EXPECT_EQ(ReadFrom(rx, 100).rc, -EBADMSG);  // Once.
  EXPECT_EQ(ReadFrom(rx, 100).rc, 0);         // FIN, for good.
  EXPECT_EQ(ReadFrom(rx, 100).rc, 0);
}

TEST(ScriptedKtlsRx, ParseSentRecordReadsTheRecordType) {
  std::uint8_t payload[2] = {2, 40};
  iovec iov{payload, sizeof(payload)};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  EXPECT_EQ(ParseSentRecord(&msg).type, 23);  // No control message: application data.
  // A control record as the library sends it (conn/kernel_io.h), caught at
  // the seam.
  SentRecord sent;
  SetStandIns({.send_msg = [&](int, const msghdr* sent_msg, int) -> std::optional<ssize_t> {
    sent = ParseSentRecord(sent_msg);
    return static_cast<ssize_t>(sent.bytes.size());
  }});
  EXPECT_EQ(detail::SendControlRecord(-1, 21, payload, MSG_NOSIGNAL), 2);
  ClearFaults();
  EXPECT_EQ(sent.type, 21);
  EXPECT_EQ(sent.bytes, (std::vector<std::uint8_t>{2, 40}));
}

}  // namespace
}  // namespace ktls::testing
