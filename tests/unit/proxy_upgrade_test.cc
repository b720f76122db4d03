// Unit tests: the wire of ktls-proxy's SIGUSR2 hand-over (tools/ktls-proxy/
// upgrade.h) between processes, over an AF_UNIX socket pair: a relay whose
// part does not import ends only itself (the stream stays in step), a broken
// header or another sender's uid is an out-of-step kIo error, and the tags a
// --privsep worker reads first ('M' before a relay, kRecall) are told apart
// from a handshaken connection (whose first byte is 0). No kTLS needed: the
// connections that fail to import are what is tested.
#include "ktls-proxy/upgrade.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "common/privsep.h"
#include "ktls-proxy/endpoint.h"
#include "ktls-proxy/unique_fd.h"
#include "ktls/move.h"
#include "tests/support/sockets.h"

namespace ktls::proxy {
namespace {

struct UnixPair {
  UnixPair() { EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0); }
  ~UnixPair() {
    for (int fd : fds) {
      if (fd >= 0) ::close(fd);
    }
  }
  int fds[2] = {-1, -1};
};

bool IsOpen(int fd) { return ::fcntl(fd, F_GETFD) >= 0; }

int OpenFds() {
  int n = 0;
  for (int fd = 0; fd < 1024; ++fd) n += IsOpen(fd) ? 1 : 0;
  return n;
}

// OpenFdsOnceBackTo: OpenFds, once it is back to before or a generous
// deadline passed: what came from the other process and was refused is
// closed on a thread of its own (ktls::CloseWithoutWaiting), just after.
int OpenFdsOnceBackTo(int before) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  int now = OpenFds();
  while (now != before && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    now = OpenFds();
  }
  return now;
}

// SendMalformedConnection: what ktls::SendConnection sends (a 4-byte length,
// the state, the socket as SCM_RIGHTS), with a state no Import takes: the
// length's first byte carries the socket.
void SendMalformedConnection(int sock, int fd) {
  ASSERT_TRUE(tools::SendFd(sock, fd, 0));
  std::vector<char> rest = {0, 0, 16};
  rest.resize(3 + 16, 0x5a);
  ASSERT_EQ(::send(sock, rest.data(), rest.size(), 0), static_cast<ssize_t>(rest.size()));
}

// SendBackendAndHeader: a relay's backend (a plain socket) and its header,
// by SendRelay itself, which then fails on the (empty) client connection.
void SendBackendAndHeader(int sock, int backend_fd) {
  Endpoint backend = Endpoint::Plain(UniqueFd(::dup(backend_fd)));
  ktls::Connection no_client;
  bool broken = false;
  const RelayCounts counts{.up = 5, .down = 7};
  auto sent = SendRelay(sock, counts, no_client, backend, broken);
  ASSERT_FALSE(sent.ok());
  EXPECT_TRUE(broken) << "the backend and the header went";
  EXPECT_FALSE(backend.open()) << "the other process has the backend's socket now";
}

TEST(ProxyUpgradeWire, ARelayThatDoesNotImportEndsOnlyItself) {
  auto tcp = testing::LoopbackTcpPair();
  UnixPair pair;
  const int before = OpenFds();
  SendBackendAndHeader(pair.fds[0], tcp.server.get());
  SendMalformedConnection(pair.fds[0], tcp.server.get());
  ASSERT_EQ(::send(pair.fds[0], &tools::kRecall, 1, 0), 1);  // What comes next.

  auto relay = ReceiveRelay(pair.fds[1], ::getuid(), /*backend_tls=*/false);
  ASSERT_FALSE(relay.ok());
  EXPECT_NE(relay.error().category, ErrorCategory::kIo) << relay.error().ToString();
  // Every descriptor that came is closed again, and the stream is in step:
  // the next byte is the one sent after the relay.
  EXPECT_EQ(OpenFdsOnceBackTo(before), before);
  EXPECT_TRUE(tools::TakeRecall(pair.fds[1]));
}

TEST(ProxyUpgradeWire, ARelayWhoseBackendDoesNotImportIsReadToItsEnd) {
  // --backend-tls: the backend's connection comes first; refused, the rest
  // of the relay (header, client) is still read, so the next one is found.
  auto tcp = testing::LoopbackTcpPair();
  UnixPair pair;
  const int before = OpenFds();
  SendMalformedConnection(pair.fds[0], tcp.server.get());
  // The header (upgrade.cc): 'C', the flags (1: the backend is TLS), five
  // 8-byte counts.
  std::vector<char> header(2 + 5 * 8, 0);
  header[0] = 'C';
  header[1] = 1;
  ASSERT_EQ(::send(pair.fds[0], header.data(), header.size(), 0), static_cast<ssize_t>(header.size()));
  SendMalformedConnection(pair.fds[0], tcp.server.get());
  ASSERT_EQ(::send(pair.fds[0], &tools::kRecall, 1, 0), 1);

  auto relay = ReceiveRelay(pair.fds[1], ::getuid(), /*backend_tls=*/true);
  ASSERT_FALSE(relay.ok());
  EXPECT_NE(relay.error().category, ErrorCategory::kIo) << relay.error().ToString();
  EXPECT_EQ(OpenFdsOnceBackTo(before), before);
  EXPECT_TRUE(tools::TakeRecall(pair.fds[1]));
}

TEST(ProxyUpgradeWire, ABrokenHeaderOrAnotherSenderIsOutOfStep) {
  auto tcp = testing::LoopbackTcpPair();
  {
    UnixPair pair;
    ASSERT_TRUE(tools::SendFd(pair.fds[0], tcp.server.get(), 'B'));
    const char junk[] = "not a relay's header at all, and far too long";
    ASSERT_EQ(::send(pair.fds[0], junk, sizeof(junk), 0), static_cast<ssize_t>(sizeof(junk)));
    auto relay = ReceiveRelay(pair.fds[1], ::getuid(), false);
    ASSERT_FALSE(relay.ok());
    EXPECT_EQ(relay.error().category, ErrorCategory::kIo) << relay.error().ToString();
  }
  {
    UnixPair pair;
    SendBackendAndHeader(pair.fds[0], tcp.server.get());
    auto relay = ReceiveRelay(pair.fds[1], ::getuid() + 1, false);
    ASSERT_FALSE(relay.ok());
    EXPECT_EQ(relay.error().category, ErrorCategory::kIo) << relay.error().ToString();
    EXPECT_NE(relay.error().detail.find("does not run as uid"), std::string::npos) << relay.error().detail;
  }
  {
    UnixPair pair;
    ::close(std::exchange(pair.fds[0], -1));
    auto relay = ReceiveRelay(pair.fds[1], ::getuid(), false);
    ASSERT_FALSE(relay.ok());
    EXPECT_EQ(relay.error().category, ErrorCategory::kClosed);
  }
}

TEST(ProxyUpgradeWire, TheWorkersTagsAreToldApartFromAHandshakenConnection) {
  UnixPair pair;
  // A handshaken connection starts with its length's first byte: 0.
  const char zero = 0;
  ASSERT_EQ(::send(pair.fds[0], &zero, 1, 0), 1);
  EXPECT_FALSE(TakeMovedTag(pair.fds[1]));
  EXPECT_FALSE(tools::TakeRecall(pair.fds[1]));
  char got = 1;
  ASSERT_EQ(::recv(pair.fds[1], &got, 1, MSG_DONTWAIT), 1) << "left for ReceiveConnection";
  EXPECT_EQ(got, 0);
  // A relay's tag: taken, and only by TakeMovedTag.
  ASSERT_EQ(::send(pair.fds[0], "M", 1, 0), 1);
  EXPECT_FALSE(tools::TakeRecall(pair.fds[1]));
  EXPECT_TRUE(TakeMovedTag(pair.fds[1]));
  EXPECT_EQ(::recv(pair.fds[1], &got, 1, MSG_DONTWAIT), -1) << "the tag was read";
  // Nothing to read: neither.
  EXPECT_FALSE(TakeMovedTag(pair.fds[1]));
}

TEST(ProxyUpgradeWire, AnAgeFromTheOtherProcessIsClampedSoNoTimeComputedFromItOverflows) {
  EXPECT_EQ(RelayAge(0), std::chrono::milliseconds(0));
  EXPECT_EQ(RelayAge(1234), std::chrono::milliseconds(1234));
  const auto max = static_cast<std::uint64_t>(kMaxRelayAge.count());
  EXPECT_EQ(RelayAge(max), kMaxRelayAge);
  // Beyond: a day in ns overflows from about 292 years, and a value past
  // INT64_MAX would be a negative age.
  for (const std::uint64_t wire : {max + 1, std::uint64_t{1} << 62, std::uint64_t{INT64_MAX},
                                   std::uint64_t{INT64_MAX} + 1, UINT64_MAX}) {
    EXPECT_EQ(RelayAge(wire), kMaxRelayAge) << wire;
  }
  // What ProxyConnection computes from it (its start, then its duration in
  // its line) stays in range.
  const auto now = ProxyConnection::Clock::now();
  const auto started = now - RelayAge(UINT64_MAX);
  EXPECT_LT(started, now);
  EXPECT_EQ(std::chrono::duration_cast<std::chrono::milliseconds>(now - started), kMaxRelayAge);
}

}  // namespace
}  // namespace ktls::proxy
