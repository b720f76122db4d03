// tests/kernel/offload_kernel_test.cc: the library's Listener and Connect
// moving data inside a real kernel, in every offload state.
//
// Each test checks the bytes (SHA-256 of what came back against what was
// sent), where each direction ended up on both ends (Connection::tx()/rx()),
// and, where the point is that the kernel did the work, /proc/net/tls_stat:
// a test here cannot pass on a connection that silently stayed in OpenSSL.
//
//  a. Echo in sizes around the 16 KiB record limit, 1 MiB and 64 MiB, for
//     every TLS 1.3 suite, both directions in the kernel on both ends.
//  b. SendFile from several offsets with TX in the kernel, in mixed mode
//     (TX kernel, RX OpenSSL) and with both directions in OpenSSL.
//  c. 100 connections at once.
//  d. Fallback per direction, provoked through the syscall seam: TLS_RX,
//     TLS_TX or TCP_ULP refused.
//     RxOffload::kAuto keeps RX in OpenSSL where the kernel cannot rekey.
//  e. TlsTxSw/TlsRxSw move by exactly the number of directions offloaded.
//  f. A client that vanishes in the middle of a 64 MiB SendFile: a named
//     error for that connection, and the listener serves on.
//
// The other end of every connection is the library too (tests/support/
// tls_peers.h); handshake shapes and plain OpenSSL peers are in
// offload_shapes_kernel_test.cc.
#include <fcntl.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <array>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <ostream>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "common/self_signed.h"
#include "core/openssl_ptr.h"
#include "kernel/tls_uapi.h"
#include "ktls/client.h"
#include "ktls/connection.h"
#include "ktls/kernel_state.h"
#include "ktls/offload.h"
#include "ktls/probe.h"
#include "ktls/server.h"
#include "ktls/types.h"
#include "tests/support/fault_syscalls.h"
#include "tests/support/kernel_env.h"
#include "tests/support/sockets.h"
#include "tests/support/tls13_suites.h"
#include "tests/support/tls_peers.h"

namespace ktls::testing {
namespace {

namespace uapi = ::ktls::detail::uapi;
using Bytes = std::vector<std::uint8_t>;
using detail::UniqueSslCtx;

constexpr std::size_t kKiB = 1024;
constexpr std::size_t kMiB = 1024 * kKiB;

// CounterDelta: how much a /proc/net/tls_stat counter moved (-1: missing).
long long CounterDelta(const std::map<std::string, long long>& before, const std::map<std::string, long long>& after,
                       const std::string& name) {
  const auto b = before.find(name);
  const auto a = after.find(name);
  if (b == before.end() || a == after.end()) return -1;
  return a->second - b->second;
}

// TlsStatSnapshot: /proc/net/tls_stat now, after the process-wide probe has
// run (the probe's own sockets count too, so it must not run in between).
std::map<std::string, long long> TlsStatSnapshot() {
  (void)CachedCapabilities();
  return ReadTlsStat();
}

void ExpectSwCountersMoved(const std::map<std::string, long long>& before, long long tx_sw, long long rx_sw) {
  const auto after = ReadTlsStat();
  ASSERT_TRUE(after.count("TlsTxSw") && after.count("TlsRxSw"))
      << "/proc/net/tls_stat should list TlsTxSw and TlsRxSw where kTLS is available";
  EXPECT_EQ(CounterDelta(before, after, "TlsTxSw"), tx_sw)
      << "TlsTxSw should count each socket whose TX went to software kTLS";
  EXPECT_EQ(CounterDelta(before, after, "TlsRxSw"), rx_sw)
      << "TlsRxSw should count each socket whose RX went to software kTLS";
}

// --- a. Every size, every suite ----------------------------------------------

class OffloadSuiteKernelTest : public ::testing::TestWithParam<SuiteCase> {};

TEST_P(OffloadSuiteKernelTest, EchoesEachSizeWithBothDirectionsInKernel) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  KTLS_REQUIRE_CIPHER_OR_SKIP(TlsVersion::kTls13, GetParam().cipher);
  // Empty, one byte, one byte short of a full record, a full record, one
  // byte into the second record, and many records.
  constexpr std::array<std::size_t, 6> kSizes = {0, 1, 16383, 16384, 16385, kMiB};
  const UniqueSslCtx server_ctx = NewTestContext(true, GetParam().name);
  const UniqueSslCtx client_ctx = NewTestContext(false, GetParam().name);
  ASSERT_TRUE(server_ctx && client_ctx) << "building the " << GetParam().name << " contexts";
  FallbackLog fallbacks;
  ServerConfig server_config;
  server_config.offload.rx = RxOffload::kOn;  // Kernel RX on 6.1 too (kAuto would keep it in OpenSSL).
  server_config.ssl_ctx = server_ctx.get();
  server_config.offload.on_fallback = fallbacks.Callback();
  TestServer server(server_config, kSizes.size(), Echo);
  ASSERT_TRUE(server.ok()) << server.listen_error();

  std::size_t num_connected = 0;
  for (std::size_t size : kSizes) {
    SCOPED_TRACE("echo of " + std::to_string(size) + " bytes");
    ClientConfig client_config = ClientFor();
    client_config.ssl_ctx = client_ctx.get();
    client_config.offload.on_fallback = fallbacks.Callback();
    auto conn = ConnectTo(server.port(), client_config);
    ASSERT_TRUE(conn.ok()) << "Connect: " << conn.error().ToString();
    ASSERT_TRUE(server.WaitHandshaken(++num_connected)) << "the server should have finished handshake and offload";
    ExpectOffloaded(conn->tx(), conn->rx(), Offload::kKernel, Offload::kKernel, "the client");
    EXPECT_EQ(conn->session().cipher_suite, GetParam().name);
    EXPECT_EQ(conn->session().protocol, "TLSv1.3");
    const Bytes data = RandomBytes(size);
    Bytes echoed;
    ASSERT_EQ(EchoThrough(*conn, data, Pace::kConcurrent, echoed), "") << "the echo should complete cleanly";
    EXPECT_EQ(echoed.size(), data.size());
    EXPECT_EQ(Sha256Hex(echoed), Sha256Hex(data)) << "the echoed bytes should be the bytes sent";
  }
  const std::vector<ServerEnd>& ends = server.Join();
  for (std::size_t i = 0; i < ends.size(); ++i) {
    SCOPED_TRACE("server side of the echo of " + std::to_string(kSizes[i]) + " bytes");
    EXPECT_EQ(ends[i].error, "");
    ExpectOffloaded(ends[i], Offload::kKernel, Offload::kKernel, "the server");
    EXPECT_EQ(ends[i].bytes_in, kSizes[i]);
    EXPECT_EQ(ends[i].session.cipher_suite, GetParam().name);
  }
  EXPECT_TRUE(fallbacks.reports().empty()) << "nothing should have fallen back: "
                                           << (fallbacks.reports().empty() ? "" : fallbacks.reports()[0].reason);
}

INSTANTIATE_TEST_SUITE_P(Tls13, OffloadSuiteKernelTest, ::testing::ValuesIn(kTls13Suites),
                         [](const ::testing::TestParamInfo<SuiteCase>& param_info) {
                           std::string name;
                           for (char c : CipherName(param_info.param.cipher)) name.push_back(c);
                           return name;
                         });

// 64 MiB, one suite (AES-128-GCM): UML's kernel AES is slow, and every byte
// is encrypted and decrypted twice.
TEST(OffloadKernelTest, Echoes64MiBWithBothDirectionsInKernel) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  KTLS_REQUIRE_CIPHER_OR_SKIP(TlsVersion::kTls13, Cipher::kAes128Gcm);
  const UniqueSslCtx server_ctx = NewTestContext(true, "TLS_AES_128_GCM_SHA256");
  const UniqueSslCtx client_ctx = NewTestContext(false, "TLS_AES_128_GCM_SHA256");
  ASSERT_TRUE(server_ctx && client_ctx);
  ServerConfig server_config;
  server_config.offload.rx = RxOffload::kOn;  // Kernel RX on 6.1 too (kAuto would keep it in OpenSSL).
  server_config.ssl_ctx = server_ctx.get();
  TestServer server(server_config, 1, Echo);
  ASSERT_TRUE(server.ok()) << server.listen_error();
  ClientConfig client_config = ClientFor();
  client_config.ssl_ctx = client_ctx.get();
  auto conn = ConnectTo(server.port(), client_config);
  ASSERT_TRUE(conn.ok()) << "Connect: " << conn.error().ToString();
  ASSERT_TRUE(server.WaitHandshaken(1)) << "the server should have finished handshake and offload";
  ExpectOffloaded(conn->tx(), conn->rx(), Offload::kKernel, Offload::kKernel, "the client");

  const Bytes data = RandomBytes(64 * kMiB);
  Bytes echoed;
  echoed.reserve(data.size());
  ASSERT_EQ(EchoThrough(*conn, data, Pace::kConcurrent, echoed), "");
  EXPECT_EQ(echoed.size(), data.size());
  EXPECT_EQ(Sha256Hex(echoed), Sha256Hex(data)) << "the echoed 64 MiB should be the bytes sent";
  const ServerEnd& end = server.Join()[0];
  EXPECT_EQ(end.error, "");
  ExpectOffloaded(end, Offload::kKernel, Offload::kKernel, "the server");
  EXPECT_EQ(end.bytes_in, data.size());
}

// --- b. SendFile --------------------------------------------------------------


// FileRange: one SendFile call's worth of a file.
struct FileRange {
  std::size_t offset;
  std::size_t len;
};

enum class SendFileMode {
  kBothInKernel,  // TX and RX in the kernel.
  kMixed,         // The server offloads TX only (OffloadOptions::rx = false).
  kUser,          // TLS_TX refused through the seam: everything in OpenSSL.
};

std::string SendFileModeName(const ::testing::TestParamInfo<SendFileMode>& param_info) {
  switch (param_info.param) {
    case SendFileMode::kBothInKernel: return "BothInKernel";
    case SendFileMode::kMixed: return "TxKernelRxUser";
    case SendFileMode::kUser: return "BothInOpenSsl";
  }
  return "unknown";
}

class OffloadSendFileKernelTest : public ::testing::TestWithParam<SendFileMode> {};

TEST_P(OffloadSendFileKernelTest, SendsFileRangesFromSeveralOffsets) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  const SendFileMode mode = GetParam();
  const TempFile file(3 * kMiB + 12345);
  ASSERT_TRUE(file.ok()) << "cannot create the temporary file";
  // From the start, one byte in, one byte short of a record, and deep into
  // the file up to its end; lengths that end mid-record.
  const std::array<FileRange, 4> ranges = {{
      {0, 100000},
      {1, 16384},
      {16383, 50001},
      {2 * kMiB + 4097, kMiB + 12345 - 4097},
  }};
  Bytes expected;
  for (const FileRange& range : ranges) {
    const auto slice = file.Slice(range.offset, range.len);
    expected.insert(expected.end(), slice.begin(), slice.end());
  }

  std::optional<ScopedFault> fault;
  if (mode == SendFileMode::kUser) {
    fault.emplace(Fault{Syscall::kSetSockOpt, EINVAL, uapi::kSolTls, uapi::kTlsTx, 0, -1});
  }
  FallbackLog server_fallbacks;
  ServerConfig server_config = ServerFor();
  server_config.offload.rx = mode != SendFileMode::kMixed ? RxOffload::kOn : RxOffload::kOff;
  server_config.offload.on_fallback = server_fallbacks.Callback();
  TestServer server(server_config, 1, [&](Connection& conn, ServerEnd& end) {
    for (const FileRange& range : ranges) {
      std::size_t sent = 0;
      while (sent < range.len) {
        auto wrote = conn.SendFile(file.fd(), static_cast<off_t>(range.offset + sent), range.len - sent);
        if (!wrote.ok() || wrote->bytes == 0) {
          end.error = "SendFile at offset " + std::to_string(range.offset + sent) + ": " +
                      (wrote.ok() ? std::string("no progress") : wrote.error().ToString());
          return;
        }
        sent += wrote->bytes;
      }
      end.bytes_out += sent;
    }
    if (end.error = ShutdownText(conn); !end.error.empty()) return;
    Bytes rest;
    end.error = ReadToEnd(conn, rest);  // The client's close_notify.
  });
  ASSERT_TRUE(server.ok()) << server.listen_error();

  auto conn = ConnectTo(server.port(), ClientFor());
  ASSERT_TRUE(conn.ok()) << "Connect: " << conn.error().ToString();
  Bytes received;
  EXPECT_EQ(ReadToEnd(*conn, received), "");
  EXPECT_EQ(ShutdownText(*conn), "");
  EXPECT_EQ(received.size(), expected.size());
  EXPECT_EQ(Sha256Hex(received), Sha256Hex(expected)) << "the client should receive exactly the file ranges sent";
  const Offload client_tx = conn->tx();
  const Offload client_rx = conn->rx();
  conn->Close();  // Whatever happened, the server stops waiting for us now.

  const ServerEnd& end = server.Join()[0];
  EXPECT_EQ(end.error, "");
  EXPECT_EQ(end.bytes_out, expected.size());
  switch (mode) {
    case SendFileMode::kBothInKernel:
      ExpectOffloaded(end, Offload::kKernel, Offload::kKernel, "the server");
      EXPECT_TRUE(server_fallbacks.reports().empty());
      break;
    case SendFileMode::kMixed:
      ExpectOffloaded(end, Offload::kKernel, Offload::kUser, "the server (RX offload off)");
      ASSERT_EQ(server_fallbacks.reports().size(), 1u) << "on_fallback should say RX stayed in OpenSSL";
      EXPECT_NE(server_fallbacks.reports()[0].reason.find("RX offload is turned off"), std::string::npos)
          << server_fallbacks.reports()[0].reason;
      break;
    case SendFileMode::kUser:
      ExpectOffloaded(end, Offload::kUser, Offload::kUser, "the server (TLS_TX refused)");
      ExpectOffloaded(client_tx, client_rx, Offload::kUser, Offload::kUser, "the client (TLS_TX refused)");
      ASSERT_EQ(server_fallbacks.reports().size(), 1u);
      EXPECT_NE(server_fallbacks.reports()[0].reason.find("TLS_TX"), std::string::npos)
          << server_fallbacks.reports()[0].reason;
      break;
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, OffloadSendFileKernelTest,
                         ::testing::Values(SendFileMode::kBothInKernel, SendFileMode::kMixed, SendFileMode::kUser),
                         SendFileModeName);

// --- c. Many connections at once ---------------------------------------------

TEST(OffloadKernelTest, HundredConcurrentConnectionsEchoWithBothDirectionsInKernel) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  constexpr std::size_t kNumConnections = 100;
  constexpr std::size_t kPayloadLen = 64 * kKiB;
  ServerConfig server_config = ServerFor();
  server_config.handshake_timeout = std::chrono::seconds(60);  // One CPU, 100 handshakes.
  TestServer server(server_config, kNumConnections, Echo);
  ASSERT_TRUE(server.ok()) << server.listen_error();

  std::vector<std::string> outcomes(kNumConnections);
  std::vector<std::thread> clients;
  for (std::size_t i = 0; i < kNumConnections; ++i) {
    clients.emplace_back([&outcomes, i, port = server.port()] {
      ClientConfig config = ClientFor();
      config.handshake_timeout = std::chrono::seconds(60);
      auto conn = ConnectTo(port, config);
      if (!conn.ok()) {
        outcomes[i] = "Connect: " + conn.error().ToString();
        return;
      }
      if (conn->tx() != Offload::kKernel || conn->rx() != Offload::kKernel) {
        outcomes[i] = "client offload " + ExpectedOffload(conn->tx(), conn->rx()) + ", expected both in the kernel";
        return;
      }
      const Bytes data = RandomBytes(kPayloadLen);  // Different on every connection.
      Bytes echoed;
      outcomes[i] = EchoThrough(*conn, data, Pace::kLockstep, echoed);
      if (outcomes[i].empty() && Sha256Hex(echoed) != Sha256Hex(data)) outcomes[i] = "echoed bytes differ";
    });
  }
  for (std::thread& client : clients) client.join();
  for (std::size_t i = 0; i < kNumConnections; ++i) EXPECT_EQ(outcomes[i], "") << "client " << i;
  const std::vector<ServerEnd>& ends = server.Join();
  for (std::size_t i = 0; i < ends.size(); ++i) {
    SCOPED_TRACE("server connection " + std::to_string(i));
    EXPECT_EQ(ends[i].error, "");
    ExpectOffloaded(ends[i], Offload::kKernel, Offload::kKernel, "the server");
    EXPECT_EQ(ends[i].bytes_in, kPayloadLen);
  }
}

// --- d. Fallback per direction -----------------------------------------------

// RefusedOption: which setsockopt the seam refuses (for every socket, so
// both ends fall back the same way), and what must follow.
struct RefusedOption {
  const char* name;  // As the fallback reason must spell it.
  int level;
  int option;
  int err;
  Offload tx;  // Where each direction must end up.
  Offload rx;
  Pace pace;  // How the echo drives the connection.
};

void PrintTo(const RefusedOption& refused, std::ostream* out) { *out << refused.name << " refused"; }

class OffloadFallbackKernelTest : public ::testing::TestWithParam<RefusedOption> {};

TEST_P(OffloadFallbackKernelTest, EchoesWithEachDirectionWhereItEndedUp) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  const RefusedOption& refused = GetParam();
  const auto stats_before = TlsStatSnapshot();
  ScopedFault fault(Fault{Syscall::kSetSockOpt, refused.err, refused.level, refused.option, 0, -1});
  FallbackLog fallbacks;
  ServerConfig server_config = ServerFor();
  server_config.offload.on_fallback = fallbacks.Callback();
  TestServer server(server_config, 1, Echo);
  ASSERT_TRUE(server.ok()) << server.listen_error();
  ClientConfig client_config = ClientFor();
  client_config.offload.on_fallback = fallbacks.Callback();
  auto conn = ConnectTo(server.port(), client_config);
  ASSERT_TRUE(conn.ok()) << "Connect: " << conn.error().ToString();
  ASSERT_TRUE(server.WaitHandshaken(1)) << "the server should have finished handshake and offload";
  ExpectOffloaded(conn->tx(), conn->rx(), refused.tx, refused.rx, "the client");

  // Several records each way; in mixed mode the kernel encrypts what
  // OpenSSL decrypts at the other end, and the other way round.
  const Bytes data = RandomBytes(kMiB + 16385);
  Bytes echoed;
  ASSERT_EQ(EchoThrough(*conn, data, refused.pace, echoed), "");
  EXPECT_EQ(Sha256Hex(echoed), Sha256Hex(data)) << "the echoed bytes should be the bytes sent";
  const ServerEnd& end = server.Join()[0];
  EXPECT_EQ(end.error, "");
  ExpectOffloaded(end, refused.tx, refused.rx, "the server");

  const std::vector<OffloadReport> reports = fallbacks.reports();
  ASSERT_EQ(reports.size(), 2u) << "on_fallback should be called once on each end";
  for (const OffloadReport& report : reports) {
    ExpectOffloaded(report.tx, report.rx, refused.tx, refused.rx, "the fallback report");
    EXPECT_NE(report.reason.find(refused.name), std::string::npos)
        << "the fallback reason should name " << refused.name << ": " << report.reason;
    // Each direction that stayed says so in the fixed set too.
    EXPECT_STREQ(FallbackReasonName(report.tx_reason),
                 FallbackReasonName(refused.tx == Offload::kKernel ? FallbackReason::kNone
                                                                   : FallbackReason::kKernelRefused));
    EXPECT_STREQ(FallbackReasonName(report.rx_reason), FallbackReasonName(FallbackReason::kKernelRefused));
  }
  // The connection keeps them: kernel_state().
  EXPECT_STREQ(FallbackReasonName(conn->kernel_state().rx.why_not), FallbackReasonName(FallbackReason::kKernelRefused));
  // Only what reached the kernel counts: TX on both ends in mixed mode.
  const long long kernel_tx = refused.tx == Offload::kKernel ? 2 : 0;
  ExpectSwCountersMoved(stats_before, kernel_tx, 0);
}

INSTANTIATE_TEST_SUITE_P(
    Refused, OffloadFallbackKernelTest,
    ::testing::Values(
        RefusedOption{"TLS_RX", uapi::kSolTls, uapi::kTlsRx, EINVAL, Offload::kKernel, Offload::kUser,
                      Pace::kConcurrent},
        RefusedOption{"TLS_TX", uapi::kSolTls, uapi::kTlsTx, EINVAL, Offload::kUser, Offload::kUser,
                      Pace::kConcurrent},
        RefusedOption{"TCP_ULP", uapi::kSolTcp, uapi::kTcpUlp, ENOENT, Offload::kUser, Offload::kUser,
                      Pace::kLockstep}),
    [](const ::testing::TestParamInfo<RefusedOption>& param_info) {
      std::string name;
      for (const char* c = param_info.param.name; *c != '\0'; ++c) {
        if (*c != '_') name.push_back(*c);
      }
      return name;
    });

// RxOffload::kAuto (the default) puts RX in the kernel only where the kernel
// can take new RX keys (Linux 6.14+, Capabilities::rekey); elsewhere RX
// stays in OpenSSL, on_fallback says why, and the connection still works.
TEST(OffloadFallbackKernelTest, RxOffloadAutoFollowsKernelRekeySupport) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  const bool rekey = CachedCapabilities().rekey;
  const Offload want_rx = rekey ? Offload::kKernel : Offload::kUser;
  FallbackLog fallbacks;
  ServerConfig server_config = ServerFor();
  server_config.offload.rx = RxOffload::kAuto;
  server_config.offload.on_fallback = fallbacks.Callback();
  TestServer server(server_config, 1, Echo);
  ASSERT_TRUE(server.ok()) << server.listen_error();
  ClientConfig client_config = ClientFor();
  client_config.offload.rx = RxOffload::kAuto;
  client_config.offload.on_fallback = fallbacks.Callback();
  auto conn = ConnectTo(server.port(), client_config);
  ASSERT_TRUE(conn.ok()) << "Connect: " << conn.error().ToString();
  ASSERT_TRUE(server.WaitHandshaken(1)) << "the server should have finished handshake and offload";
  const std::string rekey_text = rekey ? " (the kernel can rekey)" : " (the kernel cannot rekey)";
  ExpectOffloaded(conn->tx(), conn->rx(), Offload::kKernel, want_rx, "the client" + rekey_text);
  const Bytes data = RandomBytes(kMiB + 1);
  Bytes echoed;
  ASSERT_EQ(EchoThrough(*conn, data, Pace::kConcurrent, echoed), "");
  EXPECT_EQ(Sha256Hex(echoed), Sha256Hex(data)) << "the echoed bytes should be the bytes sent";
  const ServerEnd& end = server.Join()[0];
  EXPECT_EQ(end.error, "");
  ExpectOffloaded(end, Offload::kKernel, want_rx, "the server" + rekey_text);
  const std::vector<OffloadReport> reports = fallbacks.reports();
  ASSERT_EQ(reports.size(), rekey ? 0u : 2u) << "on_fallback is called exactly when RX stays in OpenSSL";
  for (const OffloadReport& report : reports) {
    EXPECT_NE(report.reason.find("6.14"), std::string::npos)
        << "the reason should say which kernel can take RX: " << report.reason;
    EXPECT_STREQ(FallbackReasonName(report.tx_reason), "none");
    EXPECT_STREQ(FallbackReasonName(report.rx_reason), "no_rekey");
  }
  EXPECT_STREQ(FallbackReasonName(conn->kernel_state().rx.why_not), rekey ? "none" : "no_rekey");
}

// --- e. /proc/net/tls_stat ---------------------------------------------------

// One connection with both directions offloaded on both ends adds 2 to
// TlsTxSw and TlsRxSw; one whose server keeps RX in OpenSSL adds 2 and 1.
TEST(OffloadKernelTest, TlsStatCountsEveryOffloadedDirection) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  for (const bool server_rx : {true, false}) {
    SCOPED_TRACE(server_rx ? "server RX offload on" : "server RX offload off");
    const auto stats_before = TlsStatSnapshot();
    ServerConfig server_config = ServerFor();
    server_config.offload.rx = server_rx ? RxOffload::kOn : RxOffload::kOff;
    TestServer server(server_config, 1, Echo);
    ASSERT_TRUE(server.ok()) << server.listen_error();
    auto conn = ConnectTo(server.port(), ClientFor());
    ASSERT_TRUE(conn.ok()) << "Connect: " << conn.error().ToString();
    ASSERT_TRUE(server.WaitHandshaken(1)) << "the server should have finished handshake and offload";
    ExpectOffloaded(conn->tx(), conn->rx(), Offload::kKernel, Offload::kKernel, "the client");
    const Bytes data = RandomBytes(20000);
    Bytes echoed;
    ASSERT_EQ(EchoThrough(*conn, data, Pace::kConcurrent, echoed), "");
    EXPECT_EQ(Sha256Hex(echoed), Sha256Hex(data));
    const ServerEnd& end = server.Join()[0];
    EXPECT_EQ(end.error, "");
    ExpectOffloaded(end, Offload::kKernel, server_rx ? Offload::kKernel : Offload::kUser, "the server");
    ExpectSwCountersMoved(stats_before, 2, server_rx ? 2 : 1);
  }
}

// --- f. A client that vanishes in the middle of a sendfile -------------------

// The server SendFile()s 64 MiB; the client reads 1 MiB of it and vanishes
// (closing with unread data: a reset). The server's SendFile must fail with
// a named error, EPIPE or ECONNRESET, having sent only part of the file, and
// the listener must go on serving: the next client echoes with both
// directions in the kernel on both ends. tls_stat counts every direction of
// both connections, both ends.
TEST(OffloadKernelTest, SendFileToAVanishingClientFailsAndTheListenerServesOn) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  constexpr std::size_t kFileLen = 64 * kMiB;
  constexpr std::size_t kReadBeforeVanishing = kMiB;
  constexpr std::size_t kPiece = 256 * kKiB;
  const TempFile file(kFileLen);
  ASSERT_TRUE(file.ok()) << "cannot create the temporary file";
  const auto stats_before = TlsStatSnapshot();
  std::atomic<int> num_handled{0};
  std::size_t sent = 0;
  std::optional<Error> send_error;
  TestServer server(ServerFor(), 2, [&](Connection& conn, ServerEnd& end) {
    if (num_handled++ > 0) return Echo(conn, end);
    while (sent < kFileLen) {
      // In pieces, as a file server does: a call during which the client
      // vanished fails as a whole (how much of it arrived is unknowable),
      // so pieces show the progress made before.
      auto wrote = conn.SendFile(file.fd(), static_cast<off_t>(sent), std::min(kFileLen - sent, kPiece));
      if (!wrote.ok()) {
        send_error = wrote.error();
        return;
      }
      if (wrote->bytes == 0) {
        end.error = "SendFile made no progress";
        return;
      }
      sent += wrote->bytes;
    }
  });
  ASSERT_TRUE(server.ok()) << server.listen_error();

  auto vanishing = ConnectTo(server.port(), ClientFor());
  ASSERT_TRUE(vanishing.ok()) << "Connect: " << vanishing.error().ToString();
  Bytes received;
  ASSERT_EQ(ReadExactly(*vanishing, kReadBeforeVanishing, received), "");
  EXPECT_EQ(Sha256Hex(received), Sha256Hex(file.Slice(0, kReadBeforeVanishing)));
  const linger reset{1, 0};
  ASSERT_EQ(::setsockopt(vanishing->fd(), SOL_SOCKET, SO_LINGER, &reset, sizeof(reset)), 0);
  vanishing->Close();

  auto next = ConnectTo(server.port(), ClientFor());
  ASSERT_TRUE(next.ok()) << "Connect: " << next.error().ToString();
  ExpectOffloaded(next->tx(), next->rx(), Offload::kKernel, Offload::kKernel, "the next client");
  const Bytes data = RandomBytes(256 * kKiB);
  Bytes echoed;
  ASSERT_EQ(EchoThrough(*next, data, Pace::kConcurrent, echoed), "");
  EXPECT_EQ(Sha256Hex(echoed), Sha256Hex(data));

  const std::vector<ServerEnd>& ends = server.Join();
  EXPECT_EQ(ends[0].error, "");
  ExpectOffloaded(ends[0], Offload::kKernel, Offload::kKernel, "the server, sending the file");
  ASSERT_TRUE(send_error) << "SendFile should fail once the client is gone; it sent " << sent << " bytes";
  EXPECT_EQ(send_error->category, ErrorCategory::kIo) << send_error->ToString();
  EXPECT_TRUE(send_error->sys_errno == EPIPE || send_error->sys_errno == ECONNRESET) << send_error->ToString();
  // What the client read came from the pieces reported sent and, at most,
  // the one piece that failed.
  EXPECT_GE(sent + kPiece, kReadBeforeVanishing);
  EXPECT_LT(sent, kFileLen);
  EXPECT_EQ(ends[1].error, "");
  ExpectOffloaded(ends[1], Offload::kKernel, Offload::kKernel, "the server, echoing");
  ExpectSwCountersMoved(stats_before, 4, 4);
}

}  // namespace
}  // namespace ktls::testing
