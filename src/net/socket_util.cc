// net/socket_util.cc
#include "net/socket_util.h"

#include <netdb.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <cerrno>
#include <memory>
#include <system_error>
#include <thread>

#include "core/errors.h"
#include "kernel/socket_platform.h"

namespace ktls::detail {
namespace {

struct AddrInfoFree {
  void operator()(addrinfo* ai) const { freeaddrinfo(ai); }
};

Result<std::unique_ptr<addrinfo, AddrInfoFree>> Resolve(const std::string& host, const std::string& port,
                                                        bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = passive ? AI_PASSIVE : AI_ADDRCONFIG;
  addrinfo* result = nullptr;
  const int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &result);
  if (rc != 0) {
    return MakeError(ErrorCategory::kIo, "cannot resolve " + host + ":" + port + ": " + gai_strerror(rc));
  }
  return std::unique_ptr<addrinfo, AddrInfoFree>(result);
}

}  // namespace

Result<std::pair<std::string, std::string>> SplitHostPort(const std::string& host_port) {
  const std::size_t colon = host_port.rfind(':');
  if (colon == std::string::npos || colon + 1 == host_port.size()) {
    return MakeError(ErrorCategory::kUsage, "expected HOST:PORT, got \"" + host_port + "\"");
  }
  std::string host = host_port.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  return std::make_pair(host, host_port.substr(colon + 1));
}

Result<UniqueFd> ListenTcp(const std::string& host, const std::string& port) {
  auto addrs = Resolve(host, port, true);
  if (!addrs.ok()) return std::move(addrs).error();
  int last_errno = 0;
  for (addrinfo* ai = addrs->get(); ai != nullptr; ai = ai->ai_next) {
    const int made = sys::Socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
    if (made < 0) {
      last_errno = -made;
      continue;
    }
    UniqueFd fd(made);
    const int one = 1;
    ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0 || ::listen(fd.get(), SOMAXCONN) != 0) {
      last_errno = errno;
      continue;
    }
    return fd;
  }
  return SysError(last_errno, "cannot listen on " + host + ":" + port);
}

Result<UniqueFd> ConnectTcp(const std::string& host, const std::string& port) {
  auto addrs = Resolve(host, port, false);
  if (!addrs.ok()) return std::move(addrs).error();
  int last_errno = 0;
  for (addrinfo* ai = addrs->get(); ai != nullptr; ai = ai->ai_next) {
    const int made = sys::Socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
    if (made < 0) {
      last_errno = -made;
      continue;
    }
    UniqueFd fd(made);
    int rc;
    do {
      rc = ::connect(fd.get(), ai->ai_addr, ai->ai_addrlen);
    } while (rc != 0 && errno == EINTR);
    if (rc != 0) {
      last_errno = errno;
      continue;
    }
    const int one = 1;
    ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
  }
  return SysError(last_errno, "cannot connect to " + host + ":" + port);
}

std::uint16_t PortOf(const sockaddr_storage& addr) {
  if (addr.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in&>(addr).sin_port);
  if (addr.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6&>(addr).sin6_port);
  return 0;
}

Result<void> SetNonBlocking(int fd, bool on) {
  // FIONBIO sets or clears O_NONBLOCK alone: one call, where fcntl takes
  // two (F_GETFL, then F_SETFL with the other flags kept).
  int value = on ? 1 : 0;
  if (::ioctl(fd, FIONBIO, &value) != 0) return SysError(errno, "ioctl(FIONBIO)");
  return {};
}

void CloseOnOwnThread(int fd) noexcept {
  if (fd < 0) return;
  // Only a lingering close (SO_LINGER on, with a timeout) can wait; with
  // linger off or abortive, close here and start no thread (one for each
  // connection a key holder hands to a worker would cost more than the
  // hand-off). Left: a holder that sets SO_LINGER, and closes its own
  // copy, between this getsockopt and the close. It cannot see when that
  // is, and must do both in a window of two system calls in a row.
  linger current{};
  socklen_t len = sizeof(current);
  if (::getsockopt(fd, SOL_SOCKET, SO_LINGER, &current, &len) == 0 &&
      (current.l_onoff == 0 || current.l_linger == 0)) {
    ::close(fd);
    return;
  }
  try {
    std::thread([fd] { ::close(fd); }).detach();
  } catch (const std::system_error&) {
    ::close(fd);  // No thread to be had (EAGAIN): the caller's, then.
  }
}

}  // namespace ktls::detail
