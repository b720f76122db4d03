// tests/support/fault_syscalls.h: make any call through the syscall seam
// fail on demand, or stand in for it. Linked only into test binaries (see
// src/kernel/syscalls.h).
#ifndef KTLS_TESTS_SUPPORT_FAULT_SYSCALLS_H_
#define KTLS_TESTS_SUPPORT_FAULT_SYSCALLS_H_

#include <sys/socket.h>
#include <sys/types.h>

#include <functional>
#include <optional>

namespace ktls::testing {

enum class Syscall { kSetSockOpt, kGetSockOpt, kSendMsg, kRecvMsg, kSendFile, kRead, kWrite, kSplice, kShutdown };

// Fault: make matching calls fail with err (a positive errno value).
struct Fault {
  Syscall call = Syscall::kSetSockOpt;
  int err = 0;
  std::optional<int> level;  // sockopt calls: match only this level...
  std::optional<int> name;   // ...and only this option name.
  int skip = 0;              // Let this many matching calls through first.
  int times = 1;             // Then fail this many (-1: every one after).
};

// InjectFault adds a fault; faults are checked in the order added.
void InjectFault(const Fault& fault);

// ClearFaults removes every fault and stand-in, and resets the counters.
void ClearFaults();

// CallCount reports how many calls of this kind went through the seam
// (failed or not) since the last ClearFaults.
int CallCount(Syscall call);

// ScopedFault injects a fault for the lifetime of the object, then clears
// all faults.
class ScopedFault {
 public:
  explicit ScopedFault(const Fault& fault) { InjectFault(fault); }
  ~ScopedFault() { ClearFaults(); }
  ScopedFault(const ScopedFault&) = delete;
  ScopedFault& operator=(const ScopedFault&) = delete;
};

// StandIns: functions a test puts in place of whole calls, to observe them
// or to play the kernel (for example, recvmsg results with the
// TLS_GET_RECORD_TYPE control message that kTLS RX gives). Each returns the
// call's result (>= 0, or -errno), or nullopt to let the call go on to the
// kernel. A call meets the injected faults first, then its stand-in. They
// are called without the seam's lock held, from whichever thread made the
// call.
struct StandIns {
  std::function<std::optional<int>(int fd, int level, int name, const void* value, socklen_t value_len)> set_sock_opt;
  std::function<std::optional<int>(int fd, int level, int name, void* value, socklen_t* value_len)> get_sock_opt;
  std::function<std::optional<ssize_t>(int fd, const msghdr* msg, int flags)> send_msg;
  std::function<std::optional<ssize_t>(int fd, msghdr* msg, int flags)> recv_msg;
};

// SetStandIns replaces the stand-ins (empty members: no stand-in).
void SetStandIns(StandIns stand_ins);

}  // namespace ktls::testing

#endif  // KTLS_TESTS_SUPPORT_FAULT_SYSCALLS_H_
