// tools/ktls-proxy/connection_log.cc: see connection_log.h.
#include "ktls-proxy/connection_log.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cerrno>

#include "ktls-proxy/endpoint.h"
#include "ktls/types.h"

namespace ktls::proxy {

std::string FormatLine(const ConnectionRecord& r) {
  std::string line = r.client + " -> " + r.backend + " tx=" + r.tx + " rx=" + r.rx;
  if (!r.backend_tx.empty()) line += " backend_tx=" + r.backend_tx + " backend_rx=" + r.backend_rx;
  line += " up=" + std::to_string(r.up) + " down=" + std::to_string(r.down) +
          " up_spliced=" + std::to_string(r.up - r.up_copied) + " up_copied=" + std::to_string(r.up_copied) +
          " down_spliced=" + std::to_string(r.down - r.down_copied) +
          " down_copied=" + std::to_string(r.down_copied) + " duration=" + std::to_string(r.duration.count()) +
          "ms end=" + r.end;
  if (!r.detail.empty()) line += " detail=" + OneWord(r.detail);
  return line;
}

std::string EndReason(Party party, const ktls::Error& error) {
  const std::string who = party == Party::kClient ? "client" : "backend";
  if (error.category == ktls::ErrorCategory::kAlert && error.tls_alert >= 0) {
    return (party == Party::kClient ? "alert:" : "backend_alert:") + std::string(ktls::AlertName(error.tls_alert));
  }
  if (IsReset(error)) return who + "_reset";
  if (error.category == ktls::ErrorCategory::kTruncated) return who + "_truncated";
  if (error.category == ktls::ErrorCategory::kProtocol) {
    // ktls answered the bad input with an alert: name it.
    return who + "_protocol_error" +
           (error.tls_alert >= 0 ? ":" + std::string(ktls::AlertName(error.tls_alert)) : std::string());
  }
  if (error.category == ktls::ErrorCategory::kIo && error.sys_errno == ETIMEDOUT) return who + "_timeout";
  return who + "_error:" + std::string(ktls::ErrorCategoryName(error.category));
}

std::string OneWord(const std::string& text) {
  std::string out;
  for (char c : text) {
    const bool space = c == ' ' || c == '\t' || c == '\n' || c == '\r';
    if (space) {
      if (!out.empty() && out.back() != '_') out.push_back('_');
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::string AddressText(const sockaddr_storage& addr) {
  char host[INET6_ADDRSTRLEN] = "?";
  if (addr.ss_family == AF_INET) {
    const auto& in = reinterpret_cast<const sockaddr_in&>(addr);
    ::inet_ntop(AF_INET, &in.sin_addr, host, sizeof(host));
    return std::string(host) + ":" + std::to_string(ntohs(in.sin_port));
  }
  if (addr.ss_family == AF_INET6) {
    const auto& in6 = reinterpret_cast<const sockaddr_in6&>(addr);
    ::inet_ntop(AF_INET6, &in6.sin6_addr, host, sizeof(host));
    return "[" + std::string(host) + "]:" + std::to_string(ntohs(in6.sin6_port));
  }
  return "unknown";
}

}  // namespace ktls::proxy
