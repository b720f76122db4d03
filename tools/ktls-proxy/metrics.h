// tools/ktls-proxy/metrics.h: what ktls-proxy counts, and the Prometheus
// text --metrics serves. As ktls-serve's metrics: each count is a relaxed
// atomic add, and every label value comes from a small fixed set.
#ifndef KTLS_TOOLS_KTLS_PROXY_METRICS_H_
#define KTLS_TOOLS_KTLS_PROXY_METRICS_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>

#include "ktls/connection.h"

namespace ktls::proxy {

// kEndLabels: how connections ended (ktls_proxy_connections_total{end=}):
// the log line's end= word up to any ':' ("alert:unknown_ca" counts as
// "alert"); any other word as "other", the last.
inline constexpr std::array<std::string_view, 20> kEndLabels = {
    "client_close_notify", "client_truncated", "backend_eof", "backend_close_notify", "backend_truncated",
    "client_reset", "backend_reset", "alert", "backend_alert", "handshake_failed", "handshake_timeout",
    "backend_refused", "backend_unreachable", "backend_connect_timeout", "backend_handshake_failed",
    "backend_handshake_timeout", "idle_timeout", "drain_timeout", "proxy_error", "other"};

class ProxyMetrics {
 public:
  // Handshaken: a client's handshake completed; tx and rx say where its
  // directions went.
  void Handshaken(Offload tx, Offload rx) noexcept;
  // Closed: a connection logged its line: how it ended, and its bytes.
  void Closed(std::string_view end, std::uint64_t up, std::uint64_t up_copied, std::uint64_t down,
              std::uint64_t down_copied) noexcept;
  void Opened() noexcept { open_.fetch_add(1, std::memory_order_relaxed); }

  // Render: the Prometheus text exposition format (0.0.4), every fixed
  // label combination listed.
  std::string Render() const;

 private:
  using Counter = std::atomic<std::uint64_t>;
  std::atomic<std::int64_t> open_{0};
  std::array<Counter, kEndLabels.size()> ends_{};
  std::array<Counter, 4> handshakes_{};  // tx kernel? * 2 + rx kernel?
  std::array<Counter, 4> bytes_{};       // up spliced, up copied, down spliced, down copied.
};

}  // namespace ktls::proxy

#endif  // KTLS_TOOLS_KTLS_PROXY_METRICS_H_
