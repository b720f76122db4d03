// tools/ktls-serve/metrics_http.cc: the --metrics listener.
#include "ktls-serve/metrics_http.h"

#include <chrono>
#include <memory>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

namespace ktls::serve {

namespace {

namespace net = boost::asio;
namespace http = boost::beast::http;
using boost::system::error_code;
using net::ip::tcp;

// A scrape must be asked for and read within this; then the socket closes.
constexpr std::chrono::seconds kScrapeDeadline{10};

net::awaitable<void> Answer(std::shared_ptr<tcp::socket> socket, std::function<std::string()> render) {
  net::steady_timer deadline(socket->get_executor());
  deadline.expires_after(kScrapeDeadline);
  deadline.async_wait([weak = std::weak_ptr<tcp::socket>(socket)](error_code ec) {
    if (ec) return;  // Cancelled: answered in time.
    if (auto s = weak.lock()) {
      error_code ignored;
      s->close(ignored);
    }
  });
  boost::beast::flat_buffer buffer;
  http::request_parser<http::empty_body> parser;
  parser.header_limit(8 * 1024);
  parser.body_limit(0);
  error_code ec;
  co_await http::async_read(*socket, buffer, parser, net::redirect_error(net::use_awaitable, ec));
  if (ec) co_return;
  const auto& request = parser.get();
  http::response<http::string_body> response;
  response.version(11);
  response.set(http::field::server, "ktls-serve");
  response.keep_alive(false);
  const std::string_view target(request.target().data(), request.target().size());
  const bool get = request.method() == http::verb::get || request.method() == http::verb::head;
  if (target != "/metrics" && !target.starts_with("/metrics?")) {
    response.result(http::status::not_found);
    response.set(http::field::content_type, "text/plain");
    response.body() = "not found: the metrics are at /metrics\n";
  } else if (!get) {
    response.result(http::status::method_not_allowed);
    response.set(http::field::allow, "GET, HEAD");
  } else {
    response.result(http::status::ok);
    response.set(http::field::content_type, kMetricsContentType);
    response.body() = render();
  }
  response.prepare_payload();
  if (request.method() == http::verb::head) response.body().clear();  // Content-Length stays.
  if (request.method() == http::verb::head) {
    http::response_serializer<http::string_body> serializer(response);
    co_await http::async_write_header(*socket, serializer, net::redirect_error(net::use_awaitable, ec));
  } else {
    co_await http::async_write(*socket, response, net::redirect_error(net::use_awaitable, ec));
  }
  deadline.cancel();
  socket->shutdown(tcp::socket::shutdown_send, ec);
}

}  // namespace

net::awaitable<void> ServeMetrics(tcp::acceptor& acceptor, std::function<std::string()> render) {
  for (;;) {
    error_code ec;
    tcp::socket socket = co_await acceptor.async_accept(net::redirect_error(net::use_awaitable, ec));
    if (ec) {
      if (!acceptor.is_open() || ec == net::error::operation_aborted) co_return;
      // One failed accept (a reset, out of fds) ends nothing else; pause so
      // that a lasting one does not spin.
      net::steady_timer pause(acceptor.get_executor());
      pause.expires_after(std::chrono::milliseconds(100));
      co_await pause.async_wait(net::redirect_error(net::use_awaitable, ec));
      continue;
    }
    net::co_spawn(acceptor.get_executor(), Answer(std::make_shared<tcp::socket>(std::move(socket)), render),
                  net::detached);
  }
}

}  // namespace ktls::serve
