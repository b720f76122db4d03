// tests/support/fault_syscalls.h: make any call through the syscall seam
// fail on demand. Linked only into test binaries (see src/kernel/syscalls.h).
#ifndef KTLS_TESTS_SUPPORT_FAULT_SYSCALLS_H_
#define KTLS_TESTS_SUPPORT_FAULT_SYSCALLS_H_

#include <optional>

namespace ktls::testing {

enum class Syscall { kSetSockOpt, kGetSockOpt, kSendMsg, kRecvMsg, kSendFile, kRead, kWrite };

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

// ClearFaults removes every fault and resets the counters.
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

}  // namespace ktls::testing

#endif  // KTLS_TESTS_SUPPORT_FAULT_SYSCALLS_H_
