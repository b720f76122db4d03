// tools/ktls-proxy/metrics.cc: see metrics.h.
#include "ktls-proxy/metrics.h"

namespace ktls::proxy {

void ProxyMetrics::Handshaken(Offload tx, Offload rx) noexcept {
  const std::size_t index = (tx == Offload::kKernel ? 2 : 0) + (rx == Offload::kKernel ? 1 : 0);
  handshakes_[index].fetch_add(1, std::memory_order_relaxed);
}

void ProxyMetrics::Closed(std::string_view end, std::uint64_t up, std::uint64_t up_copied, std::uint64_t down,
                          std::uint64_t down_copied) noexcept {
  open_.fetch_sub(1, std::memory_order_relaxed);
  const std::string_view word = end.substr(0, end.find(':'));
  std::size_t index = kEndLabels.size() - 1;  // "other"
  for (std::size_t i = 0; i + 1 < kEndLabels.size(); ++i) {
    if (kEndLabels[i] == word) index = i;
  }
  ends_[index].fetch_add(1, std::memory_order_relaxed);
  bytes_[0].fetch_add(up - up_copied, std::memory_order_relaxed);
  bytes_[1].fetch_add(up_copied, std::memory_order_relaxed);
  bytes_[2].fetch_add(down - down_copied, std::memory_order_relaxed);
  bytes_[3].fetch_add(down_copied, std::memory_order_relaxed);
}

void ProxyMetrics::Add(const ProxyMetrics& from, bool open) noexcept {
  constexpr auto kRelaxed = std::memory_order_relaxed;
  const auto add = [](auto& to, const auto& counts) {
    for (std::size_t i = 0; i < counts.size(); ++i) to[i].fetch_add(counts[i].load(kRelaxed), kRelaxed);
  };
  add(ends_, from.ends_);
  add(handshakes_, from.handshakes_);
  add(bytes_, from.bytes_);
  if (open) open_.fetch_add(from.open_.load(kRelaxed), kRelaxed);
}

std::string ProxyMetrics::Render() const {
  auto value = [](const auto& counter) { return std::to_string(counter.load(std::memory_order_relaxed)); };
  std::string out;
  out += "# HELP ktls_proxy_connections_open Client connections accepted and not yet closed.\n";
  out += "# TYPE ktls_proxy_connections_open gauge\n";
  out += "ktls_proxy_connections_open " + value(open_) + "\n";
  out += "# HELP ktls_proxy_connections_total Client connections closed, by how they ended (the log line's end=).\n";
  out += "# TYPE ktls_proxy_connections_total counter\n";
  for (std::size_t i = 0; i < kEndLabels.size(); ++i) {
    out += "ktls_proxy_connections_total{end=\"" + std::string(kEndLabels[i]) + "\"} " + value(ends_[i]) + "\n";
  }
  out += "# HELP ktls_proxy_handshakes_total Client handshakes completed, by where each direction went.\n";
  out += "# TYPE ktls_proxy_handshakes_total counter\n";
  for (std::size_t i = 0; i < handshakes_.size(); ++i) {
    out += std::string("ktls_proxy_handshakes_total{tx=\"") + (i & 2 ? "kernel" : "user") + "\",rx=\"" +
           (i & 1 ? "kernel" : "user") + "\"} " + value(handshakes_[i]) + "\n";
  }
  out += "# HELP ktls_proxy_bytes_total Payload bytes relayed (of closed connections), by direction and by whether "
         "they passed through the process.\n";
  out += "# TYPE ktls_proxy_bytes_total counter\n";
  for (std::size_t i = 0; i < bytes_.size(); ++i) {
    out += std::string("ktls_proxy_bytes_total{direction=\"") + (i < 2 ? "up" : "down") + "\",path=\"" +
           (i % 2 == 0 ? "spliced" : "copied") + "\"} " + value(bytes_[i]) + "\n";
  }
  return out;
}

}  // namespace ktls::proxy
