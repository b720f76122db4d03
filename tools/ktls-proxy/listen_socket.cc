// tools/ktls-proxy/listen_socket.cc: see listen_socket.h.
#include "ktls-proxy/listen_socket.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

namespace ktls::proxy {

UniqueFd OpenListenSocket(const std::string& host, std::uint16_t port, const ListenSocketOptions& options,
                          const char* flag, std::uint16_t& bound_port, std::string& error) {
  sockaddr_storage addr{};
  socklen_t addr_len = 0;
  auto* in = reinterpret_cast<sockaddr_in*>(&addr);
  auto* in6 = reinterpret_cast<sockaddr_in6*>(&addr);
  if (::inet_pton(AF_INET, host.c_str(), &in->sin_addr) == 1) {
    in->sin_family = AF_INET;
    in->sin_port = htons(port);
    addr_len = sizeof(sockaddr_in);
  } else if (::inet_pton(AF_INET6, host.c_str(), &in6->sin6_addr) == 1) {
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(port);
    addr_len = sizeof(sockaddr_in6);
  } else {
    error = std::string(flag) + " wants a numeric address, got " + host;
    return UniqueFd();
  }
  UniqueFd fd(::socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC | (options.non_blocking ? SOCK_NONBLOCK : 0), 0));
  const int one = 1;
  if (fd.get() < 0 || ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
      (options.reuse_port && ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0) ||
      ::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), addr_len) != 0 || ::listen(fd.get(), options.backlog) != 0) {
    error = std::string(flag) + ": cannot listen on " + host + ":" + std::to_string(port) + ": " + std::strerror(errno);
    return UniqueFd();
  }
  sockaddr_storage bound{};
  socklen_t bound_len = sizeof(bound);
  ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&bound), &bound_len);
  bound_port = ntohs(bound.ss_family == AF_INET ? reinterpret_cast<sockaddr_in&>(bound).sin_port
                                                : reinterpret_cast<sockaddr_in6&>(bound).sin6_port);
  return fd;
}

}  // namespace ktls::proxy
