// examples/asio_https_server.cc: an HTTPS server with Boost.Asio and
// Boost.Beast on kernel TLS, sending a file with sendfile(2).
//
//   asio_https_server CERT.pem KEY.pem FILE [PORT]
//
// Listens on 127.0.0.1:PORT (default 8443; 0 picks a free port). Every GET
// gets FILE: Beast writes the header, async_sendfile the body, which with
// TX in the kernel never passes through userspace. Keep-alive; C++20
// coroutines; one thread. Runs until SIGINT or SIGTERM.
//
// Link ktls::asio (header-only, Boost 1.74+).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>  // Before Boost: its awaitable.hpp uses std::exchange.

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <ktls/asio.h>
#include <ktls/server.h>

namespace net = boost::asio;
namespace http = boost::beast::http;
using boost::system::error_code;
using net::ip::tcp;

namespace {

net::awaitable<void> Serve(ktls::asio::stream stream, const char* path) {
  std::printf("connection: tx=%s rx=%s\n", ktls::OffloadName(stream.connection().tx()),
              ktls::OffloadName(stream.connection().rx()));
  std::fflush(stdout);
  boost::beast::flat_buffer buffer;
  error_code ec;
  for (;;) {
    http::request<http::empty_body> request;
    co_await http::async_read(stream, buffer, request, net::redirect_error(net::use_awaitable, ec));
    if (ec) break;  // close_notify (asio::error::eof), or an error.
    // Opened per request, so the file can change between them.
    const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
    struct stat st {};
    if (fd < 0 || ::fstat(fd, &st) != 0) {
      if (fd >= 0) ::close(fd);
      break;
    }
    http::response<http::empty_body> header{http::status::ok, request.version()};
    header.set(http::field::content_type, "application/octet-stream");
    header.content_length(static_cast<std::uint64_t>(st.st_size));
    header.keep_alive(request.keep_alive());
    http::response_serializer<http::empty_body> serializer(header);
    co_await http::async_write_header(stream, serializer, net::redirect_error(net::use_awaitable, ec));
    // The body: sendfile(2) through kTLS (through OpenSSL where TX is not
    // in the kernel). It may send less than asked, like sendfile.
    off_t offset = 0;
    while (!ec && offset < st.st_size) {
      offset += static_cast<off_t>(co_await stream.async_sendfile(
          fd, offset, static_cast<std::size_t>(st.st_size - offset), net::redirect_error(net::use_awaitable, ec)));
    }
    ::close(fd);
    if (ec || !request.keep_alive()) break;
  }
  co_await stream.async_shutdown(net::redirect_error(net::use_awaitable, ec));  // close_notify.
  co_await stream.async_close(net::redirect_error(net::use_awaitable, ec));     // Lingers without blocking.
}

net::awaitable<void> Accept(tcp::acceptor& acceptor, const ktls::ServerContext& context, const char* path) {
  for (;;) {
    error_code ec;
    ktls::asio::stream stream =
        co_await ktls::asio::async_accept(acceptor, context, net::redirect_error(net::use_awaitable, ec));
    if (!acceptor.is_open()) co_return;
    if (ec) {
      std::fprintf(stderr, "handshake: %s\n", ec.message().c_str());
      continue;
    }
    net::co_spawn(acceptor.get_executor(), Serve(std::move(stream), path), net::detached);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s CERT.pem KEY.pem FILE [PORT]\n", argv[0]);
    return 2;
  }
  std::signal(SIGPIPE, SIG_IGN);  // sendfile(2) to a vanished client: an error, not the end of the server.
  ktls::ServerConfig config;
  config.cert_file = argv[1];
  config.key_file = argv[2];
  config.alpn = {"http/1.1"};
  auto context = ktls::ServerContext::Create(config);
  if (!context.ok()) {
    std::fprintf(stderr, "TLS: %s\n", context.error().ToString().c_str());
    return 1;
  }
  net::io_context io;
  const auto port = static_cast<unsigned short>(argc > 4 ? std::atoi(argv[4]) : 8443);
  tcp::acceptor acceptor(io, tcp::endpoint(net::ip::make_address("127.0.0.1"), port));
  std::printf("listening on 127.0.0.1:%u\n", acceptor.local_endpoint().port());
  std::fflush(stdout);
  net::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&](error_code, int) { io.stop(); });
  net::co_spawn(io, Accept(acceptor, *context, argv[3]), net::detached);
  io.run();
  return 0;
}
