// Unit tests: a ktls-proxy Direction quiescing for a SIGUSR2 hand-over
// (tools/ktls-proxy/direction.h), over loopback TCP (plain endpoints, by
// splice): it stops reading, is quiet() only once its pipe has emptied into
// the sink, and every byte is either at the sink or still unread at the
// source, never in between; and it counts only the bytes that reached the
// sink, not those still waiting in its pipe.
#include "ktls-proxy/direction.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "ktls-proxy/channel.h"
#include "ktls-proxy/endpoint.h"
#include "ktls-proxy/unique_fd.h"

namespace ktls::proxy {
namespace {

// TcpPair: a connected loopback pair; .first is non-blocking (the proxy's
// end), .second blocking (the peer's).
std::pair<UniqueFd, UniqueFd> TcpPair() {
  UniqueFd listener(::socket(AF_INET, SOCK_STREAM, 0));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  EXPECT_EQ(::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  EXPECT_EQ(::listen(listener.get(), 1), 0);
  EXPECT_EQ(::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&addr), &len), 0);
  UniqueFd peer(::socket(AF_INET, SOCK_STREAM, 0));
  EXPECT_EQ(::connect(peer.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  UniqueFd mine(::accept4(listener.get(), nullptr, nullptr, SOCK_NONBLOCK));
  EXPECT_GE(mine.get(), 0);
  return {std::move(mine), std::move(peer)};
}

std::size_t Readable(int fd) {
  std::vector<char> buf(1 << 20);
  const ssize_t n = ::recv(fd, buf.data(), buf.size(), MSG_PEEK | MSG_DONTWAIT);
  return n > 0 ? static_cast<std::size_t>(n) : 0;
}

std::string ReadNow(int fd) {
  std::string out;
  char buf[65536];
  ssize_t n;
  while ((n = ::recv(fd, buf, sizeof(buf), MSG_DONTWAIT)) > 0) out.append(buf, static_cast<std::size_t>(n));
  return out;
}

struct Relay {
  Relay() {
    auto [src_mine, src_peer] = TcpPair();
    auto [sink_mine, sink_peer] = TcpPair();
    source = Endpoint::Plain(std::move(src_mine));
    sink = Endpoint::Plain(std::move(sink_mine));
    client = std::move(src_peer);
    backend = std::move(sink_peer);
    std::string error;
    auto channel = Channel::Create(false, error);
    EXPECT_TRUE(channel.has_value()) << error;
    direction.emplace(source, sink, std::move(*channel));
  }
  Endpoint source, sink;
  UniqueFd client, backend;  // The peers: client writes, backend reads.
  std::optional<Direction> direction;
};

TEST(ProxyDirection, QuiesceStopsReadingAndGoesOnWhereItStopped) {
  Relay r;
  ASSERT_EQ(::send(r.client.get(), "hello", 5, 0), 5);
  r.direction->Step();
  EXPECT_EQ(ReadNow(r.backend.get()), "hello");

  r.direction->Quiesce(true);
  EXPECT_FALSE(r.direction->quiet()) << "quiet only after a Step drained and flushed";
  ASSERT_EQ(::send(r.client.get(), "world", 5, 0), 5);
  r.direction->Step();
  EXPECT_TRUE(r.direction->quiet());
  EXPECT_EQ(r.direction->source_events(), 0u) << "a quiet direction waits for nothing";
  EXPECT_EQ(r.direction->bytes(), 5u);
  EXPECT_EQ(ReadNow(r.backend.get()), "");
  EXPECT_EQ(Readable(r.source.fd()), 5u) << "the new bytes wait in the source's socket";

  r.direction->Quiesce(false);
  EXPECT_FALSE(r.direction->quiet());
  r.direction->Step();
  EXPECT_EQ(ReadNow(r.backend.get()), "world");
  EXPECT_EQ(r.direction->bytes(), 10u);
}

// FillTheSink: small buffers at the sink, its peer not reading, and more
// sent at the source than the sink's socket and the pipe hold; one Step.
// What was sent.
std::string FillTheSink(Relay& r) {
  const int small = 16384;
  EXPECT_EQ(::setsockopt(r.sink.fd(), SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)), 0);
  EXPECT_EQ(::setsockopt(r.backend.get(), SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)), 0);
  EXPECT_EQ(::fcntl(r.client.get(), F_SETFL, O_NONBLOCK), 0);
  std::string sent;
  const std::string chunk(16384, 'x');
  for (int i = 0; i < 24; ++i) {
    std::string piece = chunk;
    piece[0] = static_cast<char>('a' + i % 26);
    const ssize_t n = ::send(r.client.get(), piece.data(), piece.size(), 0);
    if (n <= 0) break;
    sent.append(piece, 0, static_cast<std::size_t>(n));
  }
  EXPECT_GT(sent.size(), 128u * 1024) << "enough to fill the sink and the pipe";
  r.direction->Step();
  return sent;
}

TEST(ProxyDirection, CountsOnlyWhatReachedTheSink) {
  Relay r;
  const std::string sent = FillTheSink(r);
  ASSERT_TRUE(r.direction->in_flight()) << "the sink is full, bytes wait in the pipe";
  // With no more Steps, the sink's peer can read exactly what bytes()
  // says went to the sink; what waits in the pipe is not counted (a cut
  // now would lose it).
  std::string received;
  for (int round = 0; round < 2000 && received.size() < r.direction->bytes(); ++round) {
    pollfd pfd{r.backend.get(), POLLIN, 0};
    (void)::poll(&pfd, 1, 10);
    received += ReadNow(r.backend.get());
  }
  pollfd pfd{r.backend.get(), POLLIN, 0};
  (void)::poll(&pfd, 1, 100);
  received += ReadNow(r.backend.get());
  EXPECT_EQ(received.size(), r.direction->bytes());
  EXPECT_EQ(received, sent.substr(0, received.size()));
  EXPECT_TRUE(r.direction->in_flight());
}

TEST(ProxyDirection, QuietOnlyOnceThePipeEmptiedIntoTheSink) {
  Relay r;
  const std::string sent = FillTheSink(r);
  ASSERT_NE(r.direction->sink_events(), 0u) << "the sink is full, bytes wait in the pipe";

  r.direction->Quiesce(true);
  std::string received;
  for (int round = 0; round < 10000 && !r.direction->quiet(); ++round) {
    received += ReadNow(r.backend.get());
    pollfd pfd{r.sink.fd(), POLLOUT, 0};
    (void)::poll(&pfd, 1, 10);
    r.direction->Step();
  }
  ASSERT_TRUE(r.direction->quiet());
  // Quiet: everything it took went to the sink (some may still be in the
  // sink's send queue, which moves with its socket), nothing is in the pipe.
  for (int round = 0; round < 2000 && received.size() < r.direction->bytes(); ++round) {
    pollfd pfd{r.backend.get(), POLLIN, 0};
    (void)::poll(&pfd, 1, 10);
    received += ReadNow(r.backend.get());
  }
  EXPECT_EQ(received.size(), r.direction->bytes());
  EXPECT_EQ(received, sent.substr(0, received.size()));
  EXPECT_LT(received.size(), sent.size()) << "the rest is still unread at the source";

  r.direction->Quiesce(false);
  for (int round = 0; round < 10000 && received.size() < sent.size(); ++round) {
    r.direction->Step();
    received += ReadNow(r.backend.get());
    pollfd pfd{r.backend.get(), POLLIN, 0};
    (void)::poll(&pfd, 1, 10);
  }
  EXPECT_EQ(received, sent);
}

}  // namespace
}  // namespace ktls::proxy
