// tools/ktls-proxy/metrics_http.h: the --metrics listener: plain HTTP,
// GET /metrics only, one request per connection, on a thread of its own
// (scrapes are rare; the event loops never wait for one).
#ifndef KTLS_TOOLS_KTLS_PROXY_METRICS_HTTP_H_
#define KTLS_TOOLS_KTLS_PROXY_METRICS_HTTP_H_

#include <cstdint>
#include <functional>
#include <string>
#include <thread>

#include "ktls-proxy/unique_fd.h"

namespace ktls::proxy {

class MetricsServer {
 public:
  MetricsServer() = default;
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;
  ~MetricsServer() { Stop(); }

  // Start listens on host:port (numeric; port 0: a free one, see port())
  // and serves render()'s text at /metrics until Stop.
  bool Start(const std::string& host, std::uint16_t port, std::function<std::string()> render, std::string& error);
  std::uint16_t port() const noexcept { return port_; }
  void Stop();

 private:
  void Serve();
  UniqueFd listener_;
  std::uint16_t port_ = 0;
  std::function<std::string()> render_;
  std::thread thread_;
};

}  // namespace ktls::proxy

#endif  // KTLS_TOOLS_KTLS_PROXY_METRICS_HTTP_H_
