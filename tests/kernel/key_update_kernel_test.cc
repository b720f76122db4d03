// tests/kernel/key_update_kernel_test.cc: TLS 1.3 key updates on offloaded
// connections, on a kernel that can install new keys on a live socket
// (Linux 6.14 and later: 7.2 here) and on one that cannot (6.1).
//
// Nothing here skips for want of rekey support. Each test asks the probe
// (CachedCapabilities().rekey) and asserts what ktls must do on the kernel
// it runs on: where the kernel can rekey, the update happens and every byte
// arrives (SHA-256), with /proc/net/tls_stat showing the kernel did it;
// where it cannot, the specific error, and what the peer sees.
//
//  a. 200 key updates in a row, both directions: the library on both ends,
//     RX and TX in the kernel, UpdateKeys(true/false) from either end in
//     turn, each followed by an echo. Without rekey: UpdateKeys fails with
//     kUnsupported, sends nothing, and the connection carries on.
//  b. Automatic TX key update at a threshold of 5 records, with plain
//     writes and with SendFile (3 MiB): no record under one key reaches the
//     threshold. Without rekey: the write fails with kUnsupported naming the
//     AEAD limit, the peer gets internal_error (never close_notify) right
//     after the last byte the writes reported.
//  c. Mixed mode (TX in the kernel, RX in OpenSSL): a plain OpenSSL peer
//     sends KeyUpdate(update_requested); the server answers through the
//     kernel. Without rekey: kUnsupported and internal_error.
//  d. RX forced into the kernel (RxOffload::kOn), and the peer updates its
//     keys mid-stream. Without rekey: kUnsupported, nothing after the
//     KeyUpdate is returned, the peer gets internal_error.
//  e. A malformed KeyUpdate after offload is answered with the right alert.
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <ostream>
#include <span>
#include <string>
#include <vector>

#include "conn/kernel_io.h"
#include "core/openssl_ptr.h"
#include "kernel/tls_uapi.h"
#include "ktls/connection.h"
#include "ktls/offload.h"
#include "ktls/probe.h"
#include "ktls/result.h"
#include "ktls/server.h"
#include "ktls/types.h"
#include "tests/support/kernel_env.h"
#include "tests/support/sockets.h"
#include "tests/support/tls_peers.h"

namespace ktls::testing {
namespace {

namespace uapi = ::ktls::detail::uapi;
using Bytes = std::vector<std::uint8_t>;
using detail::UniqueSsl;
using detail::UniqueSslCtx;
using namespace plain_openssl;  // NOLINT: OpenSslErrors, SslWriteAll, ... (tls_peers.h)

constexpr std::size_t kKiB = 1024;
constexpr std::size_t kMiB = 1024 * kKiB;
constexpr std::size_t kMaxRecordLen = 16 * kKiB;
// TLS alert descriptions (RFC 8446 6).
constexpr int kAlertUnexpectedMessage = 10;
constexpr int kAlertIllegalParameter = 47;
constexpr int kAlertDecodeError = 50;
// KeyUpdate (RFC 8446 4.6.3): handshake type 24, a 1-byte body.
constexpr std::uint8_t kHandshakeKeyUpdate = 24;

// Peers: tests/support/tls_peers.h (TestServer, ConnectTo, ...), plus, below,
// reading until the end, and a plain OpenSSL client.

// RxEnd: how reading a connection ended.
struct RxEnd {
  bool end_of_stream = false;
  std::optional<Error> error;
};

// ReadUntilEnd reads into out until close_notify or an error.
RxEnd ReadUntilEnd(Connection& conn, Bytes& out) {
  std::vector<std::byte> buf(64 * kKiB);
  for (;;) {
    auto got = conn.Read(buf);
    if (!got.ok()) return RxEnd{false, got.error()};
    if (got->end_of_stream) return RxEnd{true, std::nullopt};
    if (got->would_block) return RxEnd{false, Error{ErrorCategory::kIo, EAGAIN, "Read timed out (test)", -1}};
    const auto* bytes = reinterpret_cast<const std::uint8_t*>(buf.data());
    out.insert(out.end(), bytes, bytes + got->bytes);
  }
}

// WaitForPeerClose keeps a server's socket open until the client has closed
// its end or shut down its write side (or the Watchdog shut the socket
// down): closing first, with the client's bytes unread, would make the
// kernel reset the connection, and the client could lose the alert or
// close_notify it has yet to read.
void WaitForPeerClose(const Connection& conn) {
  pollfd pfd{conn.fd(), POLLRDHUP, 0};
  const int timeout_ms = static_cast<int>(std::chrono::milliseconds(kTestDeadline).count());
  while (::poll(&pfd, 1, timeout_ms) < 0 && errno == EINTR) {
  }
}

void Append(Bytes& to, std::span<const std::uint8_t> bytes) { to.insert(to.end(), bytes.begin(), bytes.end()); }

std::string Describe(const std::optional<Error>& error) { return error ? error->ToString() : "no error"; }

// --- /proc/net/tls_stat ------------------------------------------------------

// TlsStatSnapshot: /proc/net/tls_stat now, after the process-wide probe has
// run (the probe's own sockets count too, and it sets TLS_TX twice).
std::map<std::string, long long> TlsStatSnapshot() {
  (void)CachedCapabilities();
  return ReadTlsStat();
}

// CounterDelta: how much a counter moved since before (-1: not listed).
long long CounterDelta(const std::map<std::string, long long>& before, const std::string& name) {
  const auto after = ReadTlsStat();
  const auto b = before.find(name);
  const auto a = after.find(name);
  if (b == before.end() || a == after.end()) return -1;
  return a->second - b->second;
}

// ExpectRekeyCounters checks the kernel's own count of key changes (7.2:
// TlsTxRekeyOk, TlsRxRekeyOk, TlsRxRekeyReceived for each KeyUpdate record
// the kernel decrypted, and no errors).
void ExpectRekeyCounters(const std::map<std::string, long long>& before, long long tx_ok, long long rx_ok) {
  EXPECT_EQ(CounterDelta(before, "TlsTxRekeyOk"), tx_ok) << "TlsTxRekeyOk counts each new TLS_TX key";
  EXPECT_EQ(CounterDelta(before, "TlsRxRekeyOk"), rx_ok) << "TlsRxRekeyOk counts each new TLS_RX key";
  EXPECT_EQ(CounterDelta(before, "TlsRxRekeyReceived"), rx_ok)
      << "TlsRxRekeyReceived counts each KeyUpdate the kernel's RX decrypted";
  EXPECT_EQ(CounterDelta(before, "TlsTxRekeyError"), 0);
  EXPECT_EQ(CounterDelta(before, "TlsRxRekeyError"), 0);
}

// --- The kernel's TX record sequence number ----------------------------------

// KernelTxNextSeq asks the kernel for the sequence number of the next TX
// record (the rec_seq of getsockopt(SOL_TLS, TLS_TX)), read straight from
// the uapi struct, not through the library. -1 if that failed.
long long KernelTxNextSeq(int fd, const std::string& suite) {
  std::size_t info_len = 0;
  std::size_t rec_seq_offset = 0;
  if (suite == "TLS_AES_128_GCM_SHA256") {
    info_len = sizeof(uapi::CryptoInfoAesGcm128);
    rec_seq_offset = offsetof(uapi::CryptoInfoAesGcm128, rec_seq);
  } else if (suite == "TLS_AES_256_GCM_SHA384") {
    info_len = sizeof(uapi::CryptoInfoAesGcm256);
    rec_seq_offset = offsetof(uapi::CryptoInfoAesGcm256, rec_seq);
  } else if (suite == "TLS_CHACHA20_POLY1305_SHA256") {
    info_len = sizeof(uapi::CryptoInfoChaCha20Poly1305);
    rec_seq_offset = offsetof(uapi::CryptoInfoChaCha20Poly1305, rec_seq);
  } else if (suite == "TLS_AES_128_CCM_SHA256") {
    info_len = sizeof(uapi::CryptoInfoAesCcm128);
    rec_seq_offset = offsetof(uapi::CryptoInfoAesCcm128, rec_seq);
  } else {
    return -1;
  }
  alignas(8) std::array<std::uint8_t, 64> info{};
  socklen_t len = static_cast<socklen_t>(info_len);  // The kernel wants exactly the struct's size.
  const int rc = ::getsockopt(fd, uapi::kSolTls, uapi::kTlsTx, info.data(), &len);
  std::uint64_t seq = 0;
  for (std::size_t i = 0; i < 8; ++i) seq = seq << 8 | info[rec_seq_offset + i];
  OPENSSL_cleanse(info.data(), info.size());  // It holds the key too.
  return rc == 0 && len == info_len ? static_cast<long long>(seq) : -1;
}

// --- Plain OpenSSL peers (no ktls anywhere) ----------------------------------

// PlainClient: an OpenSSL client, TLS 1.3 only, trusting TestCert, on its
// own loopback TCP connection (owned here, not by the SSL).
struct PlainClient {
  UniqueSslCtx ctx;
  UniqueFd fd;
  UniqueSsl ssl;

  // Close ends the connection without close_notify.
  void Close() {
    ssl.reset();
    fd.reset();
  }
};

std::string ConnectPlain(std::uint16_t port, PlainClient& out) {
  out.ctx = NewTestContext(/*server=*/false);
  if (!out.ctx) return "client context: " + OpenSslErrors();
  out.fd.reset(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  if (!out.fd || ::connect(out.fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      !SetIoTimeout(out.fd.get(), kIoTimeout)) {
    return std::string("TCP connect: ") + std::strerror(errno);
  }
  out.ssl.reset(SSL_new(out.ctx.get()));
  if (!out.ssl || SSL_set_fd(out.ssl.get(), out.fd.get()) != 1) return "SSL_new/SSL_set_fd: " + OpenSslErrors();
  ERR_clear_error();
  const int ret = SSL_connect(out.ssl.get());
  return ret == 1 ? std::string() : SslFailure(out.ssl.get(), ret, "SSL_connect");
}

// SslKeyUpdate: SSL_key_update; the KeyUpdate goes out with the next write.
std::string SslKeyUpdate(SSL* ssl, int type) {
  ERR_clear_error();
  return SSL_key_update(ssl, type) == 1 ? std::string() : "SSL_key_update: " + OpenSslErrors();
}

std::string RekeyText(bool rekey) {
  return rekey ? " (this kernel can rekey)" : " (this kernel cannot rekey)";
}

// ---------------------------------------------------------------------------
// a. 200 key updates in a row, both directions.

constexpr std::size_t kNumRekeyRounds = 200;

// RekeyRound: one of the 200 rounds. Its starter calls UpdateKeys, writes
// len random bytes and reads them back; the other end echoes them. Starter
// and request alternate so each of the four combinations happens 50 times:
// client+requested, server+requested, client, server.
struct RekeyRound {
  bool client_starts;
  bool request_peer_update;
  std::size_t len;
};

RekeyRound RekeyRoundAt(std::size_t i) {
  // Around the record size, and a few records.
  constexpr std::array<std::size_t, 7> kLens = {1, 100, 16383, 16384, 16385, 5000, 40000};
  return RekeyRound{i % 2 == 0, (i / 2) % 2 == 0, kLens[i % kLens.size()]};
}

// Key updates one end makes, per direction, over the 200 rounds where the
// kernel can rekey: its own 100 (as starter), plus an answer to each of
// the other end's 50 update_requested. RX mirrors the other end's TX.
constexpr std::uint64_t kUpdatesPerEnd = kNumRekeyRounds / 2 + kNumRekeyRounds / 4;

// Streams: everything one end sent and received, in order.
struct Streams {
  Bytes sent;
  Bytes received;
};

// RunRekeyRounds plays one end's part of the 200 rounds. Where the kernel
// cannot rekey, each UpdateKeys must fail with kUnsupported (and send
// nothing: the echo that follows would fail otherwise).
std::string RunRekeyRounds(Connection& conn, bool is_client, bool rekey, Streams& streams) {
  for (std::size_t i = 0; i < kNumRekeyRounds; ++i) {
    const RekeyRound round = RekeyRoundAt(i);
    const std::string where = " (round " + std::to_string(i) + ")";
    if (round.client_starts != is_client) {
      Bytes chunk;
      if (std::string error = ReadExactly(conn, round.len, chunk); !error.empty()) return error + where;
      Append(streams.received, chunk);
      if (std::string error = WriteAll(conn, chunk); !error.empty()) return error + where;
      Append(streams.sent, chunk);
      continue;
    }
    auto updated = conn.UpdateKeys(round.request_peer_update);
    if (rekey && !updated.ok()) return "UpdateKeys: " + updated.error().ToString() + where;
    if (!rekey) {
      if (updated.ok()) return "UpdateKeys succeeded with TX in the kernel on a kernel that cannot rekey" + where;
      if (updated.error().category != ErrorCategory::kUnsupported ||
          updated.error().detail.find("6.14") == std::string::npos) {
        return "UpdateKeys should fail with kUnsupported naming Linux 6.14, got " + updated.error().ToString() + where;
      }
    }
    const Bytes chunk = RandomBytes(round.len);
    if (std::string error = WriteAll(conn, chunk); !error.empty()) return error + where;
    Append(streams.sent, chunk);
    Bytes echoed;
    if (std::string error = ReadExactly(conn, round.len, echoed); !error.empty()) return error + where;
    Append(streams.received, echoed);
    if (echoed != chunk) return "the echo differs from what was sent" + where;
  }
  return {};
}

// KeyUpdateCounts: a connection's key update counters.
struct KeyUpdateCounts {
  std::uint64_t tx = 0;
  std::uint64_t rx = 0;
};

std::ostream& operator<<(std::ostream& out, const KeyUpdateCounts& counts) {
  return out << "tx=" << counts.tx << " rx=" << counts.rx;
}

bool operator==(const KeyUpdateCounts& a, const KeyUpdateCounts& b) { return a.tx == b.tx && a.rx == b.rx; }

KeyUpdateCounts CountsOf(const Connection& conn) { return {conn.tx_key_updates(), conn.rx_key_updates()}; }

TEST(KeyUpdateKernelTest, TwoHundredUpdatesBothDirectionsWithEveryByteChecked) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  const bool rekey = CachedCapabilities().rekey;
  const auto stats_before = TlsStatSnapshot();
  Streams server_streams;
  KeyUpdateCounts server_counts;
  TestServer server(ServerFor(), 1, [&](Connection& conn, ServerEnd& end) {
    end.error = RunRekeyRounds(conn, /*is_client=*/false, rekey, server_streams);
    server_counts = CountsOf(conn);
    Bytes rest;
    if (end.error.empty()) end.error = ReadToEnd(conn, rest);  // The client's close_notify...
    if (end.error.empty() && !rest.empty()) end.error = "data after the last round";
    if (end.error.empty()) end.error = ShutdownText(conn);  // ...and ours.
  });
  ASSERT_TRUE(server.ok()) << server.listen_error();
  auto conn = ConnectTo(server.port(), ClientFor());
  ASSERT_TRUE(conn.ok()) << "Connect: " << conn.error().ToString();
  ExpectOffloaded(conn->tx(), conn->rx(), Offload::kKernel, Offload::kKernel, "the client");

  Streams client_streams;
  std::string client_error = RunRekeyRounds(*conn, /*is_client=*/true, rekey, client_streams);
  const KeyUpdateCounts client_counts = CountsOf(*conn);
  Bytes rest;
  if (client_error.empty()) client_error = ShutdownText(*conn);
  if (client_error.empty()) client_error = ReadToEnd(*conn, rest);
  if (!client_error.empty()) conn->Close();  // The server stops waiting for us.
  EXPECT_EQ(client_error, "") << RekeyText(rekey);
  const ServerEnd& end = server.Join()[0];
  EXPECT_EQ(end.error, "") << RekeyText(rekey);
  ExpectOffloaded(end, Offload::kKernel, Offload::kKernel, "the server");

  EXPECT_FALSE(client_streams.sent.empty());
  EXPECT_EQ(Sha256Hex(server_streams.received), Sha256Hex(client_streams.sent))
      << "the server should have received every byte the client sent";
  EXPECT_EQ(Sha256Hex(client_streams.received), Sha256Hex(server_streams.sent))
      << "the client should have received every byte the server sent";

  const std::uint64_t want = rekey ? kUpdatesPerEnd : 0;
  EXPECT_EQ(client_counts, (KeyUpdateCounts{want, want})) << "the client's key updates" << RekeyText(rekey);
  EXPECT_EQ(server_counts, (KeyUpdateCounts{want, want})) << "the server's key updates" << RekeyText(rekey);
  if (rekey) {
    ExpectRekeyCounters(stats_before, 2 * static_cast<long long>(kUpdatesPerEnd),
                        2 * static_cast<long long>(kUpdatesPerEnd));
  }
}

// ---------------------------------------------------------------------------
// b. Automatic TX key update at a low threshold.

constexpr std::uint64_t kThreshold = 5;  // OffloadOptions::key_update_after_records
constexpr std::size_t kPayloadLen = 3 * kMiB + 12345;

enum class Sender { kWrite, kSendFile };

const char* SenderName(Sender sender) { return sender == Sender::kWrite ? "Write" : "SendFile"; }

void PrintTo(Sender sender, std::ostream* out) { *out << SenderName(sender); }


// ThresholdSender: what the sending server saw.
struct ThresholdSender {
  std::string suite;
  std::size_t sent = 0;             // Bytes the calls reported written.
  std::optional<Error> error;       // The call that failed, if one did.
  std::optional<Error> later_error;  // A write after that.
  std::uint64_t tx_key_updates = 0;
  // The kernel's next TX sequence number after each successful call: it
  // must stay below the threshold (room for the KeyUpdate itself).
  long long max_next_seq = -1;
  long long next_seq_at_close = -1;  // After the failed call (no rekey).
};

class KeyUpdateThresholdKernelTest : public ::testing::TestWithParam<Sender> {};

// The server sends 3 MiB with key_update_after_records = 5. Plain writes
// come in sizes that straddle records (the first is 3 records: the
// server's 2 session tickets already used sequence numbers 0 and 1);
// SendFile asks for everything that is left each time.
TEST_P(KeyUpdateThresholdKernelTest, UpdatesTxKeyBeforeThresholdOrClosesCleanly) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  const bool rekey = CachedCapabilities().rekey;
  const Sender sender = GetParam();
  const TempFile file(kPayloadLen);
  ASSERT_TRUE(file.ok()) << "cannot create the temporary file";
  const Bytes& data = file.contents();
  const auto stats_before = TlsStatSnapshot();

  ServerConfig server_config = ServerFor();
  server_config.offload.key_update_after_records = kThreshold;
  ThresholdSender view;
  TestServer server(server_config, 1, [&](Connection& conn, ServerEnd& end) {
    view.suite = conn.session().cipher_suite;
    constexpr std::array<std::size_t, 7> kWriteLens = {40000, 1, 16384, 100000, 5000, 16383, 3 * 65536};
    for (std::size_t call = 0; view.sent < data.size(); ++call) {
      const std::size_t left = data.size() - view.sent;
      const std::size_t write_len = std::min(left, kWriteLens[call % kWriteLens.size()]);
      auto wrote = sender == Sender::kWrite ? conn.Write(std::as_bytes(std::span(data).subspan(view.sent, write_len)))
                                            : conn.SendFile(file.fd(), static_cast<off_t>(view.sent), left);
      if (!wrote.ok()) {
        view.error = wrote.error();
        break;
      }
      if (wrote->bytes == 0) {
        end.error = "no progress at byte " + std::to_string(view.sent);
        return;
      }
      view.sent += wrote->bytes;
      view.max_next_seq = std::max(view.max_next_seq, KernelTxNextSeq(conn.fd(), view.suite));
    }
    view.tx_key_updates = conn.tx_key_updates();
    if (view.error) {
      view.next_seq_at_close = KernelTxNextSeq(conn.fd(), view.suite);
      auto again = conn.Write(std::as_bytes(std::span(data).first(1)));
      if (!again.ok()) view.later_error = again.error();
      WaitForPeerClose(conn);
      return;
    }
    if (end.error = ShutdownText(conn); !end.error.empty()) return;
    Bytes rest;
    end.error = ReadToEnd(conn, rest);  // The client's close_notify.
  });
  ASSERT_TRUE(server.ok()) << server.listen_error();
  auto conn = ConnectTo(server.port(), ClientFor());
  ASSERT_TRUE(conn.ok()) << "Connect: " << conn.error().ToString();
  Bytes received;
  received.reserve(data.size());
  const std::string client_error = ReadToEnd(*conn, received);
  if (rekey) {
    EXPECT_EQ(client_error, "") << "the client should see a clean close_notify" << RekeyText(rekey);
    EXPECT_EQ(ShutdownText(*conn), "");
  } else {
    // Never close_notify: the stream was cut, and must not look complete.
    EXPECT_NE(client_error.find("internal_error"), std::string::npos)
        << "the client should receive an internal_error alert: " << client_error;
  }
  const std::uint64_t client_rx_updates = conn->rx_key_updates();
  conn->Close();
  const ServerEnd& end = server.Join()[0];
  EXPECT_EQ(end.error, "");
  ExpectOffloaded(end, Offload::kKernel, Offload::kKernel, "the server");

  SCOPED_TRACE(view.suite);
  EXPECT_GE(view.max_next_seq, 0) << "getsockopt(TLS_TX) should report the record sequence number";
  EXPECT_LT(view.max_next_seq, static_cast<long long>(kThreshold))
      << "after a write the next record (a KeyUpdate, at worst) must still be below the threshold";
  if (rekey) {
    EXPECT_FALSE(view.error) << Describe(view.error);
    EXPECT_EQ(view.sent, data.size());
    EXPECT_EQ(received.size(), data.size());
    EXPECT_EQ(Sha256Hex(received), Sha256Hex(data)) << "every byte should arrive across the key updates";
    const std::uint64_t min_updates = data.size() / kMaxRecordLen / (kThreshold - 1);
    EXPECT_GE(view.tx_key_updates, min_updates)
        << "at most " << kThreshold - 1 << " data records fit under one key";
    EXPECT_EQ(client_rx_updates, view.tx_key_updates) << "the client's kernel RX should follow every update";
    ExpectRekeyCounters(stats_before, static_cast<long long>(view.tx_key_updates),
                        static_cast<long long>(view.tx_key_updates));
  } else {
    ASSERT_TRUE(view.error) << "a kernel that cannot rekey must stop before the limit";
    EXPECT_EQ(view.error->category, ErrorCategory::kUnsupported) << view.error->ToString();
    EXPECT_NE(view.error->detail.find("AEAD limit"), std::string::npos) << view.error->ToString();
    EXPECT_EQ(view.error->tls_alert, 80) << "internal_error was sent: " << view.error->ToString();
    EXPECT_EQ(view.tx_key_updates, 0u);
    EXPECT_GT(view.sent, 0u) << "records fit under the threshold before it is reached";
    EXPECT_LT(view.sent, kThreshold * kMaxRecordLen);
    EXPECT_EQ(received.size(), view.sent) << "the peer gets what the writes reported, then the alert";
    EXPECT_EQ(Sha256Hex(received), Sha256Hex(std::span(data).first(std::min(view.sent, data.size()))));
    EXPECT_GE(view.next_seq_at_close, 0);
    EXPECT_LE(view.next_seq_at_close, static_cast<long long>(kThreshold))
        << "the alert, the last record, must be below the threshold too";
    ASSERT_TRUE(view.later_error) << "a write after the close must fail";
    EXPECT_EQ(view.later_error->category, ErrorCategory::kClosed) << view.later_error->ToString();
  }
}

INSTANTIATE_TEST_SUITE_P(Senders, KeyUpdateThresholdKernelTest, ::testing::Values(Sender::kWrite, Sender::kSendFile),
                         [](const ::testing::TestParamInfo<Sender>& param_info) {
                           return std::string(SenderName(param_info.param));
                         });

// ---------------------------------------------------------------------------
// c. Mixed mode: TX in the kernel, RX in OpenSSL.

// EchoServerView: what an echoing server saw.
struct EchoServerView {
  RxEnd end;
  std::optional<Error> later_error;
  KeyUpdateCounts counts;
};

// EchoUntilEnd echoes until close_notify (answered with ours) or an error.
void EchoUntilEnd(Connection& conn, ServerEnd& end, EchoServerView& view) {
  std::vector<std::byte> buf(64 * kKiB);
  for (;;) {
    auto got = conn.Read(buf);
    if (!got.ok()) {
      view.end.error = got.error();
      break;
    }
    if (got->would_block) {
      end.error = "server Read timed out";
      return;
    }
    if (got->end_of_stream) {
      view.end.end_of_stream = true;
      break;
    }
    end.bytes_in += got->bytes;
    if (end.error = WriteAll(conn, std::span(reinterpret_cast<const std::uint8_t*>(buf.data()), got->bytes));
        !end.error.empty()) {
      return;
    }
  }
  view.counts = CountsOf(conn);
  if (view.end.end_of_stream) {
    end.error = ShutdownText(conn);
    return;
  }
  auto again = conn.Read(buf);
  if (!again.ok()) view.later_error = again.error();
  WaitForPeerClose(conn);
}

// A plain OpenSSL client asks the server (RX in OpenSSL, TX in the kernel)
// to update its keys. OpenSSL reads the request but would answer only at
// its next SSL_write, which never comes: ktls must answer through the
// kernel before its next data, and the echo goes on under the new keys.
TEST(KeyUpdateMixedModeKernelTest, PeerUpdateRequestedIsAnsweredThroughKernelTx) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  const bool rekey = CachedCapabilities().rekey;
  const auto stats_before = TlsStatSnapshot();
  ServerConfig server_config = ServerFor();
  server_config.offload.rx = RxOffload::kOff;
  EchoServerView view;
  TestServer server(server_config, 1, [&](Connection& conn, ServerEnd& end) { EchoUntilEnd(conn, end, view); });
  ASSERT_TRUE(server.ok()) << server.listen_error();
  PlainClient client;
  ASSERT_EQ(ConnectPlain(server.port(), client), "");
  SSL* ssl = client.ssl.get();

  const Bytes first = RandomBytes(20000);
  std::string client_error = SslKeyUpdate(ssl, SSL_KEY_UPDATE_REQUESTED);
  if (client_error.empty()) client_error = SslWriteAll(ssl, first);
  if (!rekey) {
    if (client_error.empty()) client_error = SslExpectAlert(ssl, SSL_R_TLSV1_ALERT_INTERNAL_ERROR);
    EXPECT_EQ(client_error, "") << "the peer should see internal_error, not close_notify" << RekeyText(rekey);
    client.Close();
    const ServerEnd& end = server.Join()[0];
    EXPECT_EQ(end.error, "");
    ExpectOffloaded(end, Offload::kKernel, Offload::kUser, "the server (RX offload off)");
    ASSERT_TRUE(view.end.error) << "update_requested cannot be honoured with TX in a kernel without rekey";
    EXPECT_EQ(view.end.error->category, ErrorCategory::kUnsupported) << view.end.error->ToString();
    EXPECT_NE(view.end.error->detail.find("update_requested"), std::string::npos) << view.end.error->ToString();
    EXPECT_EQ(view.counts.tx, 0u);
    ASSERT_TRUE(view.later_error);
    EXPECT_EQ(view.later_error->category, ErrorCategory::kClosed) << view.later_error->ToString();
    return;
  }
  // Three echoes: after the requested update, after one the peer makes
  // alone (update_not_requested: nothing to answer), and with no update.
  Bytes echoed;
  if (client_error.empty()) client_error = SslReadExactly(ssl, first.size(), echoed);
  const Bytes second = RandomBytes(30000);
  if (client_error.empty()) client_error = SslKeyUpdate(ssl, SSL_KEY_UPDATE_NOT_REQUESTED);
  if (client_error.empty()) client_error = SslWriteAll(ssl, second);
  if (client_error.empty()) client_error = SslReadExactly(ssl, second.size(), echoed);
  const Bytes third = RandomBytes(5000);
  if (client_error.empty()) client_error = SslWriteAll(ssl, third);
  if (client_error.empty()) client_error = SslReadExactly(ssl, third.size(), echoed);
  ERR_clear_error();
  if (client_error.empty() && SSL_shutdown(ssl) < 0) client_error = "SSL_shutdown: " + OpenSslErrors();
  if (client_error.empty()) client_error = SslExpectCloseNotify(ssl);
  EXPECT_EQ(client_error, "");
  client.Close();
  const ServerEnd& end = server.Join()[0];
  EXPECT_EQ(end.error, "");

  Bytes sent = first;
  Append(sent, second);
  Append(sent, third);
  EXPECT_EQ(Sha256Hex(echoed), Sha256Hex(sent)) << "the echo should survive both key updates";
  EXPECT_EQ(end.bytes_in, sent.size());
  ExpectOffloaded(end, Offload::kKernel, Offload::kUser, "the server (RX offload off)");
  EXPECT_TRUE(view.end.end_of_stream) << Describe(view.end.error);
  EXPECT_EQ(view.counts, (KeyUpdateCounts{1, 2}))
      << "one answer through the kernel; OpenSSL's RX followed both of the peer's updates";
  ExpectRekeyCounters(stats_before, 1, 0);
}

// ---------------------------------------------------------------------------
// d. RX in the kernel (forced) and the peer updates its keys.

// A plain OpenSSL client sends data, a KeyUpdate (update_not_requested) and
// more data to a server with RX in the kernel. With rekey the server reads
// it all; without, the kernel would go on decrypting with the old key, so
// the server's Read ends with a named error and the peer gets an alert.
TEST(KeyUpdateRxKernelTest, PeerKeyUpdateWithRxInKernel) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  const bool rekey = CachedCapabilities().rekey;
  const auto stats_before = TlsStatSnapshot();
  Bytes server_received;
  RxEnd server_end;
  std::optional<Error> server_later_error;
  KeyUpdateCounts server_counts;
  TestServer server(ServerFor(), 1, [&](Connection& conn, ServerEnd& end) {
    server_end = ReadUntilEnd(conn, server_received);
    server_counts = CountsOf(conn);
    if (server_end.end_of_stream) {
      end.error = ShutdownText(conn);
      return;
    }
    std::array<std::byte, 16> buf{};
    auto again = conn.Read(buf);
    if (!again.ok()) server_later_error = again.error();
    WaitForPeerClose(conn);
  });
  ASSERT_TRUE(server.ok()) << server.listen_error();
  PlainClient client;
  ASSERT_EQ(ConnectPlain(server.port(), client), "");
  SSL* ssl = client.ssl.get();

  const Bytes before = RandomBytes(30000);
  const Bytes after = RandomBytes(30000);
  std::string client_error = SslWriteAll(ssl, before);
  if (client_error.empty()) client_error = SslKeyUpdate(ssl, SSL_KEY_UPDATE_NOT_REQUESTED);
  if (client_error.empty()) client_error = SslWriteAll(ssl, after);
  if (rekey) {
    ERR_clear_error();
    if (client_error.empty() && SSL_shutdown(ssl) < 0) client_error = "SSL_shutdown: " + OpenSslErrors();
    if (client_error.empty()) client_error = SslExpectCloseNotify(ssl);
  } else if (client_error.empty()) {
    client_error = SslExpectAlert(ssl, SSL_R_TLSV1_ALERT_INTERNAL_ERROR);  // After the server's tickets.
  }
  EXPECT_EQ(client_error, "") << RekeyText(rekey);
  client.Close();
  const ServerEnd& end = server.Join()[0];
  EXPECT_EQ(end.error, "");
  ExpectOffloaded(end, Offload::kKernel, Offload::kKernel, "the server (RxOffload::kOn, on every kernel)");

  if (rekey) {
    Bytes sent = before;
    Append(sent, after);
    EXPECT_TRUE(server_end.end_of_stream) << Describe(server_end.error);
    EXPECT_EQ(Sha256Hex(server_received), Sha256Hex(sent)) << "the data after the KeyUpdate should arrive too";
    EXPECT_EQ(server_counts, (KeyUpdateCounts{0, 1}));
    ExpectRekeyCounters(stats_before, 0, 1);
  } else {
    EXPECT_EQ(server_received.size(), before.size()) << "nothing after the KeyUpdate may be returned as data";
    EXPECT_EQ(Sha256Hex(server_received), Sha256Hex(before));
    ASSERT_TRUE(server_end.error) << "a KeyUpdate with RX in a kernel that cannot rekey must end the connection";
    EXPECT_EQ(server_end.error->category, ErrorCategory::kUnsupported) << server_end.error->ToString();
    EXPECT_NE(server_end.error->detail.find("KeyUpdate"), std::string::npos) << server_end.error->ToString();
    EXPECT_NE(server_end.error->detail.find("6.14"), std::string::npos) << server_end.error->ToString();
    EXPECT_EQ(server_counts, (KeyUpdateCounts{0, 0}));
    ASSERT_TRUE(server_later_error) << "a Read after the error must fail";
    EXPECT_EQ(server_later_error->category, ErrorCategory::kClosed) << server_later_error->ToString();
  }
}

// ---------------------------------------------------------------------------
// e. Malformed KeyUpdate after offload.

// MalformedKeyUpdate: one handshake record's payload and the alert it earns.
struct MalformedKeyUpdate {
  const char* name;
  std::vector<std::uint8_t> payload;
  int alert;
};

void PrintTo(const MalformedKeyUpdate& malformed, std::ostream* out) { *out << malformed.name; }

class KeyUpdateMalformedKernelTest : public ::testing::TestWithParam<MalformedKeyUpdate> {};

// The library's client (TX in the kernel) sends a handshake record by hand
// after some data; the server (RX in the kernel) must reject it with the
// alert RFC 8446 asks for, on every kernel (the checks come before any
// rekey), and the client must receive that alert.
TEST_P(KeyUpdateMalformedKernelTest, IsAnsweredWithTheRightAlert) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  const MalformedKeyUpdate& malformed = GetParam();
  Bytes server_received;
  RxEnd server_end;
  std::optional<Error> server_later_error;
  TestServer server(ServerFor(), 1, [&](Connection& conn, ServerEnd& /*end*/) {
    server_end = ReadUntilEnd(conn, server_received);
    std::array<std::byte, 16> buf{};
    auto again = conn.Read(buf);
    if (!again.ok()) server_later_error = again.error();
    WaitForPeerClose(conn);
  });
  ASSERT_TRUE(server.ok()) << server.listen_error();
  auto conn = ConnectTo(server.port(), ClientFor());
  ASSERT_TRUE(conn.ok()) << "Connect: " << conn.error().ToString();
  ASSERT_EQ(conn->tx(), Offload::kKernel) << "the record is sent through the client's kernel TX";

  const Bytes data = RandomBytes(3000);
  EXPECT_EQ(WriteAll(*conn, data), "");
  const ssize_t sent = detail::SendControlRecord(conn->fd(), uapi::kRecordHandshake, malformed.payload, MSG_NOSIGNAL);
  EXPECT_EQ(sent, static_cast<ssize_t>(malformed.payload.size()))
      << (sent < 0 ? std::strerror(static_cast<int>(-sent)) : "a short write");
  Bytes client_received;
  const RxEnd client_end = ReadUntilEnd(*conn, client_received);
  conn->Close();
  const ServerEnd& end = server.Join()[0];
  EXPECT_EQ(end.error, "");
  ExpectOffloaded(end, Offload::kKernel, Offload::kKernel, "the server");

  EXPECT_EQ(server_received, data) << "the data before the bad record should be delivered";
  ASSERT_TRUE(server_end.error) << "a malformed KeyUpdate must end the connection";
  EXPECT_EQ(server_end.error->category, ErrorCategory::kProtocol) << server_end.error->ToString();
  EXPECT_EQ(server_end.error->tls_alert, malformed.alert) << server_end.error->ToString();
  EXPECT_NE(server_end.error->detail.find(std::string(AlertName(malformed.alert))), std::string::npos)
      << "the error should name the alert: " << server_end.error->detail;
  ASSERT_TRUE(server_later_error);
  EXPECT_EQ(server_later_error->category, ErrorCategory::kClosed) << server_later_error->ToString();

  EXPECT_TRUE(client_received.empty());
  ASSERT_TRUE(client_end.error) << "the client should receive the server's alert, not "
                                << (client_end.end_of_stream ? "close_notify" : "nothing");
  EXPECT_EQ(client_end.error->category, ErrorCategory::kAlert) << client_end.error->ToString();
  EXPECT_EQ(client_end.error->tls_alert, malformed.alert) << client_end.error->ToString();
}

INSTANTIATE_TEST_SUITE_P(
    Records, KeyUpdateMalformedKernelTest,
    ::testing::Values(
        // request_update must be 0 or 1 (RFC 8446 4.6.3).
        MalformedKeyUpdate{"InvalidRequest", {kHandshakeKeyUpdate, 0, 0, 1, 7}, kAlertIllegalParameter},
        // A KeyUpdate body is exactly one byte; OpenSSL refuses a longer
        // one on its header (SSL_R_EXCESSIVE_MESSAGE_SIZE), and so does ktls.
        MalformedKeyUpdate{"TwoByteBody", {kHandshakeKeyUpdate, 0, 0, 2, 0, 0}, kAlertIllegalParameter},
        // Keys change at record boundaries: a second message after a
        // KeyUpdate in the same record (RFC 8446 5.1).
        MalformedKeyUpdate{"MessageAfterKeyUpdateInOneRecord",
                           {kHandshakeKeyUpdate, 0, 0, 1, 0, kHandshakeKeyUpdate, 0, 0, 1, 0},
                           kAlertUnexpectedMessage}),
    [](const ::testing::TestParamInfo<MalformedKeyUpdate>& param_info) { return std::string(param_info.param.name); });

}  // namespace
}  // namespace ktls::testing
