// A library built without kernel TLS (KTLS_KERNEL_TLS=OFF): the probe asks
// nothing and says why, and a real connection over loopback handshakes,
// echoes and sends a file with both directions in OpenSSL, through the same
// fallback a kernel without kTLS gets. No fault is injected: nothing in
// this build can reach the kernel's TLS. Built into ktls_unit_tests only in
// that configuration (tests/CMakeLists.txt).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "common/self_signed.h"
#include "ktls/client.h"
#include "ktls/kernel_state.h"
#include "ktls/kernel_tls_stats.h"
#include "ktls/move.h"
#include "ktls/probe.h"
#include "ktls/server.h"
#include "tests/support/sockets.h"

#if KTLS_KERNEL_TLS
#error "no_kernel_tls_test.cc tests the build with KTLS_KERNEL_TLS=OFF"
#endif

namespace ktls {
namespace {

constexpr const char* kReason = "built without kernel TLS";

TEST(NoKernelTls, ProbeSaysBuiltWithoutKernelTls) {
  const Capabilities caps = Probe();
  EXPECT_FALSE(caps.available);
  EXPECT_FALSE(caps.ulp);
  EXPECT_FALSE(caps.rekey);
  EXPECT_FALSE(caps.rx_no_pad);
  EXPECT_EQ(caps.reason, kReason);
  EXPECT_EQ(caps.ciphers.size(), kAllVersions.size() * kAllCiphers.size());
  for (const CipherSupport& row : caps.ciphers) EXPECT_FALSE(row.tx || row.rx);
  EXPECT_FALSE(Available());
  EXPECT_EQ(CachedCapabilities().reason, kReason);
}

TEST(NoKernelTls, KernelCountersAreUnsupported) {
  auto stats = ReadKernelTlsStats();
  ASSERT_FALSE(stats.ok());
  EXPECT_EQ(stats.error().category, ErrorCategory::kUnsupported);
  EXPECT_NE(stats.error().ToString().find(kReason), std::string::npos) << stats.error().ToString();
}

// The server echoes what it reads until close_notify, then sends the
// client a file with SendFile and closes.
TEST(NoKernelTls, LoopbackConnectionEchoesAndSendsAFileInOpenSsl) {
  tools::SelfSigned cert;
  std::string error;
  ASSERT_TRUE(tools::MakeSelfSigned(cert, error)) << error;
  ServerConfig server_config;
  server_config.cert_file = cert.cert_file;
  server_config.key_file = cert.key_file;
  OffloadReport server_report;
  server_config.offload.on_fallback = [&server_report](const OffloadReport& report) { server_report = report; };
  auto listener = Listener::Listen("127.0.0.1:0", server_config);
  ASSERT_TRUE(listener.ok()) << listener.error().ToString();

  const std::vector<std::uint8_t> file_content = testing::RandomBytes(300 * 1024 + 17);  // Not a chunk multiple.
  char path[] = "/tmp/ktls-no-kernel-tls-XXXXXX";
  const int file = ::mkstemp(path);
  ASSERT_GE(file, 0);
  ::unlink(path);
  ASSERT_TRUE(testing::WriteAll(file, file_content));

  std::string server_error;
  std::thread server([&] {
    auto conn = listener->Accept();
    if (!conn.ok()) {
      server_error = "Accept: " + conn.error().ToString();
      return;
    }
    if (conn->tx() != Offload::kUser || conn->rx() != Offload::kUser) server_error = "server: a direction in the kernel";
    std::vector<std::byte> buf(20000);
    for (;;) {
      auto got = conn->Read(buf);
      if (!got.ok()) {
        server_error = "Read: " + got.error().ToString();
        return;
      }
      if (got->end_of_stream) break;
      if (auto wrote = conn->WriteAll(std::span(buf.data(), got->bytes)); !wrote.ok()) {
        server_error = "WriteAll: " + wrote.error().ToString();
        return;
      }
    }
    std::size_t sent = 0;
    while (sent < file_content.size()) {
      auto n = conn->SendFile(file, static_cast<off_t>(sent), file_content.size() - sent);
      if (!n.ok() || n->bytes == 0) {
        server_error = "SendFile: " + (n.ok() ? std::string("no progress") : n.error().ToString());
        return;
      }
      sent += n->bytes;
    }
    if (auto closed = conn->Shutdown(); !closed.ok()) server_error = "Shutdown: " + closed.error().ToString();
  });

  ClientConfig client_config;
  client_config.ca_file = cert.cert_file;
  client_config.sni = "localhost";
  OffloadReport client_report;
  client_config.offload.on_fallback = [&client_report](const OffloadReport& report) { client_report = report; };
  auto conn = Connect("127.0.0.1", static_cast<std::uint16_t>(listener->port()), client_config);
  ASSERT_TRUE(conn.ok()) << conn.error().ToString();
  EXPECT_EQ(conn->tx(), Offload::kUser);
  EXPECT_EQ(conn->rx(), Offload::kUser);
  EXPECT_EQ(client_report.tx_reason, FallbackReason::kNoKernelTls);
  EXPECT_NE(client_report.reason.find(kReason), std::string::npos) << client_report.reason;

  // Splice has no portable equivalent: refused, and the connection goes on.
  auto spliced = conn->SpliceRead(0, 100);
  ASSERT_FALSE(spliced.ok());
  EXPECT_EQ(spliced.error().category, ErrorCategory::kUnsupported);
  auto spliced_out = conn->SpliceWrite(0, 100);
  ASSERT_FALSE(spliced_out.ok());
  EXPECT_EQ(spliced_out.error().category, ErrorCategory::kUnsupported);

  const std::vector<std::uint8_t> message = testing::RandomBytes(100000);
  ASSERT_TRUE(conn->WriteAll(std::as_bytes(std::span(message))).ok());
  std::vector<std::uint8_t> echoed(message.size());
  std::size_t have = 0;
  while (have < echoed.size()) {
    auto got = conn->Read(std::as_writable_bytes(std::span(echoed).subspan(have)));
    ASSERT_TRUE(got.ok()) << got.error().ToString();
    ASSERT_FALSE(got->end_of_stream) << "after " << have << " bytes";
    have += got->bytes;
  }
  EXPECT_EQ(echoed, message);

  // Moving needs both directions in the kernel: refused, conn untouched;
  // and nothing is imported, whatever the state.
  auto exported = conn->Export();
  ASSERT_FALSE(exported.ok());
  EXPECT_EQ(exported.error().category, ErrorCategory::kUnsupported);
  const std::vector<std::byte> some_state(64, std::byte{1});
  auto imported = Connection::Import(conn->fd(), some_state);
  ASSERT_FALSE(imported.ok());
  EXPECT_EQ(imported.error().category, ErrorCategory::kUnsupported);
  EXPECT_NE(imported.error().ToString().find(kReason), std::string::npos) << imported.error().ToString();
  const KernelState state = conn->kernel_state();
  EXPECT_FALSE(state.ulp.reported);
  EXPECT_EQ(state.ulp.why_not, kReason);

  ASSERT_TRUE(conn->Shutdown(ShutdownFlags::kCloseNotifyOnly).ok());
  std::vector<std::uint8_t> received;
  std::vector<std::byte> buf(50000);
  for (;;) {
    auto got = conn->Read(buf);
    ASSERT_TRUE(got.ok()) << got.error().ToString();
    if (got->end_of_stream) break;
    const auto* p = reinterpret_cast<const std::uint8_t*>(buf.data());
    received.insert(received.end(), p, p + got->bytes);
  }
  server.join();
  ::close(file);
  EXPECT_EQ(server_error, "");
  EXPECT_EQ(received.size(), file_content.size());
  EXPECT_TRUE(received == file_content);
  EXPECT_EQ(server_report.tx, Offload::kUser);
  EXPECT_EQ(server_report.rx, Offload::kUser);
  EXPECT_NE(server_report.reason.find(kReason), std::string::npos) << server_report.reason;
}

}  // namespace
}  // namespace ktls
