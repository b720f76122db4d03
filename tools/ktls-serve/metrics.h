// tools/ktls-serve/metrics.h: what ktls-serve counts, and the Prometheus
// text it renders for --metrics.
//
// Counting is on every connection's and request's path, so each count is
// one relaxed atomic add: no lock, no allocation, no label text built. Label
// values come from small fixed sets (the enums and arrays below, and the
// library's FallbackReason); anything free-form (an error's detail) is
// mapped into them first, never copied into a label.
#ifndef KTLS_TOOLS_KTLS_SERVE_METRICS_H_
#define KTLS_TOOLS_KTLS_SERVE_METRICS_H_

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "ktls/connection.h"
#include "ktls/kernel_tls_stats.h"
#include "ktls/offload.h"
#include "ktls/result.h"

namespace ktls::serve {

// Fallbacks are counted by the library's FallbackReason
// (OffloadReport::tx_reason/rx_reason), labelled with FallbackReasonName:
// ktls_offload_fallbacks_total{direction=...,reason="disabled"|...}.

// HandshakeFailure: why a handshake failed, as a label
// (ktls_handshake_failures_total{reason=...}): "timeout" (the handshake
// deadline), "cancelled" (the server is draining), or the category of the
// library's error ("io", "closed", "truncated", "alert", "protocol",
// "unsupported", "usage", "internal").
inline constexpr std::array<std::string_view, 10> kHandshakeFailureReasons = {
    "timeout", "cancelled", "io", "closed", "truncated", "alert", "protocol", "unsupported", "usage", "internal"};
// HandshakeFailureIndex: the index in kHandshakeFailureReasons for a failed
// handshake's error category (neither timed out nor cancelled).
std::size_t HandshakeFailureIndex(ErrorCategory category) noexcept;
inline constexpr std::size_t kHandshakeTimeout = 0;
inline constexpr std::size_t kHandshakeCancelled = 1;

// kStatusCodes: the statuses ktls-serve answers with, as labels
// (ktls_requests_total{code=...}); any other is counted as "other".
inline constexpr std::array<unsigned, 13> kStatusCodes = {200, 206, 301, 304, 400, 403,
                                                          404, 405, 414, 416, 431, 500, 503};

// ResponsePath: how response bytes left (ktls_response_bytes_total{path=...}).
enum class ResponsePath : std::uint8_t {
  kSendfile,  // "sendfile": sendfile(2) through kTLS, never copied through userspace.
  kWrite,     // "write": written from a buffer (headers, small bodies, and files where TX is in OpenSSL).
};

// Metrics: the counters. Every method is safe from any thread.
//
// With --privsep each worker process counts into a Metrics of its own in
// memory shared with the key holder (common/shared_metrics.h), which adds them up:
// so the counters are plain atomics with no pointer inside, the same in
// every process that maps them.
class Metrics {
 public:
  // Handshaken: a connection completed its handshake (and offload): counts
  // it under where each direction went, and as open until Closed.
  void Handshaken(Offload tx, Offload rx) noexcept;
  // Adopted: a connection another process handshook (and counted in
  // ktls_connections_total) is served here: open until Closed, and not
  // counted as a connection again. A --privsep worker's, or the new
  // process's after a SIGUSR2 upgrade.
  void Adopted() noexcept;
  // Closed: a connection Handshaken or Adopted counted has ended.
  void Closed() noexcept;
  // HandshakeFailed: index into kHandshakeFailureReasons.
  void HandshakeFailed(std::size_t reason_index) noexcept;
  // Fallback: offload left one or both directions in userspace (the
  // OffloadOptions::on_fallback report). A TX fallback counts for RX too:
  // RX goes to the kernel only with TX.
  void Fallback(const OffloadReport& report) noexcept;
  void Request(unsigned status) noexcept;
  void ResponseBytes(ResponsePath path, std::uint64_t bytes) noexcept;
  // KeyUpdates adds key updates sent and received (deltas).
  void KeyUpdates(std::uint64_t sent, std::uint64_t received) noexcept;

  // Render: every metric in the Prometheus text exposition format (0.0.4),
  // each with # HELP and # TYPE, every fixed label combination listed (zero
  // included), and the kernel's counters as ktls_kernel_tls_stat (none
  // when tls_stat could not be read).
  std::string Render(const Result<KernelTlsStats>& tls_stat) const;

  // Add adds every count of from to this one's; the open-connections gauge
  // too with open. A sum to render, or a dead worker's counts kept (its
  // connections died with it: without open).
  void Add(const Metrics& from, bool open) noexcept;

 private:
  using Counter = std::atomic<std::uint64_t>;
  // Shared between processes (common/shared_metrics.h): the atomics must work on
  // the memory itself, with no lock elsewhere.
  static_assert(Counter::is_always_lock_free);
  static_assert(std::atomic<std::int64_t>::is_always_lock_free);
  std::array<Counter, 4> connections_{};  // [tx kernel?][rx kernel?] as tx * 2 + rx.
  std::atomic<std::int64_t> open_{0};
  std::array<Counter, kHandshakeFailureReasons.size()> handshake_failures_{};
  std::array<Counter, 2 * kNumFallbackReasons> fallbacks_{};  // [direction][reason], tx first.
  std::array<Counter, kStatusCodes.size() + 1> requests_{};   // The last: any other code.
  std::array<Counter, 2> response_bytes_{};                   // By ResponsePath.
  std::array<Counter, 2> key_updates_{};                      // Sent, received.
};

}  // namespace ktls::serve

#endif  // KTLS_TOOLS_KTLS_SERVE_METRICS_H_
