// Kernel tests: Connection::SpliceRead and SpliceWrite, in every offload
// state. Where a direction is in the kernel, its bytes must move by
// splice(2) without passing through the process (IoProgress::copied is 0
// for them); where it is in OpenSSL, the same calls copy. Records that are
// not data (session tickets, a KeyUpdate, close_notify) arrive in the
// middle of a splice stream and must be handled as Read handles them. The
// alerts and bad records a hostile peer sends mid-splice are in
// tests/interop/conformance_interop.py (ktls-echo --rx --splice).
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "ktls/probe.h"
#include "ktls/server.h"
#include "tests/support/kernel_env.h"
#include "tests/support/offload_shape.h"
#include "tests/support/sockets.h"
#include "tests/support/tls_peers.h"

namespace ktls::testing {
namespace {

using Bytes = std::vector<std::uint8_t>;

constexpr std::size_t kKiB = 1024;
constexpr std::size_t kMiB = 1024 * kKiB;

// Pipe: both ends of a pipe, closed on destruction.
struct Pipe {
  UniqueFd read_end;
  UniqueFd write_end;
  bool ok() const { return read_end.valid() && write_end.valid(); }
};

Pipe MakePipe(int flags, int size = 0) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC | flags) != 0) return {};
  Pipe pipe{UniqueFd(fds[0]), UniqueFd(fds[1])};
  if (size > 0 && ::fcntl(pipe.write_end.get(), F_SETPIPE_SZ, size) < 0) return {};
  return pipe;
}

// DrainPipe appends everything the (non-blocking) pipe holds to out.
void DrainPipe(const Pipe& pipe, Bytes& out) {
  std::uint8_t buf[64 * 1024];
  for (;;) {
    const ssize_t n = ::read(pipe.read_end.get(), buf, sizeof(buf));
    if (n <= 0) return;
    out.insert(out.end(), buf, buf + n);
  }
}

std::span<const std::byte> AsBytes(const Bytes& v) { return std::as_bytes(std::span(v)); }

long long StatGrowth(const std::map<std::string, long long>& before, const std::map<std::string, long long>& after,
                     const std::string& name) {
  const auto b = before.find(name);
  const auto a = after.find(name);
  return (a == after.end() ? 0 : a->second) - (b == before.end() ? 0 : b->second);
}

class SpliceKernelTest : public OffloadShapeTest {};

// An echo server that splices: every byte comes back intact, and a byte
// is copied through the process only in a direction OpenSSL holds.
TEST_P(SpliceKernelTest, EchoSplicesWhereTheKernelHoldsTheDirection) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  const auto stat_before = ReadTlsStat();
  ServerConfig server_config = ServerFor();
  server_config.offload = Options();
  TestServer server(server_config, 1, SpliceEcho);
  ASSERT_TRUE(server.ok()) << server.listen_error();
  ClientConfig client_config = ClientFor();
  client_config.offload = Options();
  auto conn = ConnectTo(server.port(), client_config);
  ASSERT_TRUE(conn.ok()) << "Connect: " << conn.error().ToString();

  const Bytes data = RandomBytes(8 * kMiB + 7);
  Bytes echoed;
  ASSERT_EQ(EchoThrough(*conn, data, Pace::kConcurrent, echoed), "");
  EXPECT_EQ(Sha256Hex(echoed), Sha256Hex(data)) << "the echoed bytes should be the bytes sent";
  const ServerEnd& end = server.Join()[0];
  EXPECT_EQ(end.error, "");
  ExpectOffloaded(end, WantTx(), WantRx(), "the server");
  EXPECT_EQ(end.bytes_in, data.size());
  EXPECT_EQ(end.bytes_out, data.size());
  EXPECT_EQ(end.copied_in, WantRx() == Offload::kKernel ? 0 : data.size())
      << "bytes SpliceRead moved through the process";
  EXPECT_EQ(end.copied_out, WantTx() == Offload::kKernel ? 0 : data.size())
      << "bytes SpliceWrite moved through the process";
  // Offload really happened: one kTLS direction per end and direction.
  const auto stat_after = ReadTlsStat();
  EXPECT_GE(StatGrowth(stat_before, stat_after, "TlsTxSw"), WantTx() == Offload::kKernel ? 2 : 0);
  EXPECT_GE(StatGrowth(stat_before, stat_after, "TlsRxSw"), WantRx() == Offload::kKernel ? 2 : 0);
}

// A client that splices a download: the session tickets the server sends
// first, a KeyUpdate in the middle (where the kernel can take new keys) and
// close_notify at the end all arrive while splicing, and each is handled
// as Read handles it.
TEST_P(SpliceKernelTest, ClientSplicesPastTicketsKeyUpdateAndCloseNotify) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  const bool rekey = CachedCapabilities().rekey;
  const Bytes first = RandomBytes(3 * kMiB + 1);
  const Bytes second = RandomBytes(3 * kMiB + 2);
  ServerConfig server_config = ServerFor();
  server_config.num_tickets = 2;
  server_config.offload = Options();
  const bool update = rekey || WantTx() == Offload::kUser;  // UpdateKeys needs 6.14 with TX in the kernel.
  TestServer server(server_config, 1, [&](Connection& conn, ServerEnd& end) {
    if (auto put = conn.WriteAll(AsBytes(first)); !put.ok()) {
      end.error = "server Write: " + put.error().ToString();
      return;
    }
    if (update) {
      if (auto updated = conn.UpdateKeys(/*request_peer_update=*/true); !updated.ok()) {
        end.error = "server UpdateKeys: " + updated.error().ToString();
        return;
      }
    }
    if (auto put = conn.WriteAll(AsBytes(second)); !put.ok()) {
      end.error = "server Write: " + put.error().ToString();
      return;
    }
    end.error = ShutdownText(conn);
    if (end.error.empty()) {
      Bytes rest;
      end.error = ReadToEnd(conn, rest);  // The client's close_notify.
    }
  });
  ASSERT_TRUE(server.ok()) << server.listen_error();
  ClientConfig client_config = ClientFor();
  client_config.offload = Options();
  auto conn = ConnectTo(server.port(), client_config);
  ASSERT_TRUE(conn.ok()) << "Connect: " << conn.error().ToString();
  ExpectOffloaded(conn->tx(), conn->rx(), WantTx(), WantRx(), "the client");

  const Pipe pipe = MakePipe(O_NONBLOCK);
  ASSERT_TRUE(pipe.ok()) << std::strerror(errno);
  Bytes received;
  std::size_t copied = 0;
  bool ended = false;
  while (!ended) {
    auto got = conn->SpliceRead(pipe.write_end.get(), 256 * kKiB);
    ASSERT_TRUE(got.ok()) << "after " << received.size() << " bytes: " << got.error().ToString();
    ASSERT_FALSE(got->would_block && got->wait != Wait::kPipe) << "a blocking socket timed out";
    copied += got->copied;
    ended = got->end_of_stream;
    DrainPipe(pipe, received);
  }
  Bytes expected = first;
  expected.insert(expected.end(), second.begin(), second.end());
  EXPECT_EQ(received.size(), expected.size());
  EXPECT_EQ(Sha256Hex(received), Sha256Hex(expected));
  EXPECT_EQ(copied, WantRx() == Offload::kKernel ? 0 : expected.size());
  if (WantRx() == Offload::kKernel) {
    // The tickets came through the kernel as records splice refused.
    EXPECT_EQ(conn->tickets_relayed() + conn->tickets_dropped(), 2u);
  }
  if (GetParam() != OffloadShape::kNeither) {  // (Counted from offload on; with neither, OpenSSL keeps both.)
    EXPECT_EQ(conn->rx_key_updates(), update ? 1u : 0u);
    // update_requested was answered: the server's read of our close_notify
    // below works under the key it then expects.
    EXPECT_EQ(conn->tx_key_updates(), update ? 1u : 0u);
  }
  EXPECT_EQ(ShutdownText(*conn), "");
  const ServerEnd& end = server.Join()[0];
  EXPECT_EQ(end.error, "");
}

INSTANTIATE_TEST_SUITE_P(Shapes, SpliceKernelTest, AllOffloadShapes(), OffloadShapeName);

// On a non-blocking socket: an empty pipe (SpliceWrite) and a full one
// (SpliceRead) are Wait::kPipe, a socket with nothing to read kReadable;
// nothing blocks, and every byte arrives. A fd that is no pipe is the
// caller's error, and the connection goes on. Because kTLS splice can
// drop what a pipe has no room for, a pipe that is not empty counts as
// full, and one smaller than 64 KiB is refused.
TEST(SpliceNonBlockingKernelTest, FullAndEmptyPipesAreWaitPipeNotErrors) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  const Bytes data = RandomBytes(1 * kMiB + 3);
  std::atomic<bool> may_send{false};
  ServerConfig server_config = ServerFor();
  server_config.offload.rx = RxOffload::kOn;
  TestServer server(server_config, 1, [&](Connection& conn, ServerEnd& end) {
    while (!may_send) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    if (auto put = conn.WriteAll(AsBytes(data)); !put.ok()) {
      end.error = "server Write: " + put.error().ToString();
      return;
    }
    end.error = ShutdownText(conn);
  });
  ASSERT_TRUE(server.ok()) << server.listen_error();
  ClientConfig client_config = ClientFor();
  client_config.offload.rx = RxOffload::kOn;
  auto conn = ConnectTo(server.port(), client_config);
  ASSERT_TRUE(conn.ok()) << "Connect: " << conn.error().ToString();
  ExpectOffloaded(conn->tx(), conn->rx(), Offload::kKernel, Offload::kKernel, "the client");
  ASSERT_EQ(::fcntl(conn->fd(), F_SETFL, ::fcntl(conn->fd(), F_GETFL) | O_NONBLOCK), 0);

  {
    const Pipe small = MakePipe(O_NONBLOCK, 4096);
    ASSERT_TRUE(small.ok()) << std::strerror(errno);
    auto got = conn->SpliceRead(small.write_end.get(), 64 * kKiB);
    ASSERT_FALSE(got.ok()) << "a one-page pipe, where kTLS splice can drop data";
    EXPECT_EQ(got.error().category, ErrorCategory::kUsage) << got.error().ToString();
  }
  const Pipe pipe = MakePipe(O_NONBLOCK, 64 * kKiB);
  ASSERT_TRUE(pipe.ok()) << std::strerror(errno);
  auto empty = conn->SpliceWrite(pipe.read_end.get(), 100);
  ASSERT_TRUE(empty.ok()) << empty.error().ToString();
  EXPECT_TRUE(empty->would_block);
  EXPECT_EQ(empty->wait, Wait::kPipe) << "SpliceWrite from an empty pipe";

  const UniqueFd not_a_pipe(::open("/dev/null", O_WRONLY | O_CLOEXEC));
  auto wrong = conn->SpliceRead(not_a_pipe.get(), 100);
  ASSERT_FALSE(wrong.ok());
  EXPECT_EQ(wrong.error().category, ErrorCategory::kUsage) << wrong.error().ToString();

  // Nothing sent yet (the tickets, if any, are consumed on the way).
  auto nothing = conn->SpliceRead(pipe.write_end.get(), 64 * kKiB);
  ASSERT_TRUE(nothing.ok()) << nothing.error().ToString();
  EXPECT_TRUE(nothing->would_block);
  EXPECT_EQ(nothing->wait, Wait::kReadable);

  may_send = true;
  Bytes received;
  bool saw_full_pipe = false;
  bool ended = false;
  const auto deadline = std::chrono::steady_clock::now() + kIoTimeout;
  while (!ended && std::chrono::steady_clock::now() < deadline) {
    auto got = conn->SpliceRead(pipe.write_end.get(), 64 * kKiB);
    ASSERT_TRUE(got.ok()) << got.error().ToString();
    EXPECT_EQ(got->copied, 0u);
    ended = got->end_of_stream;
    if (!got->would_block) continue;  // Fill the pipe before draining it.
    if (got->wait == Wait::kPipe) {
      saw_full_pipe = true;
      DrainPipe(pipe, received);
    } else {
      ASSERT_EQ(got->wait, Wait::kReadable);
      DrainPipe(pipe, received);
      pollfd pfd{conn->fd(), POLLIN, 0};
      (void)::poll(&pfd, 1, 1000);
    }
  }
  DrainPipe(pipe, received);
  ASSERT_TRUE(ended) << "no close_notify within " << kIoTimeout.count() << " s";
  EXPECT_TRUE(saw_full_pipe) << "1 MiB should have filled a 64 KiB pipe";
  EXPECT_EQ(Sha256Hex(received), Sha256Hex(data));
  EXPECT_EQ(server.Join()[0].error, "");
}

}  // namespace
}  // namespace ktls::testing
