// tools/ktls-proxy/metrics.h: what ktls-proxy counts, and the Prometheus
// text --metrics serves. As ktls-serve's metrics: each count is a relaxed
// atomic add, and every label value comes from a small fixed set.
//
// With --privsep each connection is counted once, in two processes: the key
// holder counts it open from its accept, its handshake (Handshaken), and
// either its end (Closed: the handshake failed, or it could not move) or
// its move to a worker (Moved: no longer open here); the worker counts it
// open from its arrival (Opened) to its end (Closed, with its bytes). The
// workers count in shared memory (common/shared_metrics.h), summed by the
// key holder's /metrics.
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
inline constexpr std::array<std::string_view, 24> kEndLabels = {
    "client_close_notify", "client_truncated", "backend_eof", "backend_close_notify", "backend_truncated",
    "client_reset", "backend_reset", "alert", "backend_alert", "handshake_failed", "handshake_timeout",
    "backend_refused", "backend_unreachable", "backend_connect_timeout", "backend_handshake_failed",
    "backend_handshake_timeout", "idle_timeout", "idle_timeout_cut", "drain_timeout", "drain_timeout_cut",
    "proxy_error", "cannot_move", "not_moved", "other"};

// ProxyMetrics: the counters. Every method is safe from any thread, and
// from any process that maps it (plain lock-free atomics, no pointer).
class ProxyMetrics {
 public:
  // Opened: a client connection was accepted here, or arrived from the key
  // holder (a --privsep worker): open until Closed or Moved.
  void Opened() noexcept { open_.fetch_add(1, std::memory_order_relaxed); }
  // Handshaken: a client's handshake completed; tx and rx say where its
  // directions went. Counted where the handshake was (the key holder).
  void Handshaken(Offload tx, Offload rx) noexcept;
  // Closed: a connection logged its line: how it ended, and its bytes.
  void Closed(std::string_view end, std::uint64_t up, std::uint64_t up_copied, std::uint64_t down,
              std::uint64_t down_copied) noexcept;
  // Moved: an open connection went to a --privsep worker, which counts
  // the rest of it.
  void Moved() noexcept { open_.fetch_sub(1, std::memory_order_relaxed); }

  // Add adds every count of from to this one's; the open gauge too with
  // open. A sum to render, or a dead worker's counts kept (its connections
  // died with it: without open).
  void Add(const ProxyMetrics& from, bool open) noexcept;

  // Render: the Prometheus text exposition format (0.0.4), every fixed
  // label combination listed.
  std::string Render() const;

 private:
  using Counter = std::atomic<std::uint64_t>;
  // Shared between processes (common/shared_metrics.h): the atomics must
  // work on the memory itself, with no lock elsewhere.
  static_assert(Counter::is_always_lock_free);
  static_assert(std::atomic<std::int64_t>::is_always_lock_free);
  std::atomic<std::int64_t> open_{0};
  std::array<Counter, kEndLabels.size()> ends_{};
  std::array<Counter, 4> handshakes_{};  // tx kernel? * 2 + rx kernel?
  std::array<Counter, 4> bytes_{};       // up spliced, up copied, down spliced, down copied.
};

}  // namespace ktls::proxy

#endif  // KTLS_TOOLS_KTLS_PROXY_METRICS_H_
