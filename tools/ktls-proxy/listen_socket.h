// tools/ktls-proxy/listen_socket.h: a listening TCP socket on a numeric
// address, for the proxy's listeners and the --metrics one.
#ifndef KTLS_TOOLS_KTLS_PROXY_LISTEN_SOCKET_H_
#define KTLS_TOOLS_KTLS_PROXY_LISTEN_SOCKET_H_

#include <cstdint>
#include <string>

#include "ktls-proxy/unique_fd.h"

namespace ktls::proxy {

struct ListenSocketOptions {
  bool reuse_port = false;    // SO_REUSEPORT: several listeners share the port.
  bool non_blocking = false;  // SOCK_NONBLOCK.
  int backlog = 4096;
};

// OpenListenSocket binds host (an IPv4 or IPv6 address) and port (0: a free
// one) and listens; bound_port says which port. An invalid socket and
// `error` (naming flag, "--listen") on failure.
UniqueFd OpenListenSocket(const std::string& host, std::uint16_t port, const ListenSocketOptions& options,
                          const char* flag, std::uint16_t& bound_port, std::string& error);

}  // namespace ktls::proxy

#endif  // KTLS_TOOLS_KTLS_PROXY_LISTEN_SOCKET_H_
