// tests/kernel/rx_no_pad_kernel_test.cc: OffloadOptions::rx_expect_no_pad
// (TLS_RX_EXPECT_NO_PAD, Linux 6.0+, TLS 1.3 RX).
//
// The probe decides whether the kernel does it right: 7.2 does; 6.1 accepts
// the option but returns wrong bytes for padded records, so there it stays
// off and KernelState says why. Where it is on, data from a peer that does
// not pad comes through with no retry, and a peer that pads anyway still
// reads right: the kernel decrypts its records a second time
// (TlsDecryptRetry, TlsRxNoPadViolation in /proc/net/tls_stat).
#include <openssl/err.h>
#include <openssl/ssl.h>

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "core/openssl_ptr.h"
#include "ktls/connection.h"
#include "ktls/kernel_state.h"
#include "ktls/offload.h"
#include "ktls/probe.h"
#include "ktls/server.h"
#include "tests/support/kernel_env.h"
#include "tests/support/sockets.h"
#include "tests/support/tls_peers.h"

namespace ktls::testing {
namespace {

using Bytes = std::vector<std::uint8_t>;
using detail::UniqueSsl;
using detail::UniqueSslCtx;
using namespace plain_openssl;  // NOLINT: OpenSslErrors, SslWriteAll, ... (tls_peers.h)

// UmlKernel: "6.1" or "7.2" inside the test kernels, "" elsewhere.
std::string UmlKernel() {
  const char* kernel = std::getenv("KTLS_UML_KERNEL");
  return kernel != nullptr ? kernel : "";
}

long long Delta(const std::map<std::string, long long>& before, const std::map<std::string, long long>& after,
                const std::string& name) {
  const auto b = before.find(name);
  const auto a = after.find(name);
  return (a == after.end() ? 0 : a->second) - (b == before.end() ? 0 : b->second);
}

// NoPadServer: ServerFor() (RX in the kernel) with rx_expect_no_pad, whose
// handler keeps the connection's KernelState and reads to the end.
ServerConfig NoPadConfig() {
  ServerConfig config = ServerFor();
  config.offload.rx_expect_no_pad = true;
  return config;
}

Handler ReadKeepingState(KernelState& state, Bytes& received) {
  return [&state, &received](Connection& conn, ServerEnd& end) {
    state = conn.kernel_state();
    end.error = ReadToEnd(conn, received, 64 * 1024);
    if (end.error.empty()) end.error = ShutdownText(conn);
  };
}

// SendAndClose: the library's client connects to server, sends data and
// close_notify, and reads to the server's close_notify.
std::string SendAndClose(TestServer& server, const Bytes& data) {
  auto conn = ConnectTo(server.port(), ClientFor());
  if (!conn.ok()) return "connect: " + conn.error().ToString();
  if (!server.WaitHandshaken(1)) return "the server did not finish its handshake";  // Before our FIN can reach it.
  if (std::string error = WriteAll(*conn, data); !error.empty()) return error;
  if (std::string error = ShutdownText(*conn); !error.empty()) return error;
  Bytes nothing;
  return ReadToEnd(*conn, nothing);
}

// The probe's verdict for the two test kernels.
TEST(RxNoPadKernelTest, ProbeVerdictMatchesTheKernel) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  const Capabilities& caps = CachedCapabilities();
  if (UmlKernel() == "6.1") {
    EXPECT_FALSE(caps.rx_no_pad) << "6.1 returns wrong bytes for padded records with TLS_RX_EXPECT_NO_PAD";
    EXPECT_NE(caps.rx_no_pad_reason.find("wrong bytes"), std::string::npos) << caps.rx_no_pad_reason;
  } else if (UmlKernel() == "7.2") {
    EXPECT_TRUE(caps.rx_no_pad) << caps.rx_no_pad_reason;
    EXPECT_EQ(caps.rx_no_pad_reason, "");
  } else {
    EXPECT_EQ(caps.rx_no_pad, caps.rx_no_pad_reason.empty()) << caps.rx_no_pad_reason;
  }
}

// A peer that does not pad (the library's client): the data is right, no
// record is decrypted twice, and the connection says whether no-pad is on
// (with the kernel's own view in sock_diag) or why not.
TEST(RxNoPadKernelTest, OnWhereSafeElseRefusedWithTheReason) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  const Capabilities& caps = CachedCapabilities();
  KernelState state;
  Bytes received;
  TestServer server(NoPadConfig(), 1, ReadKeepingState(state, received));
  ASSERT_TRUE(server.ok()) << server.listen_error();
  const auto before = ReadTlsStat();
  const Bytes data = RandomBytes(300'000);
  EXPECT_EQ(SendAndClose(server, data), "");
  const ServerEnd& end = server.Join()[0];
  const auto after = ReadTlsStat();
  EXPECT_EQ(end.error, "");
  ExpectOffloaded(end, Offload::kKernel, Offload::kKernel, "the server");
  EXPECT_EQ(Sha256Hex(received), Sha256Hex(data));

  EXPECT_EQ(state.rx_no_pad, caps.rx_no_pad) << state.rx_no_pad_why_not;
  if (caps.rx_no_pad) {
    EXPECT_EQ(state.rx_no_pad_why_not, "");
    ASSERT_TRUE(state.ulp.reported) << state.ulp.why_not;
    EXPECT_TRUE(state.ulp.rx_no_pad) << "sock_diag should show TLS_INFO_RX_NO_PAD";
    // The kernel guesses "data, no padding" for every record; a data
    // record without padding proves it right. (It still decrypts a
    // control record twice: close_notify is the one here.)
    EXPECT_EQ(Delta(before, after, "TlsRxNoPadViolation"), 0) << "a peer that does not pad needs no retry";
    EXPECT_LE(Delta(before, after, "TlsDecryptRetry"), 1) << "only the close_notify record is decrypted twice";
  } else {
    EXPECT_NE(state.rx_no_pad_why_not.find("not safe on this kernel: " + caps.rx_no_pad_reason), std::string::npos)
        << state.rx_no_pad_why_not;
    EXPECT_FALSE(state.ulp.rx_no_pad);
  }
}

// A peer that pads every record (OpenSSL's block padding) to a server that
// expects no padding: every byte still arrives right. Where no-pad is on,
// the kernel had to decrypt those records again, and counts it.
TEST(RxNoPadKernelTest, PaddingPeerStillReadsRight) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  const Capabilities& caps = CachedCapabilities();
  KernelState state;
  Bytes received;
  TestServer server(NoPadConfig(), 1, ReadKeepingState(state, received));
  ASSERT_TRUE(server.ok()) << server.listen_error();
  const UniqueSslCtx client_ctx = NewTestContext(false);
  ASSERT_TRUE(client_ctx);
  UniqueFd fd = ConnectLoopback(server.port(), kIoTimeout);
  ASSERT_TRUE(fd);
  UniqueSsl ssl(SSL_new(client_ctx.get()));
  ASSERT_TRUE(ssl && SSL_set_fd(ssl.get(), fd.get()) == 1);
  ASSERT_EQ(SSL_set_block_padding(ssl.get(), 1024), 1);
  ERR_clear_error();
  ASSERT_EQ(SSL_connect(ssl.get()), 1) << OpenSslErrors();
  ASSERT_TRUE(server.WaitHandshaken(1));

  const auto before = ReadTlsStat();
  const Bytes data = RandomBytes(200'000);
  constexpr std::size_t kWrite = 1000;  // Each record padded to 1024 bytes.
  std::size_t num_records = 0;
  for (std::size_t offset = 0; offset < data.size(); offset += kWrite, ++num_records) {
    ASSERT_EQ(SslWriteAll(ssl.get(), std::span(data).subspan(offset, std::min(kWrite, data.size() - offset))), "");
  }
  ERR_clear_error();
  EXPECT_GE(SSL_shutdown(ssl.get()), 0) << OpenSslErrors();
  EXPECT_EQ(SslExpectCloseNotify(ssl.get()), "");
  const ServerEnd& end = server.Join()[0];
  const auto after = ReadTlsStat();
  EXPECT_EQ(end.error, "");
  ExpectOffloaded(end, Offload::kKernel, Offload::kKernel, "the server");
  EXPECT_EQ(Sha256Hex(received), Sha256Hex(data)) << "padded records must read right whatever the kernel guessed";
  EXPECT_EQ(state.rx_no_pad, caps.rx_no_pad) << state.rx_no_pad_why_not;
  const long long retries = Delta(before, after, "TlsDecryptRetry");
  const long long violations = Delta(before, after, "TlsRxNoPadViolation");
  if (caps.rx_no_pad) {
    // Every record was padded, the close_notify too; each one the kernel
    // decrypted straight into the reader's buffer, it decrypted again.
    EXPECT_GT(violations, 0) << "the kernel should have retried padded records";
    EXPECT_LE(violations, static_cast<long long>(num_records + 1));
    EXPECT_GE(retries, violations);
  } else {
    EXPECT_EQ(retries, 0) << "without no-pad there is nothing to retry";
  }
}

// The peer's KeyUpdate installs a new RX key (Linux 6.14+): no-pad stays
// on under it, as the kernel itself reports. Where the kernel cannot
// rekey or no-pad is unsafe (6.1), there is no such connection to make;
// the other tests cover what happens there.
TEST(RxNoPadKernelTest, StaysOnAcrossThePeersKeyUpdate) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  const Capabilities& caps = CachedCapabilities();
  if (!caps.rekey || !caps.rx_no_pad) {
    EXPECT_NE(UmlKernel(), "7.2") << "7.2 rekeys and does no-pad right";
    return;
  }
  KernelState state;
  Bytes received;
  TestServer server(NoPadConfig(), 1, [&](Connection& conn, ServerEnd& end) {
    end.error = ReadToEnd(conn, received, 64 * 1024);
    state = conn.kernel_state();
    if (end.error.empty()) end.error = ShutdownText(conn);
  });
  ASSERT_TRUE(server.ok()) << server.listen_error();
  auto conn = ConnectTo(server.port(), ClientFor());
  ASSERT_TRUE(conn.ok()) << conn.error().ToString();
  ASSERT_TRUE(server.WaitHandshaken(1));
  const Bytes data = RandomBytes(100'000);
  const std::size_t half = data.size() / 2;
  EXPECT_EQ(WriteAll(*conn, std::span(data).first(half)), "");
  auto updated = conn->UpdateKeys(/*request_peer_update=*/false);
  EXPECT_TRUE(updated.ok()) << updated.error().ToString();
  EXPECT_EQ(WriteAll(*conn, std::span(data).subspan(half)), "");
  EXPECT_EQ(ShutdownText(*conn), "");
  Bytes nothing;
  EXPECT_EQ(ReadToEnd(*conn, nothing), "");
  const ServerEnd& end = server.Join()[0];
  EXPECT_EQ(end.error, "");
  EXPECT_EQ(Sha256Hex(received), Sha256Hex(data));
  ExpectOffloaded(end, Offload::kKernel, Offload::kKernel, "the server");
  EXPECT_EQ(state.rx.key_updates, 1u);
  EXPECT_TRUE(state.rx_no_pad) << state.rx_no_pad_why_not;
  ASSERT_TRUE(state.ulp.reported) << state.ulp.why_not;
  EXPECT_TRUE(state.ulp.rx_no_pad) << "the kernel dropped TLS_RX_EXPECT_NO_PAD with the new key";
}

// Where the option cannot apply, the connection says why.
TEST(RxNoPadKernelTest, Tls12AndRxInOpenSslSayWhyNot) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  for (const bool tls12 : {true, false}) {
    ServerConfig config = NoPadConfig();
    if (tls12) {
      config.max_version = TlsVersion::kTls12;
    } else {
      config.offload.rx = RxOffload::kOff;
    }
    KernelState state;
    Bytes received;
    TestServer server(config, 1, ReadKeepingState(state, received));
    ASSERT_TRUE(server.ok()) << server.listen_error();
    const Bytes data = RandomBytes(20'000);
    EXPECT_EQ(SendAndClose(server, data), "");
    const ServerEnd& end = server.Join()[0];
    EXPECT_EQ(end.error, "");
    EXPECT_EQ(Sha256Hex(received), Sha256Hex(data));
    EXPECT_FALSE(state.rx_no_pad);
    EXPECT_NE(state.rx_no_pad_why_not.find(tls12 ? "TLS 1.3 only" : "RX is not in the kernel"), std::string::npos)
        << state.rx_no_pad_why_not << "; offload: " << ExpectedOffload(end.tx, end.rx) << " " << end.fallback_reason;
  }
}

}  // namespace
}  // namespace ktls::testing
