// The test seam itself: faults hit only the calls they match, in order.
#include "tests/support/fault_syscalls.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

#include "kernel/syscalls.h"

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

}  // namespace
}  // namespace ktls::testing
