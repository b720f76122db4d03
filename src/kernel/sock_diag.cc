// kernel/sock_diag.cc: one socket's tls ULP state, from NETLINK_SOCK_DIAG.
//
// An exact lookup (no dump): SOCK_DIAG_BY_FAMILY with the socket's own
// addresses and ports. The kernel adds INET_DIAG_ULP_INFO to the answer
// when the INET_DIAG_INFO extension is asked for, the socket has a ULP, and
// the asking socket's opener has CAP_NET_ADMIN (tcp_diag_get_aux). The
// answer holds the ULP's name and, for tls, the version, cipher and each
// direction's TLS_CONF_*; never key material. A build without kernel TLS
// has no netlink to ask (linux/*.h): there every socket's answer is
// kNoKernelTlsReason.
#include "ktls/kernel_state.h"

#include <string>

#include "kernel/kernel_tls_build.h"

#if KTLS_KERNEL_TLS
#include <arpa/inet.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <span>

#include "core/unique_fd.h"
#include "kernel/tls_uapi.h"
#endif

namespace ktls {

#if KTLS_KERNEL_TLS
namespace {

namespace uapi = detail::uapi;

KernelTlsConf ConfFrom(std::uint16_t conf) {
  switch (conf) {
    case uapi::kTlsConfBase: return KernelTlsConf::kBase;
    case uapi::kTlsConfSw: return KernelTlsConf::kSoftware;
    case uapi::kTlsConfHw: return KernelTlsConf::kDevice;
    case uapi::kTlsConfHwRecord: return KernelTlsConf::kDeviceRecord;
    default: return KernelTlsConf::kUnknown;
  }
}

// Attributes: walks netlink attributes (struct nlattr, 4-byte aligned) in
// bytes, calling visit(type, payload) for each whole one.
template <typename Visit>
void Attributes(std::span<const unsigned char> bytes, Visit visit) {
  while (bytes.size() >= NLA_HDRLEN) {
    nlattr attr;
    std::memcpy(&attr, bytes.data(), sizeof(attr));
    if (attr.nla_len < NLA_HDRLEN || attr.nla_len > bytes.size()) return;
    visit(attr.nla_type & NLA_TYPE_MASK, bytes.subspan(NLA_HDRLEN, attr.nla_len - NLA_HDRLEN));
    const std::size_t step = NLA_ALIGN(attr.nla_len);
    if (step >= bytes.size()) return;
    bytes = bytes.subspan(step);
  }
}

std::uint16_t U16(std::span<const unsigned char> payload) {
  std::uint16_t value = 0;
  if (payload.size() >= sizeof(value)) std::memcpy(&value, payload.data(), sizeof(value));
  return value;
}

void ParseUlp(std::span<const unsigned char> ulp_info, KernelUlpInfo& out) {
  Attributes(ulp_info, [&out](int type, std::span<const unsigned char> payload) {
    if (type == uapi::kInetUlpInfoName) {
      out.ulp.assign(reinterpret_cast<const char*>(payload.data()), strnlen(reinterpret_cast<const char*>(payload.data()), payload.size()));
    } else if (type == uapi::kInetUlpInfoTls) {
      Attributes(payload, [&out](int tls_type, std::span<const unsigned char> value) {
        switch (tls_type) {
          case uapi::kTlsInfoVersion: out.version = U16(value); break;
          case uapi::kTlsInfoCipher: out.cipher_type = U16(value); break;
          case uapi::kTlsInfoTxConf: out.tx_conf = ConfFrom(U16(value)); break;
          case uapi::kTlsInfoRxConf: out.rx_conf = ConfFrom(U16(value)); break;
          case uapi::kTlsInfoZcRoTx: out.zerocopy_tx = true; break;
          case uapi::kTlsInfoRxNoPad: out.rx_no_pad = true; break;
          default: break;  // Newer kernels may add more.
        }
      });
    }
  });
}

std::string Why(const char* step, int err) { return std::string(step) + ": " + std::strerror(err); }

}  // namespace
#endif

std::string_view KernelTlsConfName(KernelTlsConf conf) noexcept {
  switch (conf) {
    case KernelTlsConf::kUnknown: return "unknown";
    case KernelTlsConf::kBase: return "base";
    case KernelTlsConf::kSoftware: return "software";
    case KernelTlsConf::kDevice: return "device";
    case KernelTlsConf::kDeviceRecord: return "device_record";
  }
  return "unknown";
}

KernelUlpInfo QuerySocketUlpInfo(int fd) {
  KernelUlpInfo out;
#if !KTLS_KERNEL_TLS
  (void)fd;
  out.why_not = detail::kNoKernelTlsReason;
  return out;
#else
  sockaddr_storage local{}, peer{};
  socklen_t local_len = sizeof(local), peer_len = sizeof(peer);
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_len) != 0) {
    out.why_not = Why("getsockname", errno);
    return out;
  }
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0) {
    out.why_not = Why("getpeername", errno);
    return out;
  }
  struct Request {
    nlmsghdr header;
    inet_diag_req_v2 diag;
  } request{};
  request.header.nlmsg_len = sizeof(request);
  request.header.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  request.header.nlmsg_flags = NLM_F_REQUEST;
  request.diag.sdiag_family = static_cast<std::uint8_t>(local.ss_family);
  request.diag.sdiag_protocol = IPPROTO_TCP;
  request.diag.idiag_ext = 1u << (uapi::kInetDiagInfo - 1);
  request.diag.idiag_states = ~0u;
  request.diag.id.idiag_cookie[0] = INET_DIAG_NOCOOKIE;
  request.diag.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;
  if (local.ss_family == AF_INET && peer.ss_family == AF_INET) {
    const auto& l = reinterpret_cast<const sockaddr_in&>(local);
    const auto& p = reinterpret_cast<const sockaddr_in&>(peer);
    request.diag.id.idiag_sport = l.sin_port;
    request.diag.id.idiag_dport = p.sin_port;
    std::memcpy(request.diag.id.idiag_src, &l.sin_addr, sizeof(l.sin_addr));
    std::memcpy(request.diag.id.idiag_dst, &p.sin_addr, sizeof(p.sin_addr));
  } else if (local.ss_family == AF_INET6 && peer.ss_family == AF_INET6) {
    const auto& l = reinterpret_cast<const sockaddr_in6&>(local);
    const auto& p = reinterpret_cast<const sockaddr_in6&>(peer);
    request.diag.id.idiag_sport = l.sin6_port;
    request.diag.id.idiag_dport = p.sin6_port;
    std::memcpy(request.diag.id.idiag_src, &l.sin6_addr, sizeof(l.sin6_addr));
    std::memcpy(request.diag.id.idiag_dst, &p.sin6_addr, sizeof(p.sin6_addr));
  } else {
    out.why_not = "not a connected TCP/IP socket";
    return out;
  }

  detail::UniqueFd diag(::socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG));
  if (!diag) {
    out.why_not = Why("socket(NETLINK_SOCK_DIAG)", errno);
    return out;
  }
  const timeval timeout{1, 0};  // The kernel answers at once; never hang on it.
  (void)::setsockopt(diag.get(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  sockaddr_nl kernel{};
  kernel.nl_family = AF_NETLINK;
  ssize_t sent;
  do {
    sent = ::sendto(diag.get(), &request, sizeof(request), 0, reinterpret_cast<sockaddr*>(&kernel), sizeof(kernel));
  } while (sent < 0 && errno == EINTR);
  if (sent < 0) {
    out.why_not = Why("sock_diag request", errno);
    return out;
  }
  alignas(nlmsghdr) std::array<unsigned char, 16384> buf;
  ssize_t got;
  do {
    got = ::recv(diag.get(), buf.data(), buf.size(), 0);
  } while (got < 0 && errno == EINTR);
  if (got < 0) {
    out.why_not = Why("sock_diag answer", errno);
    return out;
  }
  // NLMSG_OK/NLMSG_NEXT, without their C casts.
  std::span<const unsigned char> left(buf.data(), static_cast<std::size_t>(got));
  while (left.size() >= sizeof(nlmsghdr)) {
    nlmsghdr msg;
    std::memcpy(&msg, left.data(), sizeof(msg));
    if (msg.nlmsg_len < sizeof(nlmsghdr) || msg.nlmsg_len > left.size()) break;
    const std::span<const unsigned char> body = left.subspan(NLMSG_HDRLEN, msg.nlmsg_len - NLMSG_HDRLEN);
    left = left.subspan(std::min<std::size_t>(NLMSG_ALIGN(msg.nlmsg_len), left.size()));
    if (msg.nlmsg_type == NLMSG_ERROR) {
      nlmsgerr err{};
      std::memcpy(&err, body.data(), std::min(body.size(), sizeof(err)));
      out.why_not = err.error == -ENOENT ? "sock_diag does not find the socket"
                                         : Why("sock_diag", err.error < 0 ? -err.error : EPROTO);
      return out;
    }
    if (msg.nlmsg_type != SOCK_DIAG_BY_FAMILY || body.size() < NLMSG_ALIGN(sizeof(inet_diag_msg))) continue;
    Attributes(body.subspan(NLMSG_ALIGN(sizeof(inet_diag_msg))), [&out](int type, std::span<const unsigned char> payload) {
      if (type == uapi::kInetDiagUlpInfo) {
        out.reported = true;
        ParseUlp(payload, out);
      }
    });
    if (!out.reported) out.why_not = "no ULP on the socket, or no CAP_NET_ADMIN to see it";
    return out;
  }
  out.why_not = "sock_diag gave no answer for the socket";
  return out;
#endif
}

}  // namespace ktls
