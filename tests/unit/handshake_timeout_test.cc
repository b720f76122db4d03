// The handshake timeout bounds the whole handshake, for the Listener and for
// Connect: a peer that says nothing, or that trickles its bytes in one at a
// time (each well within the timeout), is dropped with ETIMEDOUT. These
// fail before any offload, so they run on any host.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "ktls/client.h"
#include "ktls/server.h"
#include "tests/support/sockets.h"
#include "tests/support/tls_peers.h"

namespace ktls::testing {
namespace {

constexpr std::chrono::milliseconds kHandshakeTimeout{300};
// A trickling peer sends one byte this often: each read succeeds well within
// the timeout, so only a deadline for the whole handshake can end it.
constexpr std::chrono::milliseconds kTrickleInterval{50};
// The trickler gives up after this long: a handshake still going then was
// never going to time out.
constexpr std::chrono::milliseconds kTrickleGiveUp = 20 * kHandshakeTimeout;

// The start of a handshake record that announces 16 KiB: the receiving
// OpenSSL waits for all of it.
const std::vector<std::uint8_t> kLongRecordHeader = {22, 3, 1, 0x40, 0x00};


// Trickle sends kLongRecordHeader, then a byte every kTrickleInterval until
// the peer closes the connection. Returns false if it had to give up.
bool Trickle(int fd) {
  if (!WriteAll(fd, kLongRecordHeader)) return false;
  const auto give_up = std::chrono::steady_clock::now() + kTrickleGiveUp;
  while (std::chrono::steady_clock::now() < give_up) {
    pollfd pfd{fd, POLLIN, 0};
    if (::poll(&pfd, 1, static_cast<int>(kTrickleInterval.count())) > 0) {
      std::uint8_t discard[4096];
      const ssize_t n = ::recv(fd, discard, sizeof(discard), 0);
      if (n <= 0) return true;  // Closed (or reset): dropped.
      continue;                 // The peer's own handshake bytes.
    }
    const std::uint8_t byte = 0;
    if (::send(fd, &byte, 1, MSG_NOSIGNAL) != 1) return true;
  }
  return false;
}

void ExpectTimedOut(const Error& error) {
  EXPECT_EQ(error.category, ErrorCategory::kIo) << error.ToString();
  EXPECT_EQ(error.sys_errno, ETIMEDOUT) << error.ToString();
  EXPECT_NE(error.detail.find("timed out"), std::string::npos) << error.ToString();
}

class ListenerHandshakeTimeout : public ::testing::Test {
 protected:
  void SetUp() override {
    ServerConfig config = ServerFor();
    config.handshake_timeout = kHandshakeTimeout;
    auto listener = Listener::Listen("127.0.0.1:0", config);
    ASSERT_TRUE(listener.ok()) << listener.error().ToString();
    listener_.emplace(std::move(listener).value());
  }

  // Handshake runs Accept on a thread while client() plays its part.
  template <typename Client>
  Error Handshake(Client client) {
    std::optional<Result<Connection>> accepted;
    std::thread server([&] { accepted.emplace(listener_->Accept()); });
    UniqueFd fd = ConnectLoopback(static_cast<std::uint16_t>(listener_->port()));
    EXPECT_TRUE(fd.valid());
    client(fd.get());
    server.join();
    if (accepted->ok()) {
      ADD_FAILURE() << "the handshake should have failed";
      return Error{};
    }
    return accepted->error();
  }

  std::optional<Listener> listener_;
};

TEST_F(ListenerHandshakeTimeout, SilentClientIsDropped) {
  const Error error = Handshake([](int fd) {
    pollfd pfd{fd, POLLIN, 0};
    EXPECT_EQ(::poll(&pfd, 1, static_cast<int>(kTrickleGiveUp.count())), 1) << "the server should close";
  });
  ExpectTimedOut(error);
}

TEST_F(ListenerHandshakeTimeout, TricklingClientIsDroppedAtTheDeadline) {
  const Error error = Handshake([](int fd) {
    EXPECT_TRUE(Trickle(fd)) << "the server was still reading after " << kTrickleGiveUp.count() << " ms";
  });
  ExpectTimedOut(error);
}

TEST(ConnectHandshakeTimeout, TricklingServerIsDroppedAtTheDeadline) {
  UniqueFd listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(listener.get(), 1), 0);
  ASSERT_EQ(::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&addr), &len), 0);
  bool dropped = false;
  std::thread server([&] {
    UniqueFd fd(::accept(listener.get(), nullptr, nullptr));
    if (fd) dropped = Trickle(fd.get());
  });
  ClientConfig config = ClientFor();
  config.handshake_timeout = kHandshakeTimeout;
  auto conn = Connect("127.0.0.1", ntohs(addr.sin_port), config);
  server.join();
  EXPECT_TRUE(dropped) << "the client was still reading after " << kTrickleGiveUp.count() << " ms";
  ASSERT_FALSE(conn.ok()) << "the handshake should have failed";
  ExpectTimedOut(conn.error());
}

}  // namespace
}  // namespace ktls::testing
