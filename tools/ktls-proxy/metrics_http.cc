// tools/ktls-proxy/metrics_http.cc: see metrics_http.h.
#include "ktls-proxy/metrics_http.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <cerrno>
#include <cstring>

namespace ktls::proxy {

bool MetricsServer::Start(const std::string& host, std::uint16_t port, std::function<std::string()> render,
                          std::string& error) {
  sockaddr_storage addr{};
  socklen_t addr_len = 0;
  auto* in = reinterpret_cast<sockaddr_in*>(&addr);
  auto* in6 = reinterpret_cast<sockaddr_in6*>(&addr);
  if (::inet_pton(AF_INET, host.c_str(), &in->sin_addr) == 1) {
    in->sin_family = AF_INET;
    in->sin_port = htons(port);
    addr_len = sizeof(sockaddr_in);
  } else if (::inet_pton(AF_INET6, host.c_str(), &in6->sin6_addr) == 1) {
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(port);
    addr_len = sizeof(sockaddr_in6);
  } else {
    error = "--metrics wants a numeric address, got " + host;
    return false;
  }
  listener_.reset(::socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  const int one = 1;
  if (listener_.get() < 0 || ::setsockopt(listener_.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
      ::bind(listener_.get(), reinterpret_cast<sockaddr*>(&addr), addr_len) != 0 || ::listen(listener_.get(), 16) != 0) {
    error = "--metrics: cannot listen on " + host + ":" + std::to_string(port) + ": " + std::strerror(errno);
    return false;
  }
  sockaddr_storage bound{};
  socklen_t bound_len = sizeof(bound);
  ::getsockname(listener_.get(), reinterpret_cast<sockaddr*>(&bound), &bound_len);
  port_ = ntohs(bound.ss_family == AF_INET ? reinterpret_cast<sockaddr_in&>(bound).sin_port
                                           : reinterpret_cast<sockaddr_in6&>(bound).sin6_port);
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
