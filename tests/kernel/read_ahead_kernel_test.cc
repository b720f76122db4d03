// tests/kernel/read_ahead_kernel_test.cc: where RX stays in OpenSSL for good
// (RxOffload::kOff, TLS 1.3's default on a kernel that cannot rekey, no
// offload at all), offload turns OpenSSL's read-ahead on: a record costs one
// read, not two (header, then body). Whatever OpenSSL has read ahead must
// still come out of Read without a wait for the socket: data, a KeyUpdate,
// close_notify.
//
// The server is the library's Listener; the client is plain OpenSSL, whose
// socket calls do not go through ktls's syscall seam, so the seam's
// recvmsg calls on the server's socket are the server's own.
#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>

#include <gtest/gtest.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <ostream>
#include <span>
#include <string>
#include <vector>

#include "core/openssl_ptr.h"
#include "ktls/connection.h"
#include "ktls/offload.h"
#include "ktls/probe.h"
#include "ktls/server.h"
#include "tests/support/fault_syscalls.h"
#include "tests/support/kernel_env.h"
#include "tests/support/sockets.h"
#include "tests/support/tls_peers.h"

namespace ktls::testing {
namespace {

using Bytes = std::vector<std::uint8_t>;
using detail::UniqueSsl;
using detail::UniqueSslCtx;
using namespace plain_openssl;  // NOLINT: OpenSslErrors, SslWriteAll, ... (tls_peers.h)

constexpr std::size_t kRecordLen = 16 * 1024;  // A full TLS record's plaintext.
constexpr std::size_t kNumRecords = 64;

// RecvCounter counts, through the seam's stand-in, the recvmsg calls on one
// socket that returned bytes (a call that found nothing, EAGAIN, is a wait,
// not a read of a record).
class RecvCounter {
 public:
  RecvCounter() {
    SetStandIns(StandIns{.recv_msg = [this](int fd, msghdr* msg, int flags) -> std::optional<ssize_t> {
      if (fd != fd_.load()) return std::nullopt;
      ssize_t n;
      do {
        n = ::recvmsg(fd, msg, flags);
      } while (n < 0 && errno == EINTR);
      if (n < 0) return -errno;
      if (n > 0) ++reads_;
      return n;
    }});
  }
  ~RecvCounter() { ClearFaults(); }
  RecvCounter(const RecvCounter&) = delete;
  RecvCounter& operator=(const RecvCounter&) = delete;

  void Watch(int fd) { fd_ = fd; }
  int reads() const { return reads_.load(); }

 private:
  std::atomic<int> fd_ = -1;
  std::atomic<int> reads_ = 0;
};

// PlainClient: a plain OpenSSL client of a TestServer.
struct PlainClient {
  UniqueSslCtx ctx;
  UniqueFd fd;
  UniqueSsl ssl;
};

// ConnectPlainClient connects out to server and waits until the server
// has offloaded the connection.
std::string ConnectPlainClient(TestServer& server, PlainClient& out) {
  out.ctx = NewTestContext(false);
  out.fd = ConnectLoopback(server.port(), kIoTimeout);
  if (!out.ctx || !out.fd) return "client context or connect";
  out.ssl.reset(SSL_new(out.ctx.get()));
  if (!out.ssl || SSL_set_fd(out.ssl.get(), out.fd.get()) != 1) return "SSL_new/SSL_set_fd: " + OpenSslErrors();
  ERR_clear_error();
  if (const int ret = SSL_connect(out.ssl.get()); ret != 1) return SslFailure(out.ssl.get(), ret, "SSL_connect");
  return server.WaitHandshaken(1) ? std::string() : "the server did not finish its handshake";
}

// Where: one way of making the server's RX stay in OpenSSL, or not.
struct Where {
  const char* name;
  TxOffload tx;
  RxOffload rx;
};
void PrintTo(const Where& where, std::ostream* os) { *os << where.name; }

class ReadAheadKernelTest : public ::testing::TestWithParam<Where> {};

// The client sends kNumRecords full records and close_notify in a stream;
// the server reads them 16 KiB at a time. Without read-ahead a record
// cannot cost fewer than two reads (OpenSSL asks for the 5-byte header,
// then for the body), and measured 2.03. With it a read takes whatever
// has arrived: one a record, plus one each time the reader catches up with
// the writer inside a record (1.0-1.25 seen, depending on timing). RX in
// the kernel (RxOffload::kAuto on a kernel that can rekey) is one recvmsg
// a record too.
TEST_P(ReadAheadKernelTest, ARecordCostsOneRead) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  const Where where = GetParam();
  RecvCounter counter;
  int reads_after_handshake = -1;
  ServerConfig config = ServerFor();
  config.offload.tx = where.tx;
  config.offload.rx = where.rx;
  Bytes received;
  TestServer server(config, 1, [&](Connection& conn, ServerEnd& end) {
    counter.Watch(conn.fd());
    const int before = counter.reads();
    end.error = ReadToEnd(conn, received, kRecordLen);
    reads_after_handshake = counter.reads() - before;
    if (end.error.empty()) end.error = ShutdownText(conn);
  });
  ASSERT_TRUE(server.ok()) << server.listen_error();
  PlainClient client;
  ASSERT_EQ(ConnectPlainClient(server, client), "");

  const Bytes data = RandomBytes(kNumRecords * kRecordLen);
  EXPECT_EQ(SslWriteAll(client.ssl.get(), data), "");
  ERR_clear_error();
  EXPECT_GE(SSL_shutdown(client.ssl.get()), 0) << OpenSslErrors();
  EXPECT_EQ(SslExpectCloseNotify(client.ssl.get()), "");
  const ServerEnd& end = server.Join()[0];
  EXPECT_EQ(end.error, "");
  EXPECT_EQ(Sha256Hex(received), Sha256Hex(data));

  const bool rx_in_kernel = where.tx == TxOffload::kOn && where.rx == RxOffload::kAuto && CachedCapabilities().rekey;
  ExpectOffloaded(end, where.tx == TxOffload::kOn ? Offload::kKernel : Offload::kUser,
                  rx_in_kernel ? Offload::kKernel : Offload::kUser, where.name);
  // Well under the two a record that reading without read-ahead cannot go
  // below, whatever the timing.
  const double per_record = static_cast<double>(reads_after_handshake) / static_cast<double>(kNumRecords);
  RecordProperty("reads_per_record", std::to_string(per_record));
  EXPECT_GT(reads_after_handshake, 0);
  EXPECT_LE(reads_after_handshake, static_cast<int>(kNumRecords + kNumRecords / 2))
      << per_record << " recvmsg calls a record with rx=" << OffloadName(end.rx);
}

INSTANTIATE_TEST_SUITE_P(Where, ReadAheadKernelTest,
                         ::testing::Values(Where{"RxOff", TxOffload::kOn, RxOffload::kOff},
                                           Where{"RxAuto", TxOffload::kOn, RxOffload::kAuto},
                                           Where{"NoOffload", TxOffload::kOff, RxOffload::kAuto}),
                         [](const ::testing::TestParamInfo<Where>& param_info) { return param_info.param.name; });

// ReadNonBlocking reads (read_len bytes at a time) on a non-blocking
// connection until close_notify, waiting for the socket only after a Read
// said would_block, and then at most 5 s: the client sends nothing more, so
// a wait that times out means Read held bytes back (OpenSSL read them
// ahead, and ktls asked the socket instead).
std::string ReadNonBlocking(Connection& conn, std::size_t read_len, Bytes& out) {
  std::vector<std::byte> buf(read_len);
  for (;;) {
    auto got = conn.Read(buf);
    if (!got.ok()) return "Read: " + got.error().ToString();
    if (got->end_of_stream) return {};
    const auto* bytes = reinterpret_cast<const std::uint8_t*>(buf.data());
    out.insert(out.end(), bytes, bytes + got->bytes);
    if (!got->would_block) continue;
    pollfd pfd{conn.fd(), static_cast<short>(got->wait == Wait::kWritable ? POLLOUT : POLLIN), 0};
    if (::poll(&pfd, 1, 5000) != 1) {
      return "Read said would_block after " + std::to_string(out.size()) +
             " bytes, and the socket never became ready: bytes were held back";
    }
  }
}

// The client's records arrive in one write: data, a KeyUpdate (not asking
// for ours), more data, close_notify. OpenSSL reads them all ahead with
// the first Read; every later Read must deliver from its buffer, and the
// end must be close_notify, without the socket ever becoming readable
// again (the client keeps it open until it has our close_notify).
TEST(ReadAheadBufferKernelTest, BufferedRecordsComeOutWithoutWaiting) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  ServerConfig config = ServerFor();
  config.offload.rx = RxOffload::kOff;
  Bytes received;
  TestServer server(config, 1, [&](Connection& conn, ServerEnd& end) {
    const int flags = ::fcntl(conn.fd(), F_GETFL);
    if (flags < 0 || ::fcntl(conn.fd(), F_SETFL, flags | O_NONBLOCK) != 0) {
      end.error = "fcntl(O_NONBLOCK)";
      return;
    }
    end.error = ReadNonBlocking(conn, 100, received);
    if (!end.error.empty()) return;
    if (::fcntl(conn.fd(), F_SETFL, flags) != 0) {
      end.error = "fcntl";
      return;
    }
    end.error = ShutdownText(conn);
  });
  ASSERT_TRUE(server.ok()) << server.listen_error();
  PlainClient client;
  ASSERT_EQ(ConnectPlainClient(server, client), "");

  // Collect the records in a memory BIO, then send them in one write.
  BIO* records = BIO_new(BIO_s_mem());
  ASSERT_NE(records, nullptr);
  SSL_set0_wbio(client.ssl.get(), records);
  const Bytes first = RandomBytes(3000);
  const Bytes second = RandomBytes(2000);
  EXPECT_EQ(SslWriteAll(client.ssl.get(), first), "");
  EXPECT_EQ(SSL_key_update(client.ssl.get(), SSL_KEY_UPDATE_NOT_REQUESTED), 1) << OpenSslErrors();
  EXPECT_EQ(SslWriteAll(client.ssl.get(), second), "");
  ERR_clear_error();
  EXPECT_GE(SSL_shutdown(client.ssl.get()), 0) << OpenSslErrors();
  char* burst = nullptr;
  const long burst_len = BIO_get_mem_data(records, &burst);
  ASSERT_GT(burst_len, 0);
  ASSERT_TRUE(WriteAll(client.fd.get(), std::span(reinterpret_cast<const std::uint8_t*>(burst),
                                                   static_cast<std::size_t>(burst_len))));
  EXPECT_EQ(SslExpectCloseNotify(client.ssl.get()), "");

  const ServerEnd& end = server.Join()[0];
  EXPECT_EQ(end.error, "");
  EXPECT_EQ(end.rx, Offload::kUser);
  Bytes want = first;
  want.insert(want.end(), second.begin(), second.end());
  EXPECT_EQ(Sha256Hex(received), Sha256Hex(want));
}

}  // namespace
}  // namespace ktls::testing
