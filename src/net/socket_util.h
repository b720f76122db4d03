// net/socket_util.h: address parsing and socket helpers for the server and
// client.
#ifndef KTLS_SRC_NET_SOCKET_UTIL_H_
#define KTLS_SRC_NET_SOCKET_UTIL_H_

#include <sys/socket.h>

#include <cstdint>
#include <string>

#include "core/unique_fd.h"
#include "ktls/result.h"

namespace ktls::detail {

// SplitHostPort splits "host:port" or "[v6]:port".
Result<std::pair<std::string, std::string>> SplitHostPort(const std::string& host_port);

// ListenTcp binds and listens on host:port.
Result<UniqueFd> ListenTcp(const std::string& host, const std::string& port);

// ConnectTcp resolves host and connects to the first address that answers.
Result<UniqueFd> ConnectTcp(const std::string& host, const std::string& port);

// PortOf returns the port of an IPv4 or IPv6 address (host order), or 0
// for any other family.
std::uint16_t PortOf(const sockaddr_storage& addr);

// SetNonBlocking sets or clears fd's O_NONBLOCK (one ioctl, FIONBIO).
Result<void> SetNonBlocking(int fd, bool on);

// CloseOnOwnThread closes fd on a thread started for it when its close
// could wait (a socket another process set SO_LINGER on, then closed its
// own copy of: this close is the last, and waits for what is unsent to be
// taken), so that only that thread waits; a process that exits meanwhile
// ends the wait (the kernel never lingers for an exiting process). With
// SO_LINGER off or abortive (no timeout), or if no thread can be started,
// fd is closed here.
void CloseOnOwnThread(int fd) noexcept;

}  // namespace ktls::detail

#endif  // KTLS_SRC_NET_SOCKET_UTIL_H_
