// tests/kernel/move_kernel_test.cc: moving a live connection, both
// directions in the kernel, with Connection::Export and Import (ktls/move.h),
// on the kernel the test runs on (6.1 cannot rekey; 7.2 can).
//
//  a. Within a process, mid-stream: after the move the same socket goes on
//     with reads, writes, sendfile, TLS 1.3 key updates both ways (where
//     the kernel can rekey) and close_notify; every byte checked (SHA-256);
//     /proc/net/tls_stat shows no second offload, and the old Connection
//     is empty.
//  b. To another process over an AF_UNIX socket (SendConnection,
//     ReceiveConnection with the sender's uid checked): the child echoes
//     on with splice, copying nothing; the parent holds nothing.
//  c. The AEAD limit is counted on from where it was: a connection moved
//     after two writes reaches the limit (a key update where the kernel can
//     rekey, the limit's error where it cannot) exactly where one that
//     never moved does.
//  d. A connection that cannot move (RX in OpenSSL) says why and goes on.
//  e. TLS 1.2 moves as well (no secrets travel: it has no key updates).
//  f. 500 connections moved to a child, one after another: no descriptor
//     left in the sender, none and no heap growth in the receiver.
//  g. After a move, a forged record gets bad_record_mac, as before it.
//  h. A state of another cipher than the socket's is refused, naming why;
//     the socket stays the caller's and the right state still imports.
//  i. TLS_RX_EXPECT_NO_PAD moves with the socket and is reported.
//  j. SendConnection with dont_wait to a receiver that is behind (its queue
//     full) sends nothing and says EAGAIN; the connection stays the
//     sender's, in the kernel, and moves once the receiver caught up.
//  k. A connection received from an untrusted_sender never waits on what
//     the sender sets from the copy it kept (O_NONBLOCK cleared, SO_LINGER
//     30 s, the send buffer full, its copy closed first): a read and a
//     write say would_block, and dropping it returns at once.
#include <fcntl.h>
#include <malloc.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "ktls/connection.h"
#include "ktls/move.h"
#include "ktls/probe.h"
#include "ktls/server.h"
#include "tests/support/kernel_env.h"
#include "tests/support/sockets.h"
#include "tests/support/tls_peers.h"

namespace ktls::testing {
namespace {

constexpr std::size_t kKiB = 1024;

std::span<const std::uint8_t> Text(const std::string& s) {
  return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

// MoveHere exports conn and imports it again as a new Connection, checking
// on the way that the old one is empty.
std::string MoveHere(Connection& conn) {
  auto exported = conn.Export();
  if (!exported.ok()) return "Export: " + exported.error().ToString();
  std::vector<std::byte> buf(16);
  auto after = conn.Read(buf);
  if (after.ok() || after.error().category != ErrorCategory::kUsage) return "the exported Connection still reads";
  if (conn.fd() != -1) return "the exported Connection still has a socket";
  auto imported = Connection::Import(exported->fd(), exported->state().bytes());
  if (!imported.ok()) return "Import: " + imported.error().ToString();
  exported->release_fd();
  conn = std::move(imported).value();
  if (conn.tx() != Offload::kKernel || conn.rx() != Offload::kKernel) return "imported not in the kernel";
  return "";
}

// SendFileAll sends the whole file.
std::string SendFileAll(Connection& conn, const TempFile& file) {
  std::size_t off = 0;
  while (off < file.contents().size()) {
    auto sent = conn.SendFile(file.fd(), static_cast<off_t>(off), file.contents().size() - off);
    if (!sent.ok()) return "SendFile: " + sent.error().ToString();
    if (sent->bytes == 0) return "SendFile made no progress";
    off += sent->bytes;
  }
  return "";
}

TEST(MoveKernelTest, MovedMidStreamGoesOnWithSendFileKeyUpdatesAndCloseNotify) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  const bool rekey = CachedCapabilities().rekey;
  const auto before = ReadTlsStat();
  const TempFile file(300 * kKiB + 7);
  ASSERT_TRUE(file.ok());
  std::uint64_t server_tx_updates = 0, server_rx_updates = 0;
  TestServer server(ServerFor(), 1, [&](Connection& conn, ServerEnd& end) {
    std::vector<std::uint8_t> hello;
    end.error = ReadExactly(conn, 5, hello);
    if (end.error.empty()) end.error = WriteAll(conn, hello);
    if (end.error.empty()) end.error = MoveHere(conn);
    if (end.error.empty() && rekey) {
      if (auto updated = conn.UpdateKeys(/*request_peer_update=*/true); !updated.ok()) {
        end.error = "UpdateKeys after the move: " + updated.error().ToString();
      }
    }
    if (end.error.empty()) end.error = SendFileAll(conn, file);
    if (end.error.empty()) Echo(conn, end);  // Until close_notify; then ours.
    server_tx_updates = conn.tx_key_updates();
    server_rx_updates = conn.rx_key_updates();
  });
  ASSERT_TRUE(server.ok()) << server.listen_error();
  auto conn = ConnectTo(server.port(), ClientFor());
  ASSERT_TRUE(conn.ok()) << conn.error().ToString();
  ExpectOffloaded(conn->tx(), conn->rx(), Offload::kKernel, Offload::kKernel, "the client");

  std::vector<std::uint8_t> hello, body, echoed;
  EXPECT_EQ(WriteAll(*conn, Text("hello")), "");
  EXPECT_EQ(ReadExactly(*conn, 5, hello), "");
  EXPECT_EQ(std::string(hello.begin(), hello.end()), "hello");
  EXPECT_EQ(ReadExactly(*conn, file.contents().size(), body), "");
  EXPECT_EQ(Sha256Hex(body), Sha256Hex(file.contents())) << "the file sent after the move";
  if (rekey) {
    auto updated = conn->UpdateKeys(/*request_peer_update=*/true);
    EXPECT_TRUE(updated.ok()) << updated.error().ToString();
  }
  const auto payload = RandomBytes(1024 * kKiB + 3);
  EXPECT_EQ(EchoThrough(*conn, payload, Pace::kLockstep, echoed), "");
  EXPECT_EQ(Sha256Hex(echoed), Sha256Hex(payload));
  const ServerEnd& end = server.Join()[0];
  EXPECT_EQ(end.error, "");
  EXPECT_EQ(end.bytes_in, payload.size());

  if (rekey) {
    // Each side updated once and answered the other's request once.
    EXPECT_EQ(server_tx_updates, 2u);
    EXPECT_EQ(server_rx_updates, 2u);
    EXPECT_EQ(conn->tx_key_updates(), 2u);
    EXPECT_EQ(conn->rx_key_updates(), 2u);
  }
  // Two connection ends, each offloaded once: the move installed nothing.
  EXPECT_EQ(TlsStatDelta(before, "TlsTxSw"), 2);
  EXPECT_EQ(TlsStatDelta(before, "TlsRxSw"), 2);
  EXPECT_EQ(TlsStatDelta(before, "TlsDecryptError"), 0);
}

// Receiver: a child process that receives connections, and the parent's
// end of the AF_UNIX socket to it.
struct Receiver {
  pid_t pid = -1;
  int sock = -1;
};

// ForkReceiver forks a child that runs body(its end of the socket) and
// exits with what body returns. Call it before any thread starts: the
// child runs library code. The probe runs first, so the child has it.
Receiver ForkReceiver(const std::function<int(int)>& body) {
  (void)CachedCapabilities();
  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) return {};
  const pid_t child = ::fork();
  if (child == 0) {
    ::close(pair[0]);
    ::_exit(body(pair[1]));
  }
  ::close(pair[1]);
  if (child < 0) {
    ::close(pair[0]);
    return {};
  }
  return {child, pair[0]};
}

TEST(MoveKernelTest, MovedToAnotherProcessEchoesThere) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  // The child receives one connection and echoes on it.
  const Receiver receiver = ForkReceiver([](int sock) {
    auto conn = ReceiveConnection(sock, {.peer_uid = ::getuid()});
    if (!conn.ok()) return 2;
    if (conn->tx() != Offload::kKernel || conn->rx() != Offload::kKernel) return 3;
    ServerEnd end;
    SpliceEcho(*conn, end);  // Kernel to pipe to kernel: nothing copied.
    conn->Close();
    return !end.error.empty() ? 4 : end.copied_in != 0 || end.copied_out != 0 ? 5 : 0;
  });
  ASSERT_GE(receiver.pid, 0);
  const pid_t child = receiver.pid;
  std::string send_error;
  TestServer server(ServerFor(), 1, [&](Connection& conn, ServerEnd& end) {
    std::vector<std::uint8_t> hello;
    end.error = ReadExactly(conn, 5, hello);
    if (end.error.empty()) end.error = WriteAll(conn, hello);
    if (!end.error.empty()) return;
    if (auto sent = SendConnection(receiver.sock, conn); !sent.ok()) {
      end.error = "SendConnection: " + sent.error().ToString();
    }
    if (conn.fd() != -1) end.error += " (the sender still holds the socket)";
  });
  ASSERT_TRUE(server.ok()) << server.listen_error();
  auto conn = ConnectTo(server.port(), ClientFor());
  ASSERT_TRUE(conn.ok()) << conn.error().ToString();
  std::vector<std::uint8_t> hello, echoed;
  EXPECT_EQ(WriteAll(*conn, Text("hello")), "");
  EXPECT_EQ(ReadExactly(*conn, 5, hello), "");
  EXPECT_EQ(server.Join()[0].error, "");
  const auto payload = RandomBytes(512 * kKiB + 1);
  EXPECT_EQ(EchoThrough(*conn, payload, Pace::kConcurrent, echoed), "") << "the child splices it back";
  EXPECT_EQ(Sha256Hex(echoed), Sha256Hex(payload));
  conn->Close();
  ::close(receiver.sock);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child status " << status;
}

TEST(MoveKernelTest, Tls12ConnectionMovesToo) {
  KTLS_REQUIRE_CIPHER_OR_SKIP(TlsVersion::kTls12, Cipher::kAes128Gcm);
  ServerConfig config = ServerFor();
  config.max_version = TlsVersion::kTls12;
  TestServer server(config, 1, [&](Connection& conn, ServerEnd& end) {
    end.error = MoveHere(conn);
    if (end.error.empty()) Echo(conn, end);
  });
  ASSERT_TRUE(server.ok()) << server.listen_error();
  auto conn = ConnectTo(server.port(), ClientFor());
  ASSERT_TRUE(conn.ok()) << conn.error().ToString();
  EXPECT_EQ(conn->session().protocol, "TLSv1.2");
  std::vector<std::uint8_t> echoed;
  const auto payload = RandomBytes(256 * kKiB + 5);
  EXPECT_EQ(EchoThrough(*conn, payload, Pace::kConcurrent, echoed), "");
  EXPECT_EQ(Sha256Hex(echoed), Sha256Hex(payload));
  EXPECT_EQ(server.Join()[0].error, "");
}

// WaitForClose keeps a server's socket open until the client closed it:
// closing first, with the client's bytes unread, would reset the
// connection and could destroy the alert before the client reads it.
void WaitForClose(const Connection& conn) {
  pollfd pfd{conn.fd(), POLLRDHUP, 0};
  const int timeout_ms = static_cast<int>(std::chrono::milliseconds(kTestDeadline).count());
  while (::poll(&pfd, 1, timeout_ms) < 0 && errno == EINTR) {
  }
}

// After a move the connection answers a forged record as before: the
// kernel fails to decrypt it, the new owner sends bad_record_mac (20) and
// fails the read; the peer reads that alert.
TEST(MoveKernelTest, ForgedRecordAfterAMoveGetsBadRecordMac) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  constexpr int kBadRecordMac = 20;
  std::optional<Error> server_error;
  TestServer server(ServerFor(), 1, [&](Connection& conn, ServerEnd& end) {
    std::vector<std::uint8_t> hello;
    end.error = ReadExactly(conn, 5, hello);
    if (end.error.empty()) end.error = MoveHere(conn);
    if (end.error.empty()) end.error = WriteAll(conn, hello);
    std::vector<std::byte> buf(64);
    auto got = conn.Read(buf);
    if (got.ok()) {
      end.error = "a forged record was read as data";
    } else {
      server_error = got.error();
    }
    WaitForClose(conn);
  });
  ASSERT_TRUE(server.ok()) << server.listen_error();
  // The client stays in OpenSSL, so that a send(2) on its socket puts
  // bytes on the wire as they are (kTLS TX would encrypt them).
  ClientConfig config = ClientFor();
  config.offload.tx = TxOffload::kOff;
  auto conn = ConnectTo(server.port(), config);
  ASSERT_TRUE(conn.ok()) << conn.error().ToString();
  std::vector<std::uint8_t> hello;
  EXPECT_EQ(WriteAll(*conn, Text("hello")), "");
  EXPECT_EQ(ReadExactly(*conn, 5, hello), "") << "answered after the move";
  // Application data under no key at all: 5 bytes of header, 32 of junk.
  std::vector<std::uint8_t> forged = {0x17, 0x03, 0x03, 0x00, 0x20};
  forged.resize(5 + 32, 0x5a);
  ASSERT_EQ(::send(conn->fd(), forged.data(), forged.size(), MSG_NOSIGNAL), static_cast<ssize_t>(forged.size()));
  std::vector<std::byte> buf(64);
  auto alert = conn->Read(buf);
  ASSERT_FALSE(alert.ok());
  EXPECT_EQ(alert.error().category, ErrorCategory::kAlert) << alert.error().ToString();
  EXPECT_EQ(alert.error().tls_alert, kBadRecordMac) << alert.error().ToString();
  conn->Close();
  EXPECT_EQ(server.Join()[0].error, "");
  ASSERT_TRUE(server_error.has_value());
  EXPECT_EQ(server_error->tls_alert, kBadRecordMac) << server_error->ToString();
}

// A state whose cipher is not the socket's: refused, naming why; the
// socket stays the caller's, and the real state still imports.
TEST(MoveKernelTest, StateOfAnotherCipherIsRefused) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  std::string refused;
  ServerConfig server_config = ServerFor();
  server_config.ciphersuites = "TLS_AES_128_GCM_SHA256";  // Its traffic secrets are as long as ChaCha20's.
  TestServer server(server_config, 1, [&](Connection& conn, ServerEnd& end) {
    auto exported = conn.Export();
    if (!exported.ok()) {
      end.error = "Export: " + exported.error().ToString();
      return;
    }
    std::vector<std::byte> other(exported->state().bytes().begin(), exported->state().bytes().end());
    other[8 + 2 + 4 + 1 + 2] = std::byte{2};  // The cipher: ChaCha20-Poly1305, not AES-128-GCM.
    auto wrong = Connection::Import(exported->fd(), other);
    if (wrong.ok()) {
      end.error = "a state of another cipher was imported";
      return;
    }
    refused = wrong.error().ToString();
    auto right = Connection::Import(exported->fd(), exported->state().bytes());
    if (!right.ok()) {
      end.error = "Import after a refused one: " + right.error().ToString();
      return;
    }
    exported->release_fd();
    conn = std::move(right).value();
    Echo(conn, end);
  });
  ASSERT_TRUE(server.ok()) << server.listen_error();
  ClientConfig config = ClientFor();
  auto conn = ConnectTo(server.port(), config);
  ASSERT_TRUE(conn.ok()) << conn.error().ToString();
  ASSERT_EQ(conn->session().cipher_suite, "TLS_AES_128_GCM_SHA256");
  std::vector<std::uint8_t> echoed;
  const auto payload = RandomBytes(10 * kKiB);
  EXPECT_EQ(EchoThrough(*conn, payload, Pace::kLockstep, echoed), "");
  EXPECT_EQ(Sha256Hex(echoed), Sha256Hex(payload));
  EXPECT_EQ(server.Join()[0].error, "");
  EXPECT_NE(refused.find("the socket is not the connection the state describes"), std::string::npos) << refused;
  EXPECT_NE(refused.find("TX"), std::string::npos) << refused;
}

// TLS_RX_EXPECT_NO_PAD is the socket's: it moves with it, and the imported
// Connection says so (where the kernel gets it right: 7.2, not 6.1).
TEST(MoveKernelTest, NoPadMovesWithTheSocket) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  ServerConfig config = ServerFor();
  config.offload.rx_expect_no_pad = true;
  bool before = false, after = false;
  TestServer server(config, 1, [&](Connection& conn, ServerEnd& end) {
    before = conn.kernel_state().rx_no_pad;
    end.error = MoveHere(conn);
    after = conn.kernel_state().rx_no_pad;
    if (end.error.empty()) Echo(conn, end);
  });
  ASSERT_TRUE(server.ok()) << server.listen_error();
  auto conn = ConnectTo(server.port(), ClientFor());
  ASSERT_TRUE(conn.ok()) << conn.error().ToString();
  std::vector<std::uint8_t> echoed;
  const auto payload = RandomBytes(100 * kKiB);
  EXPECT_EQ(EchoThrough(*conn, payload, Pace::kLockstep, echoed), "");
  EXPECT_EQ(Sha256Hex(echoed), Sha256Hex(payload));
  EXPECT_EQ(server.Join()[0].error, "");
  EXPECT_EQ(before, CachedCapabilities().rx_no_pad);
  EXPECT_EQ(after, before);
}

// OpenFds: how many descriptors this process has open.
int OpenFds() {
  int n = 0;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
    (void)entry;
    ++n;
  }
  return n;
}

constexpr int kManyMoves = 500;

// ServeOneByte: the receiving side of the many-moves test: the one-byte
// echo, then close_notify and close.
bool ServeOneByte(Connection& conn) {
  std::vector<std::byte> buf(16);
  auto got = conn.Read(buf);
  if (!got.ok() || got->bytes != 1) return false;
  if (!conn.WriteAll(std::span(buf).first(1)).ok() || !conn.Shutdown().ok()) return false;
  conn.Close();
  return true;
}

TEST(MoveKernelTest, FiveHundredMovesLeaveNoDescriptorOrMemoryBehind) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  // The child receives until the parent shuts its end, then reports its
  // descriptors and heap after the first 50 connections and at the end.
  const Receiver receiver = ForkReceiver([](int sock) {
    int served = 0, fds_early = 0;
    std::size_t heap_early = 0;
    for (;;) {
      auto conn = ReceiveConnection(sock, {.peer_uid = ::getuid()});
      if (!conn.ok()) {
        if (conn.error().category == ErrorCategory::kClosed) break;
        return 2;
      }
      if (!ServeOneByte(*conn)) return 3;
      if (++served == 50) {
        fds_early = OpenFds();
        heap_early = ::mallinfo2().uordblks;
      }
    }
    const std::string report = std::to_string(served) + " " + std::to_string(fds_early) + " " +
                               std::to_string(OpenFds()) + " " + std::to_string(heap_early) + " " +
                               std::to_string(::mallinfo2().uordblks) + "\n";
    return ::write(sock, report.data(), report.size()) == static_cast<ssize_t>(report.size()) ? 0 : 4;
  });
  ASSERT_GE(receiver.pid, 0);
  const pid_t child = receiver.pid;
  auto listener = Listener::Listen("127.0.0.1:0", ServerFor());
  ASSERT_TRUE(listener.ok()) << listener.error().ToString();
  const int fds_before = OpenFds();
  int clients_ok = 0;
  std::thread clients([&] {
    for (int i = 0; i < kManyMoves; ++i) {
      auto conn = ConnectTo(static_cast<std::uint16_t>(listener->port()), ClientFor());
      if (!conn.ok()) continue;
      std::vector<std::uint8_t> got;
      if (WriteAll(*conn, Text("x")).empty() && ReadToEnd(*conn, got).empty() && got.size() == 1) ++clients_ok;
    }
  });
  int moved = 0;
  std::string first_error;
  for (int i = 0; i < kManyMoves; ++i) {
    auto conn = listener->Accept();
    if (!conn.ok()) {
      if (first_error.empty()) first_error = "Accept: " + conn.error().ToString();
      continue;
    }
    if (auto sent = SendConnection(receiver.sock, *conn); !sent.ok()) {
      if (first_error.empty()) first_error = "SendConnection: " + sent.error().ToString();
      continue;
    }
    moved += conn->fd() == -1 ? 1 : 0;
  }
  clients.join();
  EXPECT_EQ(first_error, "");
  EXPECT_EQ(moved, kManyMoves);
  EXPECT_EQ(clients_ok, kManyMoves) << "every client got its byte back from the child";
  EXPECT_EQ(OpenFds(), fds_before) << "the sender keeps no descriptor of a connection it moved";
  ::shutdown(receiver.sock, SHUT_WR);
  std::string report(256, '\0');
  const ssize_t n = ::read(receiver.sock, report.data(), report.size());
  ::close(receiver.sock);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child status " << status;
  ASSERT_GT(n, 0);
  std::istringstream in(report.substr(0, static_cast<std::size_t>(n)));
  int served = 0, fds_early = 0, fds_late = 0;
  std::size_t heap_early = 0, heap_late = 0;
  in >> served >> fds_early >> fds_late >> heap_early >> heap_late;
  std::printf("receiver: %d connections; descriptors %d after 50, %d at the end; heap %zu, %zu bytes\n", served,
              fds_early, fds_late, heap_early, heap_late);
  EXPECT_EQ(served, kManyMoves);
  EXPECT_EQ(fds_late, fds_early) << "the receiver keeps no descriptor of a connection it closed";
  // 450 connections later: anything kept per connection would show.
  EXPECT_LT(heap_late, heap_early + 64 * kKiB) << "heap after 50 connections " << heap_early << ", after "
                                               << kManyMoves << " " << heap_late;
}

// LimitRun: what a server that writes one byte at a time under an AEAD
// limit of kLimit records saw.
struct LimitRun {
  int writes_ok = 0;
  std::uint64_t tx_key_updates = 0;
  std::string error;
  bool operator==(const LimitRun&) const = default;
};

constexpr std::uint64_t kLimit = 6;
constexpr int kWrites = 24;

LimitRun WriteUnderLimit(bool move_after_two) {
  LimitRun run;
  ServerConfig config = ServerFor();
  config.offload.key_update_after_records = kLimit;
  TestServer server(config, 1, [&](Connection& conn, ServerEnd& end) {
    for (int i = 0; i < kWrites; ++i) {
      if (move_after_two && i == 2) {
        if (std::string moved = MoveHere(conn); !moved.empty()) {
          end.error = moved;
          return;
        }
      }
      auto wrote = conn.Write(std::as_bytes(std::span("x", 1)));
      if (!wrote.ok()) {
        run.error = std::string(ErrorCategoryName(wrote.error().category));
        break;
      }
      ++run.writes_ok;
    }
    run.tx_key_updates = conn.tx_key_updates();
    if (run.error.empty()) end.error = ShutdownText(conn);
  });
  if (!server.ok()) {
    run.error = "listen: " + server.listen_error();
    return run;
  }
  auto conn = ConnectTo(server.port(), ClientFor());
  if (!conn.ok()) {
    run.error = "connect: " + conn.error().ToString();
    return run;
  }
  std::vector<std::uint8_t> got;
  (void)ReadToEnd(*conn, got);  // close_notify, or the limit's alert.
  if (got.size() != static_cast<std::size_t>(run.writes_ok)) {
    run.error += " (client got " + std::to_string(got.size()) + ")";
  }
  conn->Close();
  const std::string server_error = server.Join()[0].error;
  if (!server_error.empty()) run.error += " server: " + server_error;
  return run;
}

TEST(MoveKernelTest, AeadLimitCountsOnFromWhereItWas) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  const LimitRun stayed = WriteUnderLimit(false);
  const LimitRun moved = WriteUnderLimit(true);
  EXPECT_EQ(moved.writes_ok, stayed.writes_ok);
  EXPECT_EQ(moved.tx_key_updates, stayed.tx_key_updates);
  EXPECT_EQ(moved.error, stayed.error);
  if (CachedCapabilities().rekey) {
    EXPECT_EQ(stayed.writes_ok, kWrites);
    EXPECT_GT(stayed.tx_key_updates, 2u) << "a 1-byte write is a record: the limit comes every few writes";
  } else {
    EXPECT_LT(stayed.writes_ok, kWrites);
    EXPECT_EQ(stayed.error, "unsupported") << "the limit, where the kernel cannot rekey";
  }
}

TEST(MoveKernelTest, AReceiverThatIsBehindIsNotWaitedFor) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  int pair[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
  const int small = 4096;
  ASSERT_EQ(::setsockopt(pair[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)), 0);
  // The receiver takes nothing until its queue is full.
  const std::vector<char> junk(512, 'j');
  std::size_t queued = 0;
  for (;;) {
    const ssize_t n = ::send(pair[0], junk.data(), junk.size(), MSG_DONTWAIT);
    if (n < 0) {
      ASSERT_EQ(errno, EAGAIN);
      break;
    }
    queued += static_cast<std::size_t>(n);
  }
  ASSERT_GT(queued, 0u);
  Error behind;
  TestServer server(ServerFor(), 1, [&](Connection& conn, ServerEnd& end) {
    std::vector<std::uint8_t> hello;
    end.error = ReadExactly(conn, 5, hello);
    if (!end.error.empty()) return;
    if (auto sent = SendConnection(pair[0], conn, {.dont_wait = true}); sent.ok()) {
      end.error = "a connection went into a full queue";
      return;
    } else {
      behind = sent.error();
    }
    if (conn.fd() < 0 || conn.tx() != Offload::kKernel || conn.rx() != Offload::kKernel) {
      end.error = "after EAGAIN the connection is no longer the sender's, in the kernel";
      return;
    }
    end.error = WriteAll(conn, hello);  // Still this process's to use.
    if (!end.error.empty()) return;
    std::vector<char> drain(queued);  // The receiver catches up...
    if (!ReadExactly(pair[1], {reinterpret_cast<std::uint8_t*>(drain.data()), drain.size()})) {
      end.error = "draining the queue failed";
      return;
    }
    if (auto sent = SendConnection(pair[0], conn, {.dont_wait = true}); !sent.ok()) {  // ...and it moves.
      end.error = "SendConnection once the receiver caught up: " + sent.error().ToString();
      return;
    }
    auto moved = ReceiveConnection(pair[1], {.peer_uid = ::getuid()});
    if (!moved.ok()) {
      end.error = "ReceiveConnection: " + moved.error().ToString();
      return;
    }
    Echo(*moved, end);
  });
  ASSERT_TRUE(server.ok()) << server.listen_error();
  auto conn = ConnectTo(server.port(), ClientFor());
  ASSERT_TRUE(conn.ok()) << conn.error().ToString();
  std::vector<std::uint8_t> hello, echoed;
  EXPECT_EQ(WriteAll(*conn, Text("hello")), "");
  EXPECT_EQ(ReadExactly(*conn, 5, hello), "") << "answered by the sender after EAGAIN";
  const auto payload = RandomBytes(256 * kKiB);
  EXPECT_EQ(EchoThrough(*conn, payload, Pace::kConcurrent, echoed), "") << "echoed after the move";
  EXPECT_EQ(Sha256Hex(echoed), Sha256Hex(payload));
  conn->Close();
  EXPECT_EQ(server.Join()[0].error, "");
  EXPECT_EQ(behind.category, ErrorCategory::kIo) << behind.ToString();
  EXPECT_EQ(behind.sys_errno, EAGAIN) << behind.ToString();
  ::close(pair[0]);
  ::close(pair[1]);
}

TEST(MoveKernelTest, AConnectionFromAnUntrustedSenderNeverWaitsOnWhatTheSenderSetsLater) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  std::atomic<bool> finish = false;
  TestServer server(ServerFor(), 1, [&](Connection&, ServerEnd&) {
    // Reads nothing: what the client's socket sends fills its buffers.
    while (!finish) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  });
  ASSERT_TRUE(server.ok()) << server.listen_error();
  struct Finish {  // On every way out, before the server is joined.
    std::atomic<bool>& finish;
    ~Finish() { finish = true; }
  } finish_first{finish};
  ClientConfig config = ClientFor();
  config.offload.session_tickets = false;  // So that the client can move.
  auto conn = ConnectTo(server.port(), config);
  ASSERT_TRUE(conn.ok()) << conn.error().ToString();
  int pair[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
  const int senders_copy = ::dup(conn->fd());  // What a hostile sender keeps.
  ASSERT_GE(senders_copy, 0);
  auto sent = SendConnection(pair[0], *conn);
  ASSERT_TRUE(sent.ok()) << sent.error().ToString();
  auto held = ReceiveConnection(pair[1], {.peer_uid = ::getuid(), .untrusted_sender = true});
  ASSERT_TRUE(held.ok()) << held.error().ToString();
  // The sender undoes DistrustSocket from its copy, after it was applied.
  const int flags = ::fcntl(senders_copy, F_GETFL);
  ASSERT_EQ(::fcntl(senders_copy, F_SETFL, flags & ~O_NONBLOCK), 0);
  const linger lingering{1, 30};
  ASSERT_EQ(::setsockopt(senders_copy, SOL_SOCKET, SO_LINGER, &lingering, sizeof(lingering)), 0);
  const std::vector<char> junk(16 * kKiB, 'j');
  while (::send(senders_copy, junk.data(), junk.size(), MSG_DONTWAIT | MSG_NOSIGNAL) > 0) {
  }
  ASSERT_EQ(errno, EAGAIN) << "the send buffer should be full";
  ::close(senders_copy);  // The holder's copy is the last now.
  ASSERT_EQ(::fcntl(held->fd(), F_GETFL) & O_NONBLOCK, 0) << "O_NONBLOCK is shared: the sender cleared it";
  // Were the holder to wait, SO_RCVTIMEO / SO_SNDTIMEO would end a read or
  // a write after 20 s (and the linger after 30 s): far past the bound.
  ASSERT_TRUE(SetIoTimeout(held->fd(), std::chrono::seconds(20)));
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::byte> buf(64);
  auto read = held->Read(buf);
  ASSERT_TRUE(read.ok()) << read.error().ToString();
  EXPECT_TRUE(read->would_block);
  auto wrote = held->Write(std::as_bytes(std::span(junk)));
  ASSERT_TRUE(wrote.ok()) << wrote.error().ToString();
  EXPECT_TRUE(wrote->would_block);
  *held = Connection();  // Closes the socket, its last copy.
  const auto took = std::chrono::steady_clock::now() - start;
  EXPECT_LT(took, std::chrono::seconds(10)) << "the holder waited on the sender's settings";
  finish = true;
  EXPECT_EQ(server.Join()[0].error, "");
  ::close(pair[0]);
  ::close(pair[1]);
}

TEST(MoveKernelTest, ConnectionWithRxInOpenSslSaysWhyAndStaysUsable) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  ServerConfig config = ServerFor();
  config.offload.rx = RxOffload::kOff;
  std::string export_error;
  TestServer server(config, 1, [&](Connection& conn, ServerEnd& end) {
    auto exported = conn.Export();
    if (exported.ok()) {
      end.error = "Export of a connection with RX in OpenSSL succeeded";
      return;
    }
    export_error = exported.error().ToString();
    Echo(conn, end);
  });
  ASSERT_TRUE(server.ok()) << server.listen_error();
  auto conn = ConnectTo(server.port(), ClientFor());
  ASSERT_TRUE(conn.ok()) << conn.error().ToString();
  std::vector<std::uint8_t> echoed;
  const auto payload = RandomBytes(64 * kKiB);
  EXPECT_EQ(EchoThrough(*conn, payload, Pace::kLockstep, echoed), "");
  EXPECT_EQ(Sha256Hex(echoed), Sha256Hex(payload));
  const ServerEnd& end = server.Join()[0];
  EXPECT_EQ(end.error, "");
  ExpectOffloaded(end, Offload::kKernel, Offload::kUser, "the server");
  EXPECT_NE(export_error.find("RX is in OpenSSL"), std::string::npos) << export_error;
  EXPECT_NE(export_error.find("unsupported"), std::string::npos) << export_error;
}

}  // namespace
}  // namespace ktls::testing
