// tests/support/fault_syscalls.cc: the test side of the syscall seam. Each
// call checks the injected faults, then forwards to the kernel.
#include "tests/support/fault_syscalls.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <mutex>
#include <utility>
#include <vector>

#include "kernel/kernel_tls_build.h"
#include "kernel/syscalls.h"

#if KTLS_KERNEL_TLS
#include <sys/sendfile.h>
#endif

namespace ktls::testing {
namespace {

struct State {
  std::mutex mu;
  std::vector<Fault> faults;
  std::array<int, 9> counts{};  // One per Syscall.
  StandIns stand_ins;
};

State& GetState() {
  static State state;
  return state;
}

// MatchFault returns the errno to fail with, or 0 to let the call through.
int MatchFault(Syscall call, std::optional<int> level = std::nullopt,
               std::optional<int> name = std::nullopt) {
  State& state = GetState();
  std::lock_guard lock(state.mu);
  ++state.counts[static_cast<std::size_t>(call)];
  for (Fault& fault : state.faults) {
    if (fault.call != call || fault.times == 0) continue;
    if (fault.level && fault.level != level) continue;
    if (fault.name && fault.name != name) continue;
    if (fault.skip > 0) {
      --fault.skip;
      continue;
    }
    if (fault.times > 0) --fault.times;
    return fault.err;
  }
  return 0;
}

// StandIn returns a copy of one stand-in, taken under the lock, so that it
// runs without the lock (it may call through the seam itself).
template <typename Member>
auto StandIn(Member member) {
  State& state = GetState();
  std::lock_guard lock(state.mu);
  return state.stand_ins.*member;
}

template <typename Call>
auto Restart(Call call) -> decltype(call()) {
  for (;;) {
    auto result = call();
    if (result >= 0) return result;
    if (errno != EINTR) return -errno;
  }
}

}  // namespace

void InjectFault(const Fault& fault) {
  State& state = GetState();
  std::lock_guard lock(state.mu);
  state.faults.push_back(fault);
}

void ClearFaults() {
  State& state = GetState();
  std::lock_guard lock(state.mu);
  state.faults.clear();
  state.counts.fill(0);
  state.stand_ins = StandIns();
}

void SetStandIns(StandIns stand_ins) {
  State& state = GetState();
  std::lock_guard lock(state.mu);
  state.stand_ins = std::move(stand_ins);
}

int CallCount(Syscall call) {
  State& state = GetState();
  std::lock_guard lock(state.mu);
  return state.counts[static_cast<std::size_t>(call)];
}

}  // namespace ktls::testing

namespace ktls::detail::sys {

using ktls::testing::StandIns;
using ktls::testing::Syscall;

int SetSockOpt(int fd, int level, int name, const void* value, socklen_t value_len) {
  if (int err = ktls::testing::MatchFault(Syscall::kSetSockOpt, level, name)) return -err;
  if (auto stand_in = ktls::testing::StandIn(&StandIns::set_sock_opt)) {
    if (auto result = stand_in(fd, level, name, value, value_len)) return *result;
  }
  return ktls::testing::Restart([&] { return ::setsockopt(fd, level, name, value, value_len); });
}

int GetSockOpt(int fd, int level, int name, void* value, socklen_t* value_len) {
  if (int err = ktls::testing::MatchFault(Syscall::kGetSockOpt, level, name)) return -err;
  if (auto stand_in = ktls::testing::StandIn(&StandIns::get_sock_opt)) {
    if (auto result = stand_in(fd, level, name, value, value_len)) return *result;
  }
  return ktls::testing::Restart([&] { return ::getsockopt(fd, level, name, value, value_len); });
}

ssize_t SendMsg(int fd, const struct msghdr* msg, int flags) {
  if (int err = ktls::testing::MatchFault(Syscall::kSendMsg)) return -err;
  if (auto stand_in = ktls::testing::StandIn(&StandIns::send_msg)) {
    if (auto result = stand_in(fd, msg, flags)) return *result;
  }
  return ktls::testing::Restart([&] { return ::sendmsg(fd, msg, flags); });
}

ssize_t RecvMsg(int fd, struct msghdr* msg, int flags) {
  if (int err = ktls::testing::MatchFault(Syscall::kRecvMsg)) return -err;
  if (auto stand_in = ktls::testing::StandIn(&StandIns::recv_msg)) {
    if (auto result = stand_in(fd, msg, flags)) return *result;
  }
  return ktls::testing::Restart([&] { return ::recvmsg(fd, msg, flags); });
}

ssize_t SendFile(int out_fd, int in_fd, off_t* offset, std::size_t count) {
  if (int err = ktls::testing::MatchFault(Syscall::kSendFile)) return -err;
#if KTLS_KERNEL_TLS
  return ktls::testing::Restart([&] { return ::sendfile(out_fd, in_fd, offset, count); });
#else
  (void)out_fd, (void)in_fd, (void)offset, (void)count;
  return -ENOSYS;
#endif
}

ssize_t Read(int fd, void* buf, std::size_t len) {
  if (int err = ktls::testing::MatchFault(Syscall::kRead)) return -err;
  return ktls::testing::Restart([&] { return ::read(fd, buf, len); });
}

ssize_t Write(int fd, const void* buf, std::size_t len) {
  if (int err = ktls::testing::MatchFault(Syscall::kWrite)) return -err;
  return ktls::testing::Restart([&] { return ::write(fd, buf, len); });
}

ssize_t Splice(int fd_in, int fd_out, std::size_t len, unsigned int flags) {
  if (int err = ktls::testing::MatchFault(Syscall::kSplice)) return -err;
#if KTLS_KERNEL_TLS
  return ktls::testing::Restart([&] { return ::splice(fd_in, nullptr, fd_out, nullptr, len, flags); });
#else
  (void)fd_in, (void)fd_out, (void)len, (void)flags;
  return -ENOSYS;
#endif
}

int Shutdown(int fd, int how) {
  if (int err = ktls::testing::MatchFault(Syscall::kShutdown)) return -err;
  return ::shutdown(fd, how) == 0 ? 0 : -errno;
}

}  // namespace ktls::detail::sys
