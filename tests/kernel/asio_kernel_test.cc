// Kernel tests: ktls::asio with Boost.Beast, in every offload state: an
// HTTP request/response exchange over keep-alive with a body sent by
// async_sendfile; an echo through a pipe by async_splice_read and
// async_splice_write; the handshake deadline and cancellation, which must
// leave no descriptor behind.
#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <atomic>
#include <chrono>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "kernel/tls_uapi.h"
#include "ktls/asio.h"
#include "ktls/move.h"
#include "tests/support/fault_syscalls.h"
#include "tests/support/kernel_env.h"
#include "tests/support/offload_shape.h"
#include "tests/support/sockets.h"
#include "tests/support/tls_peers.h"

namespace {
std::atomic<int> epoll_ctl_calls[4];  // By operation: EPOLL_CTL_ADD (1), DEL (2), MOD (3).
}  // namespace

// Every epoll_ctl that Asio (compiled into this binary) makes comes here
// first, since the executable's definition wins over libc's: counted, then
// passed on unchanged.
extern "C" int epoll_ctl(int epfd, int op, int fd, epoll_event* event) noexcept {
  using Next = int (*)(int, int, int, epoll_event*);
  static const Next next = reinterpret_cast<Next>(::dlsym(RTLD_NEXT, "epoll_ctl"));
  if (op >= 1 && op <= 3) epoll_ctl_calls[op].fetch_add(1, std::memory_order_relaxed);
  if (next == nullptr) return static_cast<int>(::syscall(SYS_epoll_ctl, epfd, op, fd, event));  // Linked statically.
  return next(epfd, op, fd, event);
}

namespace ktls::testing {
namespace {

namespace net = boost::asio;
namespace http = boost::beast::http;
using net::ip::tcp;
using boost::system::error_code;

int OpenFdCount() {
  int count = 0;
  if (DIR* dir = ::opendir("/proc/self/fd")) {
    while (::readdir(dir) != nullptr) ++count;
    ::closedir(dir);
  }
  return count;
}

// RunFor runs io until it has no more work, or fails the test after the
// deadline (a hung operation).
void RunFor(net::io_context& io, std::chrono::seconds deadline) {
  io.run_for(deadline);
  EXPECT_TRUE(io.stopped()) << "operations still outstanding after " << deadline.count() << " s";
}

class AsioKernelTest : public OffloadShapeTest {
 protected:
  // EchoAgainst runs serve (an echo server coroutine made from the acceptor
  // and the context) on an io_context, and a client thread that echoes
  // data through it with this test's offload shape, at pace.
  template <typename Serve>
  void EchoAgainst(Serve serve, const std::vector<std::uint8_t>& data, std::vector<std::uint8_t>& echoed,
                   std::string& client_error, Pace pace = Pace::kConcurrent,
                   const std::function<void()>& before_client_writes = {}) {
    ServerConfig server_config = ServerFor();
    server_config.offload = Options();
    auto context = ServerContext::Create(server_config);
    ASSERT_TRUE(context.ok()) << context.error().ToString();
    net::io_context io;
    tcp::acceptor acceptor(io, tcp::endpoint(net::ip::make_address("127.0.0.1"), 0));
    net::co_spawn(io, serve(acceptor, *context), net::detached);
    std::thread client([&] {
      ClientConfig config = ClientFor();
      config.offload = Options();
      auto conn = ConnectTo(acceptor.local_endpoint().port(), config);
      if (!conn.ok()) {
        client_error = "connect: " + conn.error().ToString();
        return;
      }
      if (before_client_writes) before_client_writes();
      client_error = EchoThrough(*conn, data, pace, echoed);
    });
    RunFor(io, kTestDeadline);
    client.join();
  }
};

// Server: accepts one client and answers its requests until it closes:
// /file with the file by async_sendfile, anything else with a short text.
net::awaitable<void> Serve(tcp::acceptor& acceptor, const ServerContext& context, const TempFile& file,
                           std::string& error, Offload& tx, Offload& rx) {
  error_code ec;
  asio::stream s = co_await asio::async_accept(acceptor, context, net::redirect_error(net::use_awaitable, ec));
  if (ec) {
    error = "accept: " + ec.message() + ": " + s.last_error().ToString();
    co_return;
  }
  tx = s.connection().tx();
  rx = s.connection().rx();
  boost::beast::flat_buffer buffer;
  for (;;) {
    http::request<http::empty_body> request;
    co_await http::async_read(s, buffer, request, net::redirect_error(net::use_awaitable, ec));
    if (ec == http::error::end_of_stream) break;  // The client's close_notify.
    if (ec) {
      error = "read request: " + ec.message();
      co_return;
    }
    if (request.target() == "/file") {
      http::response<http::empty_body> response{http::status::ok, 11};
      response.content_length(file.contents().size());
      response.keep_alive(true);
      http::response_serializer<http::empty_body> serializer{response};
      co_await http::async_write_header(s, serializer, net::redirect_error(net::use_awaitable, ec));
      if (!ec) {
        const std::size_t sent = co_await s.async_sendfile(file.fd(), 0, file.contents().size(),
                                                          net::redirect_error(net::use_awaitable, ec));
        if (!ec && sent != file.contents().size()) error = "async_sendfile sent " + std::to_string(sent);
      }
    } else {
      http::response<http::string_body> response{http::status::ok, 11};
      response.body() = "hello " + std::string(request.target());
      response.prepare_payload();
      response.keep_alive(true);
      co_await http::async_write(s, response, net::redirect_error(net::use_awaitable, ec));
    }
    if (ec) {
      error = "write response: " + ec.message() + ": " + s.last_error().ToString();
      co_return;
    }
  }
  co_await s.async_shutdown(net::redirect_error(net::use_awaitable, ec));
  if (ec) error = "shutdown: " + ec.message();
}

net::awaitable<void> Fetch(tcp::endpoint endpoint, ClientConfig config, std::vector<std::string>& bodies,
                           std::string& error, Offload& tx, Offload& rx) {
  error_code ec;
  auto executor = co_await net::this_coro::executor;
  tcp::socket socket(executor);
  co_await socket.async_connect(endpoint, net::redirect_error(net::use_awaitable, ec));
  if (ec) {
    error = "connect: " + ec.message();
    co_return;
  }
  asio::stream s(std::move(socket));
  co_await s.async_handshake("localhost", config, net::redirect_error(net::use_awaitable, ec));
  if (ec) {
    error = "handshake: " + ec.message() + ": " + s.last_error().ToString();
    co_return;
  }
  tx = s.connection().tx();
  rx = s.connection().rx();
  boost::beast::flat_buffer buffer;
  for (const char* target : {"/hello", "/file", "/again"}) {
    http::request<http::empty_body> request{http::verb::get, target, 11};
    request.set(http::field::host, "localhost");
    co_await http::async_write(s, request, net::redirect_error(net::use_awaitable, ec));
    if (ec) {
      error = std::string("write ") + target + ": " + ec.message();
      co_return;
    }
    http::response_parser<http::string_body> parser;
    parser.body_limit(64 * 1024 * 1024);
    co_await http::async_read(s, buffer, parser, net::redirect_error(net::use_awaitable, ec));
    if (ec) {
      error = std::string("read ") + target + ": " + ec.message() + ": " + s.last_error().ToString();
      co_return;
    }
    bodies.push_back(parser.release().body());
  }
  co_await s.async_shutdown(net::redirect_error(net::use_awaitable, ec));
  if (ec) {
    error = "shutdown: " + ec.message();
    co_return;
  }
  char byte;
  co_await s.async_read_some(net::buffer(&byte, 1), net::redirect_error(net::use_awaitable, ec));
  if (ec != net::error::eof) error = "expected the server's close_notify, got: " + ec.message();
}

// BeastExchange: what Serve and Fetch, run against each other to the end,
// leave behind.
struct BeastExchange {
  std::string server_error, client_error;
  Offload server_tx{}, server_rx{}, client_tx{}, client_rx{};
  std::vector<std::string> bodies;
};

// RunBeastExchange runs Serve and Fetch on one io_context; before_start
// runs once the io_context and the acceptor exist, just before either
// side starts.
BeastExchange RunBeastExchange(const ServerContext& context, const ClientConfig& client_config,
                               const TempFile& file, const std::function<void()>& before_start = {}) {
  BeastExchange x;
  net::io_context io;
  tcp::acceptor acceptor(io, tcp::endpoint(net::ip::address_v4::loopback(), 0));
  if (before_start) before_start();
  net::co_spawn(io, Serve(acceptor, context, file, x.server_error, x.server_tx, x.server_rx), net::detached);
  net::co_spawn(io, Fetch(acceptor.local_endpoint(), client_config, x.bodies, x.client_error, x.client_tx, x.client_rx),
                net::detached);
  RunFor(io, kTestDeadline);
  return x;
}

TEST_P(AsioKernelTest, BeastRequestsOverKeepAliveWithSendfileBody) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  const auto stats_before = ReadTlsStat();
  TempFile file(3 * 1024 * 1024 + 99);
  ASSERT_TRUE(file.ok());
  ServerConfig server_config = ServerFor();
  server_config.offload = Options();
  auto context = ServerContext::Create(server_config);
  ASSERT_TRUE(context.ok()) << context.error().ToString();
  ClientConfig client_config = ClientFor();
  client_config.offload = Options();

  const BeastExchange x = RunBeastExchange(*context, client_config, file);
  EXPECT_EQ(x.server_error, "");
  EXPECT_EQ(x.client_error, "");
  ASSERT_EQ(x.bodies.size(), 3u);
  EXPECT_EQ(x.bodies[0], "hello /hello");
  EXPECT_EQ(Sha256Hex(std::span(reinterpret_cast<const std::uint8_t*>(x.bodies[1].data()), x.bodies[1].size())),
            Sha256Hex(file.contents()));
  EXPECT_EQ(x.bodies[2], "hello /again");
  ExpectOffloaded(x.server_tx, x.server_rx, WantTx(), WantRx(), "server");
  ExpectOffloaded(x.client_tx, x.client_rx, WantTx(), WantRx(), "client");
  const auto stats_after = ReadTlsStat();
  const auto delta = [&](const char* name) { return stats_after.at(name) - stats_before.at(name); };
  EXPECT_EQ(delta("TlsTxSw"), WantTx() == Offload::kKernel ? 2 : 0);
  EXPECT_EQ(delta("TlsRxSw"), WantRx() == Offload::kKernel ? 2 : 0);
  EXPECT_EQ(delta("TlsDecryptError"), 0);
}

// Server: an echo through a pipe with async_splice_read and
// async_splice_write, until the client's close_notify.
net::awaitable<void> SpliceEchoServe(tcp::acceptor& acceptor, const ServerContext& context, std::string& error,
                                     std::size_t& moved) {
  error_code ec;
  asio::stream s = co_await asio::async_accept(acceptor, context, net::redirect_error(net::use_awaitable, ec));
  if (ec) {
    error = "accept: " + ec.message() + ": " + s.last_error().ToString();
    co_return;
  }
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) {
    error = "pipe2 failed";
    co_return;
  }
  const UniqueFd pipe_read(fds[0]);
  const UniqueFd pipe_write(fds[1]);
  for (;;) {
    const std::size_t in = co_await s.async_splice_read(pipe_write.get(), 64 * 1024,
                                                        net::redirect_error(net::use_awaitable, ec));
    if (ec == net::error::eof) break;
    if (ec) {
      error = "async_splice_read: " + ec.message() + ": " + s.last_error().ToString();
      co_return;
    }
    for (std::size_t left = in; left > 0;) {
      const std::size_t out = co_await s.async_splice_write(pipe_read.get(), left, WriteFlags::kNone,
                                                            net::redirect_error(net::use_awaitable, ec));
      if (ec) {
        error = "async_splice_write: " + ec.message() + ": " + s.last_error().ToString();
        co_return;
      }
      left -= out;
      moved += out;
    }
  }
  co_await s.async_shutdown(net::redirect_error(net::use_awaitable, ec));
  if (ec) error = "shutdown: " + ec.message();
}

TEST_P(AsioKernelTest, SpliceEchoThroughAPipe) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  std::string server_error;
  std::size_t moved = 0;
  const std::vector<std::uint8_t> data = RandomBytes(4 * 1024 * 1024 + 9);
  std::vector<std::uint8_t> echoed;
  std::string client_error;
  ASSERT_NO_FATAL_FAILURE(EchoAgainst(
      [&](tcp::acceptor& a, const ServerContext& c) { return SpliceEchoServe(a, c, server_error, moved); }, data,
      echoed, client_error));
  EXPECT_EQ(server_error, "");
  EXPECT_EQ(client_error, "");
  EXPECT_EQ(moved, data.size());
  EXPECT_EQ(Sha256Hex(echoed), Sha256Hex(data));
}

// Echo for a loop that calls Connection::Read itself and waits with
// stream::async_wait only after would_block (what ktls-serve does to hold
// no buffer while idle); counts the waits.
net::awaitable<void> ReadItselfEchoServe(tcp::acceptor& acceptor, const ServerContext& context, std::string& error,
                                         std::size_t& echoed, std::atomic<std::size_t>& waits) {
  error_code ec;
  asio::stream s = co_await asio::async_accept(acceptor, context, net::redirect_error(net::use_awaitable, ec));
  if (ec) {
    error = "accept: " + ec.message() + ": " + s.last_error().ToString();
    co_return;
  }
  // Wait::kPipe is never waited for.
  co_await s.async_wait(Wait::kPipe, net::redirect_error(net::use_awaitable, ec));
  if (ec != net::error::invalid_argument) {
    error = "async_wait(kPipe): " + ec.message();
    co_return;
  }
  std::vector<std::byte> buf(16 * 1024);
  for (;;) {
    auto read = s.connection().Read(buf);
    if (!read.ok()) {
      error = "Read: " + read.error().ToString();
      co_return;
    }
    if (read->end_of_stream) break;
    if (read->would_block) {
      ++waits;
      co_await s.async_wait(read->wait, net::redirect_error(net::use_awaitable, ec));
      if (ec) {
        error = "async_wait: " + ec.message();
        co_return;
      }
      continue;
    }
    co_await net::async_write(s, net::buffer(buf.data(), read->bytes), net::redirect_error(net::use_awaitable, ec));
    if (ec) {
      error = "write: " + ec.message() + ": " + s.last_error().ToString();
      co_return;
    }
    echoed += read->bytes;
  }
  co_await s.async_shutdown(net::redirect_error(net::use_awaitable, ec));
  if (ec) error = "shutdown: " + ec.message();
}

TEST_P(AsioKernelTest, ALoopThatReadsItselfWaitsOnlyAfterWouldBlock) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  std::string server_error;
  std::size_t moved = 0;
  std::atomic<std::size_t> waits = 0;
  const std::vector<std::uint8_t> data = RandomBytes(2 * 1024 * 1024 + 5);
  std::vector<std::uint8_t> echoed;
  std::string client_error;
  // The client writes nothing until the server has found the socket empty
  // once and gone to wait, so the wait is exercised whatever the timing.
  // (After that, in lockstep, whether the server's next Read comes before
  // the client's next piece is a race that UML's slow syscalls can make
  // the client win every time.) A server that never waits (a Read that
  // blocks, or never says would_block) leaves the client going on after
  // the deadline, and the count below fails.
  auto until_the_server_waits = [&waits] {
    const auto deadline = std::chrono::steady_clock::now() + kTestDeadline / 2;
    while (waits.load() == 0 && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  };
  ASSERT_NO_FATAL_FAILURE(EchoAgainst(
      [&](tcp::acceptor& a, const ServerContext& c) { return ReadItselfEchoServe(a, c, server_error, moved, waits); },
      data, echoed, client_error, Pace::kLockstep, until_the_server_waits));
  EXPECT_EQ(server_error, "");
  EXPECT_EQ(client_error, "");
  EXPECT_EQ(moved, data.size());
  EXPECT_EQ(Sha256Hex(echoed), Sha256Hex(data));
  EXPECT_GT(waits.load(), 0u) << "nothing to read after the handshake: the server must have waited";
}

INSTANTIATE_TEST_SUITE_P(Shapes, AsioKernelTest, AllOffloadShapes(), OffloadShapeName);

// An Asio server hands an offloaded connection over (release_connection,
// then SendConnection); the receiving end adopts it into a new stream and
// echoes on with Asio's async operations. Both directions in the kernel, as
// a move needs.
TEST(AsioMoveKernelTest, ReleasedConnectionMovesAndEchoesInANewStream) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  auto context = ServerContext::Create(ServerFor());
  ASSERT_TRUE(context.ok()) << context.error().ToString();
  int pair[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
  detail::UniqueFd send_end(pair[0]), receive_end(pair[1]);
  net::io_context io;
  tcp::acceptor acceptor(io, tcp::endpoint(net::ip::make_address("127.0.0.1"), 0));
  std::string error;
  const int fds_before = OpenFdCount();
  auto serve = [&]() -> net::awaitable<void> {
    error_code ec;
    asio::stream first = co_await asio::async_accept(acceptor, *context, net::redirect_error(net::use_awaitable, ec));
    if (ec) {
      error = "accept: " + ec.message();
      co_return;
    }
    Connection conn = first.release_connection();
    if (first.is_open() || conn.fd() < 0) {
      error = "release_connection left the stream open or the Connection empty";
      co_return;
    }
    if (auto sent = SendConnection(send_end.get(), conn); !sent.ok()) {
      error = "SendConnection: " + sent.error().ToString();
      co_return;
    }
    auto received = ReceiveConnection(receive_end.get());
    if (!received.ok()) {
      error = "ReceiveConnection: " + received.error().ToString();
      co_return;
    }
    asio::stream second(co_await net::this_coro::executor, std::move(received).value());
    std::vector<char> buf(64 * 1024);
    for (;;) {
      const std::size_t n =
          co_await second.async_read_some(net::buffer(buf), net::redirect_error(net::use_awaitable, ec));
      if (ec == net::error::eof) break;
      if (ec) {
        error = "read after the move: " + ec.message();
        co_return;
      }
      co_await net::async_write(second, net::buffer(buf.data(), n), net::redirect_error(net::use_awaitable, ec));
      if (ec) {
        error = "write after the move: " + ec.message();
        co_return;
      }
    }
    co_await second.async_shutdown(net::redirect_error(net::use_awaitable, ec));
    if (ec) error = "shutdown after the move: " + ec.message();
  };
  net::co_spawn(io, serve(), net::detached);
  std::vector<std::uint8_t> echoed;
  std::string client_error;
  const auto payload = RandomBytes(300 * 1024 + 1);
  std::thread client([&] {
    auto conn = ConnectTo(acceptor.local_endpoint().port(), ClientFor());
    client_error = conn.ok() ? EchoThrough(*conn, payload, Pace::kConcurrent, echoed) : conn.error().ToString();
  });
  RunFor(io, kTestDeadline);
  client.join();
  EXPECT_EQ(error, "");
  EXPECT_EQ(client_error, "");
  EXPECT_EQ(Sha256Hex(echoed), Sha256Hex(payload));
  EXPECT_EQ(OpenFdCount(), fds_before) << "the moved connection was closed once, by its last owner";
}

// On a kernel with kTLS, so that "nothing offloaded" is measured: the ULP
// and keys would be installed the moment a handshake completed.
TEST(AsioHandshakeKernelTest, SilentClientTimesOutOffloadsNothingAndLeavesNoDescriptor) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  ServerConfig config = ServerFor();
  config.handshake_timeout = std::chrono::milliseconds(300);
  auto context = ServerContext::Create(config);
  ASSERT_TRUE(context.ok());
  const auto stats_before = ReadTlsStat();
  net::io_context io;
  tcp::acceptor acceptor(io, tcp::endpoint(net::ip::address_v4::loopback(), 0));
  const int fds_before = OpenFdCount();
  tcp::socket silent(io);
  silent.connect(acceptor.local_endpoint());
  error_code result = net::error::would_block;  // Overwritten by the handler.
  std::string detail;
  asio::async_accept(acceptor, *context, [&](error_code ec, asio::stream s) {
    result = ec;
    detail = s.last_error().ToString();
    EXPECT_FALSE(s.is_open());
  });
  RunFor(io, std::chrono::seconds(10));
  EXPECT_EQ(result, boost::system::errc::timed_out) << result.message();
  EXPECT_NE(detail.find("timed out"), std::string::npos) << detail;
  // The server's end is gone: the client reads EOF.
  char byte;
  error_code read_ec;
  silent.read_some(net::buffer(&byte, 1), read_ec);
  EXPECT_EQ(read_ec, net::error::eof);
  silent.close();
  EXPECT_EQ(OpenFdCount(), fds_before) << "a descriptor leaked";
  const auto stats_after = ReadTlsStat();
  for (const char* counter : {"TlsTxSw", "TlsRxSw", "TlsCurrTxSw", "TlsCurrRxSw"}) {
    EXPECT_EQ(stats_after.at(counter), stats_before.at(counter)) << counter << ": a timed-out handshake offloaded";
  }
}

TEST(AsioHandshakeKernelTest, CancelledHandshakeClosesTheSocketAndOffloadsNothing) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  auto context = ServerContext::Create(ServerFor());
  ASSERT_TRUE(context.ok());
  const auto stats_before = ReadTlsStat();
  net::io_context io;
  tcp::acceptor acceptor(io, tcp::endpoint(net::ip::address_v4::loopback(), 0));
  const int fds_before = OpenFdCount();
  tcp::socket silent(io);
  silent.connect(acceptor.local_endpoint());
  tcp::socket accepted = acceptor.accept();
  std::optional<asio::stream> s;
  s.emplace(std::move(accepted));
  error_code result = net::error::would_block;
  s->async_handshake(*context, [&](error_code ec) { result = ec; });
  net::steady_timer timer(io, std::chrono::milliseconds(100));
  timer.async_wait([&](error_code) { s->cancel(); });
  RunFor(io, std::chrono::seconds(10));
  EXPECT_EQ(result, net::error::operation_aborted) << result.message();
  EXPECT_FALSE(s->is_open());
  s.reset();
  silent.close();
  EXPECT_EQ(OpenFdCount(), fds_before) << "a descriptor leaked";
  const auto stats_after = ReadTlsStat();
  for (const char* counter : {"TlsTxSw", "TlsRxSw", "TlsCurrTxSw", "TlsCurrRxSw"}) {
    EXPECT_EQ(stats_after.at(counter), stats_before.at(counter)) << counter << ": a cancelled handshake offloaded";
  }
}

// A stream registers its socket with the reactor once, from accept (or
// connect) to close: not again around the handshake or the offload (each
// time a DEL and an ADD, as it once did). Counted for a server stream
// (async_accept) and a client stream (stream(socket), async_handshake)
// over a keep-alive exchange.
TEST(AsioHandshakeKernelTest, EachSocketIsRegisteredOnceFromAcceptOrConnectToClose) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  TempFile file(10'000);
  ASSERT_TRUE(file.ok());
  ServerConfig server_config = ServerFor();
  server_config.offload.rx = RxOffload::kOn;  // Both directions in the kernel on 6.1 too.
  ClientConfig client_config = ClientFor();
  client_config.offload.rx = RxOffload::kOn;
  auto context = ServerContext::Create(server_config);
  ASSERT_TRUE(context.ok()) << context.error().ToString();
  int adds_before = 0, dels_before = 0;
  const BeastExchange x = RunBeastExchange(*context, client_config, file, [&] {
    adds_before = epoll_ctl_calls[EPOLL_CTL_ADD].load();
    dels_before = epoll_ctl_calls[EPOLL_CTL_DEL].load();
  });
  EXPECT_EQ(x.server_error, "");
  EXPECT_EQ(x.client_error, "");
  ASSERT_EQ(x.bodies.size(), 3u);
  EXPECT_EQ(x.bodies[2], "hello /again");
  ExpectOffloaded(x.server_tx, x.server_rx, Offload::kKernel, Offload::kKernel, "server");
  ExpectOffloaded(x.client_tx, x.client_rx, Offload::kKernel, Offload::kKernel, "client");
  EXPECT_EQ(epoll_ctl_calls[EPOLL_CTL_ADD].load() - adds_before, 2) << "one registration for each end";
  EXPECT_LE(epoll_ctl_calls[EPOLL_CTL_DEL].load() - dels_before, 2) << "one removal for each end, at its close";
}

// A stream that never handshakes closes its socket (held by the Asio
// socket it came in) when it is destroyed, or when its (empty) connection
// is released: the peer sees the end, and no descriptor is left.
TEST(AsioHandshakeKernelTest, StreamDroppedBeforeItsHandshakeClosesTheSocket) {
  for (const bool release_first : {false, true}) {
    SCOPED_TRACE(release_first ? "release_connection, then destroyed" : "destroyed");
    net::io_context io;
    tcp::acceptor acceptor(io, tcp::endpoint(net::ip::address_v4::loopback(), 0));
    const int fds_before = OpenFdCount();
    tcp::socket client(io);
    client.connect(acceptor.local_endpoint());
    {
      asio::stream s(acceptor.accept());
      EXPECT_TRUE(s.is_open());
      if (release_first) {
        const Connection released = s.release_connection();
        EXPECT_LT(released.fd(), 0) << "nothing was handshaken, so nothing is handed over";
        EXPECT_FALSE(s.is_open());
      }
    }
    char byte;
    error_code read_ec;
    client.read_some(net::buffer(&byte, 1), read_ec);
    EXPECT_EQ(read_ec, net::error::eof);
    client.close();
    EXPECT_EQ(OpenFdCount(), fds_before) << "a descriptor leaked";
  }
}

}  // namespace
}  // namespace ktls::testing
