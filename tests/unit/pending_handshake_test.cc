// Unit tests: PendingHandshake's contract, on the host (the connections stay
// in OpenSSL here; the kernel tests cover offload).
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "ktls/handshake.h"
#include "ktls/server.h"
#include "tests/support/sockets.h"
#include "tests/support/tls_peers.h"

namespace ktls::testing {
namespace {

using std::chrono::milliseconds;
using std::chrono::steady_clock;

TEST(PendingHandshakeTest, SilentClientTimesOutAtTheDeadline) {
  SocketPair pair = LoopbackTcpPair();
  ASSERT_TRUE(pair.client.valid() && pair.server.valid());
  ServerConfig config = ServerFor();
  config.handshake_timeout = milliseconds(200);
  auto context = ServerContext::Create(config);
  ASSERT_TRUE(context.ok()) << context.error().ToString();
  const auto started = steady_clock::now();
  auto hs = context->StartHandshake(pair.server.release());
  ASSERT_TRUE(hs.ok()) << hs.error().ToString();
  EXPECT_GE(hs->deadline(), started + milliseconds(200));
  EXPECT_LE(hs->deadline(), steady_clock::now() + milliseconds(200));

  auto first = hs->Step();
  ASSERT_TRUE(first.ok()) << first.error().ToString();
  EXPECT_EQ(*first, Wait::kReadable);  // Nothing sent: wait for the ClientHello.
  pollfd pfd{hs->fd(), POLLIN, 0};
  ASSERT_EQ(::poll(&pfd, 1, 400), 0) << "the silent client's socket became readable";
  // poll waited the full 400 ms, past the deadline.
  auto late = hs->Step();
  ASSERT_FALSE(late.ok());
  EXPECT_EQ(late.error().category, ErrorCategory::kIo);
  EXPECT_EQ(late.error().sys_errno, ETIMEDOUT);
  // The server closed its side: the client reads EOF.
  char byte;
  EXPECT_EQ(::recv(pair.client.get(), &byte, 1, 0), 0);
  auto again = hs->Step();
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.error().category, ErrorCategory::kClosed);
}

TEST(PendingHandshakeTest, FinishBeforeTheHandshakeEndsIsAUsageError) {
  SocketPair pair = LoopbackTcpPair();
  ASSERT_TRUE(pair.client.valid() && pair.server.valid());
  auto context = ServerContext::Create(ServerFor());
  ASSERT_TRUE(context.ok()) << context.error().ToString();
  auto hs = context->StartHandshake(pair.server.release());
  ASSERT_TRUE(hs.ok());
  auto conn = hs->Finish();
  ASSERT_FALSE(conn.ok());
  EXPECT_EQ(conn.error().category, ErrorCategory::kUsage);
  EXPECT_GE(hs->fd(), 0) << "a usage error must not take the socket";
}

// DriveBoth steps two handshakes on this thread until both are done or one
// fails; returns the first failure.
std::optional<Error> DriveBoth(PendingHandshake& a, PendingHandshake& b) {
  Wait wait_a = Wait::kReadable;
  Wait wait_b = Wait::kReadable;
  const auto deadline = steady_clock::now() + kIoTimeout;
  while ((wait_a != Wait::kNone || wait_b != Wait::kNone) && steady_clock::now() < deadline) {
    for (auto [hs, wait] : {std::pair{&a, &wait_a}, std::pair{&b, &wait_b}}) {
      if (*wait == Wait::kNone) continue;
      auto step = hs->Step();
      if (!step.ok()) return step.error();
      *wait = *step;
    }
    pollfd fds[2] = {{a.fd(), static_cast<short>(wait_a == Wait::kWritable ? POLLOUT : POLLIN), 0},
                     {b.fd(), static_cast<short>(wait_b == Wait::kWritable ? POLLOUT : POLLIN), 0}};
    (void)::poll(fds, 2, 100);
  }
  return std::nullopt;
}

TEST(PendingHandshakeTest, BothEndsOnOneThreadThenDataFlows) {
  SocketPair pair = LoopbackTcpPair();
  ASSERT_TRUE(pair.client.valid() && pair.server.valid());
  ServerConfig server_config = ServerFor();
  server_config.alpn = {"http/1.1"};
  auto context = ServerContext::Create(server_config);
  ASSERT_TRUE(context.ok()) << context.error().ToString();
  auto server_hs = context->StartHandshake(pair.server.release());
  ASSERT_TRUE(server_hs.ok());
  ClientConfig client_config = ClientFor();
  client_config.alpn = {"h2", "http/1.1"};
  auto client_hs = StartClientHandshake(pair.client.release(), "localhost", client_config);
  ASSERT_TRUE(client_hs.ok()) << client_hs.error().ToString();
  auto failed = DriveBoth(*client_hs, *server_hs);
  ASSERT_FALSE(failed.has_value()) << failed->ToString();
  auto server = server_hs->Finish();
  auto client = client_hs->Finish();
  ASSERT_TRUE(server.ok() && client.ok());
  EXPECT_EQ(server->session().alpn, "http/1.1");
  EXPECT_EQ(client->session().protocol, "TLSv1.3");

  const auto data = RandomBytes(1000);
  auto wrote = client->Write(std::as_bytes(std::span(data)));
  ASSERT_TRUE(wrote.ok());
  ASSERT_EQ(wrote->bytes, data.size());
  std::vector<std::uint8_t> got(data.size());
  std::size_t have = 0;
  while (have < got.size()) {
    auto read = server->Read(std::as_writable_bytes(std::span(got).subspan(have)));
    ASSERT_TRUE(read.ok()) << read.error().ToString();
    if (read->would_block) {
      EXPECT_EQ(read->wait, Wait::kReadable);
      pollfd pfd{server->fd(), POLLIN, 0};
      ASSERT_EQ(::poll(&pfd, 1, 5000), 1);
    }
    have += read->bytes;
  }
  EXPECT_EQ(got, data);
}

// Regression: the server wrote its handshake flight with OpenSSL's own
// socket BIO (write(2)), so a client gone mid-handshake raised SIGPIPE and
// killed the whole server. SIGPIPE keeps its default action here, so this
// test dies if it comes back.
TEST(PendingHandshakeTest, ClientGoneMidHandshakeIsAnErrorNotSigpipe) {
  ASSERT_EQ(::signal(SIGPIPE, SIG_DFL), SIG_DFL) << "something set SIGPIPE's action; the test would prove nothing";
  SocketPair pair = LoopbackTcpPair();
  ASSERT_TRUE(pair.client.valid() && pair.server.valid());
  auto context = ServerContext::Create(ServerFor());
  ASSERT_TRUE(context.ok());
  auto server_hs = context->StartHandshake(pair.server.release());
  ASSERT_TRUE(server_hs.ok());
  auto client_hs = StartClientHandshake(pair.client.release(), "localhost", ClientFor());
  ASSERT_TRUE(client_hs.ok());
  auto sent = client_hs->Step();  // The ClientHello goes out.
  ASSERT_TRUE(sent.ok());
  ASSERT_EQ(*sent, Wait::kReadable);
  // Writing on a socket that cannot send any more is what a vanished client
  // looks like to the writer (EPIPE); shutting our side makes it certain.
  ASSERT_EQ(::shutdown(server_hs->fd(), SHUT_WR), 0);
  std::optional<Error> failure;
  for (int i = 0; i < 50 && !failure; ++i) {
    auto step = server_hs->Step();
    if (!step.ok()) failure = step.error();
    pollfd pfd{server_hs->fd(), POLLIN, 0};
    (void)::poll(&pfd, 1, 20);
  }
  ASSERT_TRUE(failure.has_value()) << "the server's handshake did not notice the client was gone";
  EXPECT_EQ(failure->sys_errno, EPIPE) << failure->ToString();
}

// A client that closes in the middle of its ClientHello: the blocking
// handshake says the peer closed (kTruncated, not the EAGAIN of an earlier
// read), and answers with decode_error, as OpenSSL's socket BIO does.
TEST(PendingHandshakeTest, AClientClosingMidHandshakeIsTruncationAndGetsDecodeError) {
  SocketPair pair = LoopbackTcpPair();
  ASSERT_TRUE(pair.client.valid() && pair.server.valid());
  auto context = ServerContext::Create(ServerFor());
  ASSERT_TRUE(context.ok()) << context.error().ToString();
  std::thread client([fd = pair.client.get()] {
    // Nothing there at first: the server's first read would block.
    std::this_thread::sleep_for(milliseconds(100));
    const unsigned char cut[] = {22, 3, 1, 0, 100, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    (void)::send(fd, cut, sizeof(cut), MSG_NOSIGNAL);
    ::shutdown(fd, SHUT_WR);
  });
  auto conn = context->Handshake(pair.server.release());
  client.join();
  ASSERT_FALSE(conn.ok());
  EXPECT_EQ(conn.error().category, ErrorCategory::kTruncated) << conn.error().ToString();
  unsigned char alert[16] = {};
  ASSERT_TRUE(SetIoTimeout(pair.client.get(), milliseconds(5000)));
  const ssize_t n = ::recv(pair.client.get(), alert, sizeof(alert), MSG_WAITALL);
  ASSERT_EQ(n, 7);
  const unsigned char decode_error[] = {21, 3, 3, 0, 2, 2, 50};
  EXPECT_EQ(std::memcmp(alert, decode_error, sizeof(decode_error)), 0);
}

// A TLS 1.3 client that resets the connection right after its Finished:
// the server's session tickets cannot go out, and OpenSSL 3.0 ignores that
// (what the client sent before it closed can still be read), so the
// handshake still completes.
TEST(PendingHandshakeTest, TicketsAClientThatResetCannotTakeDoNotFailTheHandshake) {
  SocketPair pair = LoopbackTcpPair();
  ASSERT_TRUE(pair.client.valid() && pair.server.valid());
  auto context = ServerContext::Create(ServerFor());
  ASSERT_TRUE(context.ok()) << context.error().ToString();
  auto server_hs = context->StartHandshake(pair.server.release());
  ASSERT_TRUE(server_hs.ok());
  auto client_hs = StartClientHandshake(pair.client.release(), "localhost", ClientFor());
  ASSERT_TRUE(client_hs.ok()) << client_hs.error().ToString();
  const auto step_until = [](PendingHandshake& hs, Wait want) {
    for (int i = 0; i < 100; ++i) {
      auto step = hs.Step();
      if (!step.ok()) return step.error().ToString();
      if (*step == want) return std::string();
      pollfd pfd{hs.fd(), static_cast<short>(*step == Wait::kReadable ? POLLIN : POLLOUT), 0};
      (void)::poll(&pfd, 1, 100);
    }
    return std::string("no progress");
  };
  ASSERT_EQ(step_until(*client_hs, Wait::kReadable), "");  // The ClientHello.
  ASSERT_EQ(step_until(*server_hs, Wait::kReadable), "");  // The flight; waits for the Finished.
  ASSERT_EQ(step_until(*client_hs, Wait::kNone), "");      // The Finished.
  const linger reset{1, 0};
  ASSERT_EQ(::setsockopt(client_hs->fd(), SOL_SOCKET, SO_LINGER, &reset, sizeof(reset)), 0);
  { PendingHandshake gone = std::move(*client_hs); }  // Closes its socket: a reset.
  auto done = server_hs->Step();
  ASSERT_TRUE(done.ok()) << done.error().ToString();
  EXPECT_EQ(*done, Wait::kNone);
}

TEST(PendingHandshakeTest, UntrustedServerFailsTheClientStepWithTheReason) {
  SocketPair pair = LoopbackTcpPair();
  ASSERT_TRUE(pair.client.valid() && pair.server.valid());
  auto context = ServerContext::Create(ServerFor());
  ASSERT_TRUE(context.ok());
  auto server_hs = context->StartHandshake(pair.server.release());
  ASSERT_TRUE(server_hs.ok());
  ClientConfig client_config = ClientFor();
  client_config.ca_file.clear();  // The system store, which does not know TestCert.
  auto client_hs = StartClientHandshake(pair.client.release(), "localhost", client_config);
  ASSERT_TRUE(client_hs.ok());
  auto failed = DriveBoth(*client_hs, *server_hs);
  ASSERT_TRUE(failed.has_value());
  EXPECT_NE(failed->detail.find("certificate verification failed"), std::string::npos) << failed->ToString();
}

}  // namespace
}  // namespace ktls::testing
