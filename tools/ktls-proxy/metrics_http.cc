// tools/ktls-proxy/metrics_http.cc: see metrics_http.h.
#include "ktls-proxy/metrics_http.h"

#include <sys/socket.h>
#include <sys/time.h>

#include <cerrno>

#include "ktls-proxy/listen_socket.h"

namespace ktls::proxy {

bool MetricsServer::Start(const std::string& host, std::uint16_t port, std::function<std::string()> render,
                          std::string& error) {
  listener_ = OpenListenSocket(host, port, {.backlog = 16}, "--metrics", port_, error);
  if (listener_.get() < 0) return false;
  render_ = std::move(render);
  thread_ = std::thread([this] { Serve(); });
  return true;
}

void MetricsServer::Stop() {
  if (!thread_.joinable()) return;
  ::shutdown(listener_.get(), SHUT_RDWR);  // accept(2) returns: the thread ends.
  thread_.join();
  listener_.reset();
}

void MetricsServer::Serve() {
  for (;;) {
    UniqueFd conn(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (conn.get() < 0) {
      if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE || errno == ENFILE) continue;
      return;  // Stop shut the listener down.
    }
    // A scraper that sends nothing must not hold the thread for long.
    const timeval timeout{2, 0};
    ::setsockopt(conn.get(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    ::setsockopt(conn.get(), SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
    std::string request;
    char buf[1024];
    while (request.find("\r\n\r\n") == std::string::npos && request.size() < 8192) {
      const ssize_t n = ::recv(conn.get(), buf, sizeof(buf), 0);
      if (n <= 0) break;
      request.append(buf, static_cast<std::size_t>(n));
    }
    const bool metrics = request.rfind("GET /metrics ", 0) == 0 || request.rfind("GET /metrics?", 0) == 0;
    const std::string body = metrics ? render_() : "not found\n";
    const std::string response = std::string(metrics ? "HTTP/1.1 200 OK\r\n" : "HTTP/1.1 404 Not Found\r\n") +
                                 (metrics ? "Content-Type: text/plain; version=0.0.4\r\n" : "Content-Type: text/plain\r\n") +
                                 "Content-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
    for (std::size_t sent = 0; sent < response.size();) {
      const ssize_t n = ::send(conn.get(), response.data() + sent, response.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) break;
      sent += static_cast<std::size_t>(n);
    }
    ::shutdown(conn.get(), SHUT_WR);
  }
}

}  // namespace ktls::proxy
