// Kernel tests: the non-blocking API (PendingHandshake, and Connection on a
// non-blocking socket) in every offload state, driven by a single-threaded
// poll loop. With both ends on one thread, any call that blocked would hang
// the test (the watchdog fails it), so finishing at all proves nothing
// blocks; the tests also check the waits the calls ask for, that partial
// writes and partial sendfile are counted exactly, and /proc/net/tls_stat.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>

#include <chrono>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "kernel/tls_uapi.h"
#include "ktls/handshake.h"
#include "ktls/server.h"
#include "tests/support/fault_syscalls.h"
#include "tests/support/kernel_env.h"
#include "tests/support/offload_shape.h"
#include "tests/support/sockets.h"
#include "tests/support/tls_peers.h"

namespace ktls::testing {
namespace {

constexpr int kSmallSocketBuffer = 32 * 1024;  // So that writes block soon.

short PollEvents(Wait wait) { return wait == Wait::kWritable ? POLLOUT : POLLIN; }

// WaitBoth polls two sockets for what each asks (kNone: not at all), at
// most a second; the caller loops until its own deadline.
void WaitBoth(int fd_a, Wait a, int fd_b, Wait b) {
  pollfd fds[2] = {{fd_a, a == Wait::kNone ? short{0} : PollEvents(a), 0},
                   {fd_b, b == Wait::kNone ? short{0} : PollEvents(b), 0}};
  (void)::poll(fds, 2, 1000);
}

// Connected non-blocking client socket and the server's accepted socket.
struct RawPair {
  UniqueFd client;
  UniqueFd server;
};

RawPair ConnectNonBlocking() {
  RawPair pair;
  UniqueFd listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(listener.get(), 1) != 0 ||
      ::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    return pair;
  }
  pair.client.reset(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  for (int fd : {pair.client.get(), listener.get()}) {
    ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &kSmallSocketBuffer, sizeof(kSmallSocketBuffer));
    ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &kSmallSocketBuffer, sizeof(kSmallSocketBuffer));
  }
  const int rc = ::connect(pair.client.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  if (rc != 0 && errno != EINPROGRESS) return RawPair{};
  pair.server.reset(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  return pair;
}

class NonBlockingKernelTest : public OffloadShapeTest {
 protected:
  // Handshake runs both handshakes on this thread and offloads both ends.
  void Handshake() {
    RawPair pair = ConnectNonBlocking();
    ASSERT_TRUE(pair.client.valid() && pair.server.valid()) << std::strerror(errno);
    client_token_ = dog_.Watch(pair.client.get());
    server_token_ = dog_.Watch(pair.server.get());

    ServerConfig server_config = ServerFor();
    server_config.offload = Options();
    auto context = ServerContext::Create(server_config);
    ASSERT_TRUE(context.ok()) << context.error().ToString();
    auto server_hs = context->StartHandshake(pair.server.release());
    ASSERT_TRUE(server_hs.ok()) << server_hs.error().ToString();
    ClientConfig client_config = ClientFor();
    client_config.offload = Options();
    auto client_hs = StartClientHandshake(pair.client.release(), "localhost", client_config);
    ASSERT_TRUE(client_hs.ok()) << client_hs.error().ToString();

    Wait client_wait = Wait::kReadable;
    Wait server_wait = Wait::kReadable;
    bool client_ever_waited = false;
    bool client_first_step = true;
    const auto deadline = std::chrono::steady_clock::now() + kIoTimeout;
    while ((client_wait != Wait::kNone || server_wait != Wait::kNone) && std::chrono::steady_clock::now() < deadline) {
      if (client_wait != Wait::kNone) {
        auto step = client_hs->Step();
        ASSERT_TRUE(step.ok()) << "client: " << step.error().ToString();
        client_wait = *step;
        // The ClientHello went out; the answer cannot be here yet, since the
        // server has not run: a blocking call would have hung here.
        if (client_first_step) EXPECT_EQ(client_wait, Wait::kReadable);
        client_first_step = false;
        client_ever_waited |= client_wait != Wait::kNone;
      }
      if (server_wait != Wait::kNone) {
        auto step = server_hs->Step();
        ASSERT_TRUE(step.ok()) << "server: " << step.error().ToString();
        server_wait = *step;
      }
      WaitBoth(client_hs->fd(), client_wait, server_hs->fd(), server_wait);
    }
    ASSERT_EQ(client_wait, Wait::kNone) << "the handshake did not finish";
    ASSERT_EQ(server_wait, Wait::kNone) << "the handshake did not finish";
    EXPECT_TRUE(client_ever_waited);

    auto server = server_hs->Finish();
    ASSERT_TRUE(server.ok()) << server.error().ToString();
    auto client = client_hs->Finish();
    ASSERT_TRUE(client.ok()) << client.error().ToString();
    server_.emplace(std::move(server).value());
    client_.emplace(std::move(client).value());
    ExpectOffloaded(server_->tx(), server_->rx(), WantTx(), WantRx(), "server");
    ExpectOffloaded(client_->tx(), client_->rx(), WantTx(), WantRx(), "client");
    EXPECT_NE(::fcntl(server_->fd(), F_GETFL) & O_NONBLOCK, 0) << "the Connection's socket must stay non-blocking";
  }

  // Shutdown: both ends send close_notify and read the other's.
  void ShutdownBoth() {
    bool client_eos = false;
    bool server_eos = false;
    ASSERT_TRUE(client_->Shutdown().ok());
    ASSERT_TRUE(server_->Shutdown().ok());
    std::array<std::byte, 256> buf;
    const auto deadline = std::chrono::steady_clock::now() + kIoTimeout;
    while (!(client_eos && server_eos) && std::chrono::steady_clock::now() < deadline) {
      for (auto [conn, eos] : {std::pair{&*client_, &client_eos}, std::pair{&*server_, &server_eos}}) {
        if (*eos) continue;
        auto got = conn->Read(buf);
        ASSERT_TRUE(got.ok()) << got.error().ToString();
        ASSERT_EQ(got->bytes, 0u) << "data after everything was read";
        *eos = got->end_of_stream;
      }
      WaitBoth(client_->fd(), client_eos ? Wait::kNone : Wait::kReadable, server_->fd(),
               server_eos ? Wait::kNone : Wait::kReadable);
    }
    EXPECT_TRUE(client_eos && server_eos) << "close_notify did not arrive";
  }

  Watchdog dog_{kTestDeadline};
  int client_token_ = -1;
  int server_token_ = -1;
  std::optional<Connection> client_;
  std::optional<Connection> server_;
};

TEST_P(NonBlockingKernelTest, EchoWithPartialWritesOnOneThread) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  const auto stats_before = ReadTlsStat();
  ASSERT_NO_FATAL_FAILURE(Handshake());

  // The client writes everything while the server echoes it back, all on
  // this thread: the client's writes come back short or blocked (the small
  // socket buffers fill while the server is not reading), a blocked one
  // saying to wait for POLLOUT, and every byte arrives once, in order.
  const std::vector<std::uint8_t> data = RandomBytes(3 * 1024 * 1024 + 777);
  std::vector<std::uint8_t> echoed;
  std::vector<std::uint8_t> server_pending;  // Read by the server, not yet echoed.
  std::size_t client_sent = 0;
  std::size_t server_received = 0;
  int client_short_writes = 0;
  std::array<std::byte, 64 * 1024> buf;
  // Halfway, the client updates its keys and asks the server to do the
  // same: the server's non-blocking Read must follow and answer it. Where
  // a direction is in a kernel that cannot rekey (6.1), that would end the
  // connection instead (the key-update tests cover it).
  const bool can_rekey = CachedCapabilities().rekey || GetParam() == OffloadShape::kNeither;
  bool updated = false;
  const auto deadline = std::chrono::steady_clock::now() + kIoTimeout;
  while (echoed.size() < data.size() && std::chrono::steady_clock::now() < deadline) {
    Wait client_wait = Wait::kReadable;
    Wait server_wait = Wait::kReadable;
    if (can_rekey && !updated && client_sent > data.size() / 2) {
      auto update = client_->UpdateKeys(/*request_peer_update=*/true);
      ASSERT_TRUE(update.ok()) << update.error().ToString();
      updated = true;
    }
    if (client_sent < data.size()) {
      auto wrote = client_->Write(std::as_bytes(std::span(data).subspan(client_sent)));
      ASSERT_TRUE(wrote.ok()) << wrote.error().ToString();
      client_sent += wrote->bytes;
      if (client_sent < data.size()) ++client_short_writes;  // Partial, or blocked.
      if (wrote->would_block) {
        ASSERT_EQ(wrote->bytes, 0u);
        ASSERT_EQ(wrote->wait, Wait::kWritable);
        client_wait = Wait::kWritable;
      }
    }
    auto got = server_->Read(buf);
    ASSERT_TRUE(got.ok()) << got.error().ToString();
    ASSERT_FALSE(got->end_of_stream);
    server_received += got->bytes;
    server_pending.insert(server_pending.end(), reinterpret_cast<std::uint8_t*>(buf.data()),
                          reinterpret_cast<std::uint8_t*>(buf.data()) + got->bytes);
    if (got->would_block) server_wait = got->wait;
    if (!server_pending.empty()) {
      auto wrote = server_->Write(std::as_bytes(std::span(server_pending)));
      ASSERT_TRUE(wrote.ok()) << wrote.error().ToString();
      server_pending.erase(server_pending.begin(), server_pending.begin() + static_cast<std::ptrdiff_t>(wrote->bytes));
      if (wrote->would_block) server_wait = Wait::kWritable;
    }
    auto back = client_->Read(buf);
    ASSERT_TRUE(back.ok()) << back.error().ToString();
    echoed.insert(echoed.end(), reinterpret_cast<std::uint8_t*>(buf.data()),
                  reinterpret_cast<std::uint8_t*>(buf.data()) + back->bytes);
    if (back->bytes == 0 && back->would_block) WaitBoth(client_->fd(), client_wait, server_->fd(), server_wait);
  }
  ASSERT_EQ(echoed.size(), data.size()) << "timed out";
  EXPECT_TRUE(echoed == data) << "the echo differs";
  EXPECT_GT(client_short_writes, 0) << "every write went out whole: the test proves nothing";
  if (can_rekey) {
    EXPECT_EQ(client_->tx_key_updates(), 1u);
    EXPECT_EQ(server_->rx_key_updates(), 1u) << "the server's Read did not follow the KeyUpdate";
    EXPECT_EQ(server_->tx_key_updates(), 1u) << "the server did not answer update_requested";
    EXPECT_EQ(client_->rx_key_updates(), 1u);
  }
  ASSERT_NO_FATAL_FAILURE(ShutdownBoth());

  const auto stats_after = ReadTlsStat();
  const auto delta = [&](const char* name) { return stats_after.at(name) - stats_before.at(name); };
  EXPECT_EQ(delta("TlsTxSw"), WantTx() == Offload::kKernel ? 2 : 0);
  EXPECT_EQ(delta("TlsRxSw"), WantRx() == Offload::kKernel ? 2 : 0);
  EXPECT_EQ(delta("TlsDecryptError"), 0);
}

TEST_P(NonBlockingKernelTest, SendFileReportsPartialProgressExactly) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  ASSERT_NO_FATAL_FAILURE(Handshake());
  const std::size_t file_len = 5 * 1024 * 1024 + 4321;
  TempFile file(file_len);
  ASSERT_TRUE(file.ok());

  // The server sends the file from offset 1000 on; the client reads, on
  // the same thread, so the server's sendfile keeps running out of room.
  const off_t start = 1000;
  const std::size_t want = file_len - static_cast<std::size_t>(start);
  std::size_t sent = 0;
  int short_or_blocked = 0;
  std::vector<std::uint8_t> received;
  std::array<std::byte, 64 * 1024> buf;
  const auto deadline = std::chrono::steady_clock::now() + kIoTimeout;
  while (received.size() < want && std::chrono::steady_clock::now() < deadline) {
    Wait server_wait = Wait::kNone;
    if (sent < want) {
      auto n = server_->SendFile(file.fd(), start + static_cast<off_t>(sent), want - sent);
      ASSERT_TRUE(n.ok()) << n.error().ToString();
      ASSERT_LE(n->bytes, want - sent);
      sent += n->bytes;
      if (n->would_block) {
        ASSERT_EQ(n->wait, Wait::kWritable);
        server_wait = Wait::kWritable;
      }
      if (n->would_block || sent < want) ++short_or_blocked;
    }
    auto got = client_->Read(buf);
    ASSERT_TRUE(got.ok()) << got.error().ToString();
    received.insert(received.end(), reinterpret_cast<std::uint8_t*>(buf.data()),
                    reinterpret_cast<std::uint8_t*>(buf.data()) + got->bytes);
    if (got->bytes == 0 && got->would_block) WaitBoth(client_->fd(), Wait::kReadable, server_->fd(), server_wait);
  }
  ASSERT_EQ(received.size(), want) << "timed out";
  EXPECT_EQ(Sha256Hex(received), Sha256Hex(file.Slice(static_cast<std::size_t>(start), want)));
  EXPECT_GT(short_or_blocked, 0) << "sendfile never stopped short: the test proves nothing";
  ASSERT_NO_FATAL_FAILURE(ShutdownBoth());
}

// A client that vanishes in the middle of a sendfile: the server's next
// SendFile fails with a named error (ECONNRESET, or EPIPE, where sendfile(2)
// also raises SIGPIPE, ignored here as SendFile's documentation asks).
TEST_P(NonBlockingKernelTest, PeerGoneMidSendFileIsANamedError) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  ASSERT_NO_FATAL_FAILURE(Handshake());
  TempFile file(4 * 1024 * 1024);
  ASSERT_TRUE(file.ok());
  // The client reads a little, then resets the connection.
  std::size_t sent = 0;
  std::array<std::byte, 16 * 1024> buf;
  for (int i = 0; i < 1000 && sent < 256 * 1024; ++i) {
    auto n = server_->SendFile(file.fd(), static_cast<off_t>(sent), file.contents().size() - sent);
    ASSERT_TRUE(n.ok()) << n.error().ToString();
    sent += n->bytes;
    (void)client_->Read(buf);
    WaitBoth(client_->fd(), Wait::kReadable, server_->fd(), Wait::kWritable);
  }
  const linger reset{1, 0};
  ASSERT_EQ(::setsockopt(client_->fd(), SOL_SOCKET, SO_LINGER, &reset, sizeof(reset)), 0);
  dog_.Forget(client_token_);  // The watchdog's dup would keep the socket open.
  client_->Close();
  std::optional<Error> failure;
  const auto deadline = std::chrono::steady_clock::now() + kIoTimeout;
  while (!failure && std::chrono::steady_clock::now() < deadline) {
    auto n = server_->SendFile(file.fd(), static_cast<off_t>(sent % file.contents().size()), 64 * 1024);
    if (!n.ok()) {
      failure = n.error();
      break;
    }
    sent += n->bytes;
    if (n->would_block) WaitBoth(-1, Wait::kNone, server_->fd(), Wait::kWritable);
  }
  ASSERT_TRUE(failure.has_value()) << "SendFile to a reset connection kept succeeding";
  EXPECT_EQ(failure->category, ErrorCategory::kIo) << failure->ToString();
  EXPECT_TRUE(failure->sys_errno == EPIPE || failure->sys_errno == ECONNRESET) << failure->ToString();
}

// On a socket that can no longer send (its write side shut behind the
// Connection's back), kTLS returns counts for records it cannot push; ktls
// must report EPIPE instead of bytes that went nowhere, for Write and
// SendFile alike.
TEST_P(NonBlockingKernelTest, SendsOnASocketThatCannotSendAreErrors) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  for (bool use_sendfile : {false, true}) {
    SCOPED_TRACE(use_sendfile ? "SendFile" : "Write");
    ASSERT_NO_FATAL_FAILURE(Handshake());
    ASSERT_EQ(::shutdown(server_->fd(), SHUT_WR), 0);
    const std::vector<std::uint8_t> data = RandomBytes(64 * 1024);
    TempFile file(64 * 1024);
    ASSERT_TRUE(file.ok());
    auto n = use_sendfile ? server_->SendFile(file.fd(), 0, file.contents().size())
                          : server_->Write(std::as_bytes(std::span(data)));
    ASSERT_FALSE(n.ok()) << "reported " << n->bytes << " bytes sent on a shut socket";
    EXPECT_EQ(n.error().sys_errno, EPIPE) << n.error().ToString();
  }
}

// A WriteFlags::kMore piece that fills no record pushes nothing, so ktls
// does not look at the TCP state for it (one check per response): the
// piece is taken, and the write that pushes the record reports the dead
// socket. A kMore piece that fills a record is checked at once.
TEST_P(NonBlockingKernelTest, PiecesOfAResponseOnASocketThatCannotSendEndInAnError) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  ASSERT_NO_FATAL_FAILURE(Handshake());
  ASSERT_EQ(::shutdown(server_->fd(), SHUT_WR), 0);
  const std::vector<std::uint8_t> head = RandomBytes(300);
  auto piece = server_->Write(std::as_bytes(std::span(head)), WriteFlags::kMore);
  ASSERT_TRUE(piece.ok()) << piece.error().ToString();
  EXPECT_EQ(piece->bytes, head.size());
  auto last = server_->Write(std::as_bytes(std::span(head)));
  ASSERT_FALSE(last.ok()) << "reported " << last->bytes << " bytes sent on a shut socket";
  EXPECT_EQ(last.error().sys_errno, EPIPE) << last.error().ToString();

  ASSERT_NO_FATAL_FAILURE(Handshake());
  ASSERT_EQ(::shutdown(server_->fd(), SHUT_WR), 0);
  const std::vector<std::uint8_t> big = RandomBytes(40 * 1024);  // Fills two records.
  auto full = server_->Write(std::as_bytes(std::span(big)), WriteFlags::kMore);
  ASSERT_FALSE(full.ok()) << "reported " << full->bytes << " bytes sent on a shut socket";
  EXPECT_EQ(full.error().sys_errno, EPIPE) << full.error().ToString();
}

INSTANTIATE_TEST_SUITE_P(Shapes, NonBlockingKernelTest,
                         AllOffloadShapes(), OffloadShapeName);

}  // namespace
}  // namespace ktls::testing
