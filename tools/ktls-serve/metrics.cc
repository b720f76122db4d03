// tools/ktls-serve/metrics.cc: counting, and rendering the Prometheus text.
#include "ktls-serve/metrics.h"

#include <algorithm>

namespace ktls::serve {

namespace {

constexpr auto kRelaxed = std::memory_order_relaxed;

constexpr std::string_view kWhere[2] = {"user", "kernel"};

void Family(std::string& out, std::string_view name, std::string_view type, std::string_view help) {
  out.append("# HELP ").append(name).append(" ").append(help).append("\n");
  out.append("# TYPE ").append(name).append(" ").append(type).append("\n");
}

void Sample(std::string& out, std::string_view name, std::string_view labels, std::uint64_t value) {
  out.append(name);
  if (!labels.empty()) out.append("{").append(labels).append("}");
  out.append(" ").append(std::to_string(value)).append("\n");
}

}  // namespace

std::size_t HandshakeFailureIndex(ErrorCategory category) noexcept {
  switch (category) {
    case ErrorCategory::kIo: return 2;
    case ErrorCategory::kClosed: return 3;
    case ErrorCategory::kTruncated: return 4;
    case ErrorCategory::kAlert: return 5;
    case ErrorCategory::kProtocol: return 6;
    case ErrorCategory::kUnsupported: return 7;
    case ErrorCategory::kUsage: return 8;
    case ErrorCategory::kInternal: return 9;
  }
  return 9;
}

void Metrics::Handshaken(Offload tx, Offload rx) noexcept {
  const std::size_t index = (tx == Offload::kKernel ? 2 : 0) + (rx == Offload::kKernel ? 1 : 0);
  connections_[index].fetch_add(1, kRelaxed);
  open_.fetch_add(1, kRelaxed);
}

void Metrics::Adopted() noexcept { open_.fetch_add(1, kRelaxed); }

void Metrics::Closed() noexcept { open_.fetch_sub(1, kRelaxed); }

void Metrics::HandshakeFailed(std::size_t reason_index) noexcept {
  handshake_failures_[std::min(reason_index, handshake_failures_.size() - 1)].fetch_add(1, kRelaxed);
}

void Metrics::Fallback(const OffloadReport& report) noexcept {
  const auto index = [](FallbackReason reason) {
    return std::min(static_cast<std::size_t>(reason), kNumFallbackReasons - 1);
  };
  if (report.tx == Offload::kUser) fallbacks_[index(report.tx_reason)].fetch_add(1, kRelaxed);
  if (report.rx == Offload::kUser) fallbacks_[kNumFallbackReasons + index(report.rx_reason)].fetch_add(1, kRelaxed);
}

void Metrics::Request(unsigned status) noexcept {
  const auto* at = std::find(kStatusCodes.begin(), kStatusCodes.end(), status);
  requests_[static_cast<std::size_t>(at - kStatusCodes.begin())].fetch_add(1, kRelaxed);
}

void Metrics::ResponseBytes(ResponsePath path, std::uint64_t bytes) noexcept {
  response_bytes_[static_cast<std::size_t>(path)].fetch_add(bytes, kRelaxed);
}

void Metrics::KeyUpdates(std::uint64_t sent, std::uint64_t received) noexcept {
  if (sent != 0) key_updates_[0].fetch_add(sent, kRelaxed);
  if (received != 0) key_updates_[1].fetch_add(received, kRelaxed);
}

void Metrics::Add(const Metrics& from, bool open) noexcept {
  const auto add = [](auto& to, const auto& counts) {
    for (std::size_t i = 0; i < counts.size(); ++i) to[i].fetch_add(counts[i].load(kRelaxed), kRelaxed);
  };
  add(connections_, from.connections_);
  add(handshake_failures_, from.handshake_failures_);
  add(fallbacks_, from.fallbacks_);
  add(requests_, from.requests_);
  add(response_bytes_, from.response_bytes_);
  add(key_updates_, from.key_updates_);
  if (open) open_.fetch_add(from.open_.load(kRelaxed), kRelaxed);
}

std::string Metrics::Render(const Result<KernelTlsStats>& tls_stat) const {
  std::string out;
  out.reserve(4096);
  Family(out, "ktls_connections_total", "counter",
         "TLS connections that completed the handshake, by where each direction's records are protected.");
  for (std::size_t tx = 0; tx < 2; ++tx) {
    for (std::size_t rx = 0; rx < 2; ++rx) {
      Sample(out, "ktls_connections_total",
             "tx=\"" + std::string(kWhere[tx]) + "\",rx=\"" + std::string(kWhere[rx]) + "\"",
             connections_[tx * 2 + rx].load(kRelaxed));
    }
  }
  Family(out, "ktls_open_connections", "gauge", "TLS connections handshaken and not yet closed.");
  Sample(out, "ktls_open_connections", "",
         static_cast<std::uint64_t>(std::max<std::int64_t>(0, open_.load(kRelaxed))));

  Family(out, "ktls_handshake_failures_total", "counter",
         "Handshakes that failed, by reason: timeout, cancelled, or the error category.");
  for (std::size_t i = 0; i < kHandshakeFailureReasons.size(); ++i) {
    Sample(out, "ktls_handshake_failures_total", "reason=\"" + std::string(kHandshakeFailureReasons[i]) + "\"",
           handshake_failures_[i].load(kRelaxed));
  }

  Family(out, "ktls_offload_fallbacks_total", "counter",
         "Connection directions that stayed in userspace TLS, by direction and reason.");
  for (std::size_t direction = 0; direction < 2; ++direction) {
    // Every reason but kNone (0): a direction that fell back has one.
    for (std::size_t reason = 1; reason < kNumFallbackReasons; ++reason) {
      Sample(out, "ktls_offload_fallbacks_total",
             std::string("direction=\"") + (direction == 0 ? "tx" : "rx") + "\",reason=\"" +
                 FallbackReasonName(static_cast<FallbackReason>(reason)) + "\"",
             fallbacks_[direction * kNumFallbackReasons + reason].load(kRelaxed));
    }
  }

  Family(out, "ktls_requests_total", "counter", "HTTP requests answered, by status code.");
  for (std::size_t i = 0; i <= kStatusCodes.size(); ++i) {
    const std::string code = i < kStatusCodes.size() ? std::to_string(kStatusCodes[i]) : "other";
    Sample(out, "ktls_requests_total", "code=\"" + code + "\"", requests_[i].load(kRelaxed));
  }

  Family(out, "ktls_response_bytes_total", "counter",
         "Response bytes sent (headers and bodies), by path: sendfile(2) through kTLS, or written from a buffer.");
  Sample(out, "ktls_response_bytes_total", "path=\"sendfile\"", response_bytes_[0].load(kRelaxed));
  Sample(out, "ktls_response_bytes_total", "path=\"write\"", response_bytes_[1].load(kRelaxed));

  Family(out, "ktls_key_updates_total", "counter",
         "TLS 1.3 key updates on connections, sent and received (counted after each request and at close).");
  Sample(out, "ktls_key_updates_total", "direction=\"sent\"", key_updates_[0].load(kRelaxed));
  Sample(out, "ktls_key_updates_total", "direction=\"received\"", key_updates_[1].load(kRelaxed));

  Family(out, "ktls_kernel_tls_stat", "gauge",
         "The kernel's kTLS counters, /proc/net/tls_stat, for the whole network namespace (none without kTLS).");
  if (tls_stat.ok()) {
    for (const KernelTlsCounter& counter : tls_stat->counters) {
      // Kernel counter names are identifiers; anything else is left out
      // rather than put in a label unescaped.
      if (!std::all_of(counter.name.begin(), counter.name.end(), [](char c) {
            return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
          })) {
        continue;
      }
      Sample(out, "ktls_kernel_tls_stat", "counter=\"" + counter.name + "\"", counter.value);
    }
  }
  return out;
}

}  // namespace ktls::serve
