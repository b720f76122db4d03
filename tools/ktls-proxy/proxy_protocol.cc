// tools/ktls-proxy/proxy_protocol.cc: see proxy_protocol.h.
#include "ktls-proxy/proxy_protocol.h"

#include <netinet/in.h>

#include <cstring>

namespace ktls::proxy {
namespace {

// An address as the header carries it: 4 or 16 bytes, and the port in
// network byte order.
struct HeaderAddress {
  int family = AF_UNSPEC;
  std::array<std::uint8_t, 16> bytes{};
  std::uint16_t port_be = 0;  // Network byte order.
};

HeaderAddress FromSockaddr(const sockaddr_storage& addr) {
  HeaderAddress out;
  if (addr.ss_family == AF_INET) {
    const auto& in = reinterpret_cast<const sockaddr_in&>(addr);
    out.family = AF_INET;
    std::memcpy(out.bytes.data(), &in.sin_addr, 4);
    out.port_be = in.sin_port;
  } else if (addr.ss_family == AF_INET6) {
    const auto& in6 = reinterpret_cast<const sockaddr_in6&>(addr);
    out.family = AF_INET6;
    std::memcpy(out.bytes.data(), &in6.sin6_addr, 16);
    out.port_be = in6.sin6_port;
  }
  return out;
}

bool IsV4Mapped(const HeaderAddress& addr) {
  static constexpr std::uint8_t kPrefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  return addr.family == AF_INET6 && std::memcmp(addr.bytes.data(), kPrefix, sizeof(kPrefix)) == 0;
}

HeaderAddress Unmapped(HeaderAddress addr) {
  std::memmove(addr.bytes.data(), addr.bytes.data() + 12, 4);
  addr.family = AF_INET;
  return addr;
}

void AppendPort(std::vector<std::uint8_t>& out, std::uint16_t port_be) {
  const auto* bytes = reinterpret_cast<const std::uint8_t*>(&port_be);
  out.insert(out.end(), bytes, bytes + 2);
}

}  // namespace

std::vector<std::uint8_t> BuildProxyV2Header(const sockaddr_storage& client, const sockaddr_storage& proxy) {
  HeaderAddress src = FromSockaddr(client);
  HeaderAddress dst = FromSockaddr(proxy);
  if (IsV4Mapped(src) && IsV4Mapped(dst)) {
    src = Unmapped(src);
    dst = Unmapped(dst);
  }
  std::vector<std::uint8_t> out(kProxyV2Signature.begin(), kProxyV2Signature.end());
  out.push_back(kProxyV2VersionCommand);
  if (src.family != dst.family || src.family == AF_UNSPEC) {
    out.insert(out.end(), {kProxyV2Unspec, 0, 0});
    return out;
  }
  const std::size_t addr_len = src.family == AF_INET ? 4 : 16;
  const std::size_t block_len = 2 * addr_len + 4;
  out.push_back(src.family == AF_INET ? kProxyV2TcpOverIpv4 : kProxyV2TcpOverIpv6);
  out.push_back(static_cast<std::uint8_t>(block_len >> 8));
  out.push_back(static_cast<std::uint8_t>(block_len & 0xff));
  out.insert(out.end(), src.bytes.begin(), src.bytes.begin() + static_cast<std::ptrdiff_t>(addr_len));
  out.insert(out.end(), dst.bytes.begin(), dst.bytes.begin() + static_cast<std::ptrdiff_t>(addr_len));
  AppendPort(out, src.port_be);
  AppendPort(out, dst.port_be);
  return out;
}

}  // namespace ktls::proxy
