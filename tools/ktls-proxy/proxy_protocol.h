// tools/ktls-proxy/proxy_protocol.h: the PROXY protocol version 2 header
// (HAProxy's binary format, doc/proxy-protocol.txt section 2.2) that
// ktls-proxy --proxy-protocol sends to the backend before any client byte,
// so the backend sees the client's address rather than the proxy's.
#ifndef KTLS_TOOLS_KTLS_PROXY_PROXY_PROTOCOL_H_
#define KTLS_TOOLS_KTLS_PROXY_PROXY_PROTOCOL_H_

#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <vector>

namespace ktls::proxy {

// kProxyV2Signature: the 12 bytes every v2 header starts with.
inline constexpr std::array<std::uint8_t, 12> kProxyV2Signature = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                                                    0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
// Version 2 (high nibble), command PROXY (low nibble 1).
inline constexpr std::uint8_t kProxyV2VersionCommand = 0x21;
// Address family (high nibble) and transport (low nibble): TCP over IPv4 or
// IPv6; UNSPEC for anything else, whose addresses the receiver ignores.
inline constexpr std::uint8_t kProxyV2TcpOverIpv4 = 0x11;
inline constexpr std::uint8_t kProxyV2TcpOverIpv6 = 0x21;
inline constexpr std::uint8_t kProxyV2Unspec = 0x00;

// BuildProxyV2Header returns the header for a TCP connection from `client`
// (the client's address and port) to `proxy` (the proxy's address and port
// the client connected to): signature, 0x21, the family byte, the address
// block's length (big-endian), then source address, destination address,
// source port, destination port, all in network byte order (28 bytes for
// IPv4, 52 for IPv6). IPv4-mapped IPv6 addresses (a dual-stack listener)
// are sent as IPv4 when both are mapped. Families other than AF_INET and
// AF_INET6, or two that differ, give an UNSPEC header (16 bytes, no
// addresses): the backend then uses the proxy's own address.
std::vector<std::uint8_t> BuildProxyV2Header(const sockaddr_storage& client, const sockaddr_storage& proxy);

}  // namespace ktls::proxy

#endif  // KTLS_TOOLS_KTLS_PROXY_PROXY_PROTOCOL_H_
