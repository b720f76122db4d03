// tools/ktls-serve/metrics_http.h: the plain-HTTP listener behind
// ktls-serve --metrics ADDR:PORT, for a Prometheus scraper.
//
// Apart from the HTTPS listener and normally on loopback: GET (or HEAD)
// /metrics gets the text Render makes; any other path 404, any other
// method 405. One request per connection (Connection: close), each
// bounded by a short deadline, so a silent client cannot hold it.
#ifndef KTLS_TOOLS_KTLS_SERVE_METRICS_HTTP_H_
#define KTLS_TOOLS_KTLS_SERVE_METRICS_HTTP_H_

#include <functional>
#include <string>
#include <utility>  // Before Boost: its awaitable.hpp uses std::exchange.

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>

namespace ktls::serve {

// kMetricsContentType: the Prometheus text exposition format.
inline constexpr const char* kMetricsContentType = "text/plain; version=0.0.4; charset=utf-8";

// ServeMetrics accepts on acceptor until it is closed, answering each
// connection on the acceptor's executor. render is called once per scrape,
// on that executor.
boost::asio::awaitable<void> ServeMetrics(boost::asio::ip::tcp::acceptor& acceptor,
                                          std::function<std::string()> render);

}  // namespace ktls::serve

#endif  // KTLS_TOOLS_KTLS_SERVE_METRICS_HTTP_H_
