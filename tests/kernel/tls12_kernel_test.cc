// tests/kernel/tls12_kernel_test.cc: TLS 1.2 connections in a real kernel.
//
// Every connection here is capped at TLS 1.2 (ServerConfig/ClientConfig
// max_version, or SSL_CTX_set_max_proto_version for plain OpenSSL peers) and
// asks for RX in the kernel (RxOffload::kOn) on the library's ends. Data is
// always checked by SHA-256 against what was sent: a key block, sequence
// number or explicit nonce that is off does not show until records flow.
//
//  a. Each offloadable ECDHE-ECDSA suite (AES-128-GCM, AES-256-GCM with the
//     SHA-384 PRF, ChaCha20-Poly1305, AES-128-CCM), library server and
//     client, echo in sizes around the 16 KiB record limit and 1 MiB.
//  b. SendFile from several offsets with TX in the kernel.
//  c. Abbreviated handshakes (the server's Finished first): a plain OpenSSL
//     client resumes by ticket and by session ID (the latter disabled until
//     the library stops dropping the session from the cache; see below).
//  d. A CBC suite stays in OpenSSL on both ends ("cipher not offloadable").
//  e. A plain OpenSSL client's renegotiation on an offloaded connection is
//     refused with no_renegotiation.
//  f. /proc/net/tls_stat: TlsTxSw and TlsRxSw move by two each for one
//     fully offloaded pair.
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
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
#include <thread>
#include <utility>
#include <vector>

#include "conn/kernel_io.h"
#include "core/openssl_ptr.h"
#include "kernel/tls_uapi.h"
#include "ktls/client.h"
#include "ktls/connection.h"
#include "ktls/offload.h"
#include "ktls/probe.h"
#include "ktls/server.h"
#include "ktls/types.h"
#include "net/socket_util.h"
#include "tests/support/kernel_env.h"
#include "tests/support/sockets.h"
#include "tests/support/tls_peers.h"

namespace ktls::testing {
namespace {

using namespace plain_openssl;  // NOLINT: the shared plain-OpenSSL peer helpers.

using Bytes = std::vector<std::uint8_t>;
using detail::UniqueSession;
using detail::UniqueSsl;
using detail::UniqueSslCtx;

constexpr std::size_t kKiB = 1024;
constexpr std::size_t kMiB = 1024 * kKiB;
// Plain OpenSSL peers: a blocked read or write fails after this long.
constexpr std::chrono::seconds kPlainIoTimeout{20};
// A plain OpenSSL peer's echo: write this much, read it back, repeat.
constexpr std::size_t kLockstepChunk = 16 * kKiB;
constexpr int kAlertNoRenegotiation = 100;

// The default test certificate (tools/common/self_signed.h) is ECDSA, so the
// suites are the ECDHE-ECDSA ones.
constexpr const char* kEcdsaAes128Gcm = "ECDHE-ECDSA-AES128-GCM-SHA256";

// Tls12Suite: one TLS 1.2 cipher suite, by OpenSSL and IANA name.
struct Tls12Suite {
  const char* openssl_name;
  const char* iana_name;
  Cipher cipher;
};

void PrintTo(const Tls12Suite& suite, std::ostream* out) { *out << suite.openssl_name; }

constexpr std::array<Tls12Suite, 4> kSuites = {{
    {"ECDHE-ECDSA-AES128-GCM-SHA256", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", Cipher::kAes128Gcm},
    {"ECDHE-ECDSA-AES256-GCM-SHA384", "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", Cipher::kAes256Gcm},
    {"ECDHE-ECDSA-CHACHA20-POLY1305", "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", Cipher::kChaCha20Poly1305},
    {"ECDHE-ECDSA-AES128-CCM", "TLS_ECDHE_ECDSA_WITH_AES_128_CCM", Cipher::kAes128Ccm},
}};

// Library configs capped at TLS 1.2, with cipher_list on both ends.
ServerConfig Tls12Server(const char* cipher_list) {
  ServerConfig config = ServerFor();  // RxOffload::kOn.
  config.max_version = TlsVersion::kTls12;
  config.cipher_list = cipher_list;
  return config;
}

ClientConfig Tls12Client(const char* cipher_list) {
  ClientConfig config = ClientFor();  // RxOffload::kOn.
  config.max_version = TlsVersion::kTls12;
  config.cipher_list = cipher_list;
  return config;
}

// --- Plain OpenSSL peers ---------------------------------------------------------



// NewTls12Context: a TLS 1.2-only plain OpenSSL context. A server context
// carries TestCert and keeps a server-side session cache; a client context
// trusts TestCert. no_ticket sets SSL_OP_NO_TICKET (resumption by session
// ID only). Null on failure.
UniqueSslCtx NewTls12Context(bool server, bool no_ticket) {
  UniqueSslCtx ctx(SSL_CTX_new(server ? TLS_server_method() : TLS_client_method()));
  if (!ctx || SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION) != 1 ||
      SSL_CTX_set_max_proto_version(ctx.get(), TLS1_2_VERSION) != 1 ||
      SSL_CTX_set_cipher_list(ctx.get(), kEcdsaAes128Gcm) != 1) {
    return nullptr;
  }
  if (no_ticket) SSL_CTX_set_options(ctx.get(), SSL_OP_NO_TICKET);
  if (server) {
    if (SSL_CTX_use_certificate_chain_file(ctx.get(), TestCert().cert_file.c_str()) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx.get(), TestCert().key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
      return nullptr;
    }
    SSL_CTX_set_session_cache_mode(ctx.get(), SSL_SESS_CACHE_SERVER);
    static const unsigned char kSidContext[] = "ktls-tls12-test";
    if (SSL_CTX_set_session_id_context(ctx.get(), kSidContext, sizeof(kSidContext) - 1) != 1) return nullptr;
  } else {
    if (SSL_CTX_load_verify_locations(ctx.get(), TestCert().cert_file.c_str(), nullptr) != 1) return nullptr;
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  }
  return ctx;
}

// PlainPeer: an OpenSSL client ktls does not touch. The socket is owned
// here, not by the SSL.
struct PlainPeer {
  UniqueFd fd;
  UniqueSsl ssl;
};

// ConnectPlain: a plain OpenSSL client handshake with the server on port,
// resuming session if given.
std::string ConnectPlain(SSL_CTX* ctx, std::uint16_t port, SSL_SESSION* session, PlainPeer& out) {
  out.fd = ConnectLoopback(port, kPlainIoTimeout);
  if (!out.fd) return std::string("TCP connect failed: ") + std::strerror(errno);
  out.ssl.reset(SSL_new(ctx));
  if (!out.ssl || SSL_set_fd(out.ssl.get(), out.fd.get()) != 1) return "SSL_new/SSL_set_fd: " + OpenSslErrors();
  if (session != nullptr && SSL_set_session(out.ssl.get(), session) != 1) return "SSL_set_session";
  ERR_clear_error();
  const int ret = SSL_connect(out.ssl.get());
  return ret == 1 ? std::string() : SslFailure(out.ssl.get(), ret, "SSL_connect");
}




// PlainEchoThrough: the plain client's side of an echo, in lockstep, ending
// with close_notify both ways.
std::string PlainEchoThrough(SSL* ssl, std::span<const std::uint8_t> data, Bytes& echoed) {
  for (std::size_t offset = 0; offset < data.size(); offset += kLockstepChunk) {
    const auto chunk = data.subspan(offset, std::min(kLockstepChunk, data.size() - offset));
    if (std::string error = SslWriteAll(ssl, chunk); !error.empty()) return error;
    if (std::string error = SslReadExactly(ssl, chunk.size(), echoed); !error.empty()) return error;
  }
  ERR_clear_error();
  if (SSL_shutdown(ssl) < 0) return "SSL_shutdown: " + OpenSslErrors();
  return SslExpectCloseNotify(ssl);
}

std::string FirstReason(const std::vector<OffloadReport>& reports) {
  return reports.empty() ? std::string("(none)") : reports[0].reason;
}

// --- a. Every offloadable suite, every size --------------------------------------

class Tls12SuiteKernelTest : public ::testing::TestWithParam<Tls12Suite> {};

TEST_P(Tls12SuiteKernelTest, EchoesEachSizeWithBothDirectionsInKernel) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  const Tls12Suite& suite = GetParam();
  KTLS_REQUIRE_CIPHER_OR_SKIP(TlsVersion::kTls12, suite.cipher);
  // Empty, one byte, one byte short of a full record, a full record, one
  // byte into the second record, and many records.
  constexpr std::array<std::size_t, 6> kSizes = {0, 1, 16383, 16384, 16385, kMiB};
  FallbackLog fallbacks;
  ServerConfig server_config = Tls12Server(suite.openssl_name);
  server_config.offload.on_fallback = fallbacks.Callback();
  TestServer server(server_config, kSizes.size(), Echo);
  ASSERT_TRUE(server.ok()) << server.listen_error();

  std::size_t num_connected = 0;
  for (std::size_t size : kSizes) {
    SCOPED_TRACE("echo of " + std::to_string(size) + " bytes");
    ClientConfig client_config = Tls12Client(suite.openssl_name);
    client_config.offload.on_fallback = fallbacks.Callback();
    auto conn = ConnectTo(server.port(), client_config);
    ASSERT_TRUE(conn.ok()) << "Connect: " << conn.error().ToString();
    ASSERT_TRUE(server.WaitHandshaken(++num_connected)) << "the server should have finished handshake and offload";
    ExpectOffloaded(conn->tx(), conn->rx(), Offload::kKernel, Offload::kKernel, "the client");
    EXPECT_EQ(conn->session().protocol, "TLSv1.2");
    EXPECT_EQ(conn->session().cipher_suite, suite.iana_name);
    const Bytes data = RandomBytes(size);
    Bytes echoed;
    echoed.reserve(size);
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
    EXPECT_EQ(ends[i].bytes_out, kSizes[i]);
    EXPECT_EQ(ends[i].session.protocol, "TLSv1.2");
    EXPECT_EQ(ends[i].session.cipher_suite, suite.iana_name);
    EXPECT_FALSE(ends[i].session.resumed);
  }
  EXPECT_TRUE(fallbacks.reports().empty()) << "nothing should have fallen back: " << FirstReason(fallbacks.reports());
}

INSTANTIATE_TEST_SUITE_P(Tls12, Tls12SuiteKernelTest, ::testing::ValuesIn(kSuites),
                         [](const ::testing::TestParamInfo<Tls12Suite>& param_info) {
                           std::string name;
                           for (char c : CipherName(param_info.param.cipher)) name.push_back(c);
                           return name;
                         });

// --- b. SendFile ---------------------------------------------------------------


struct FileRange {
  std::size_t offset;
  std::size_t len;
};

TEST(Tls12KernelTest, SendFileFromSeveralOffsetsWithTxInKernel) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  const TempFile file(2 * kMiB + 12345);
  ASSERT_TRUE(file.ok()) << "cannot create the temporary file";
  // From the start, one byte in, one byte short of a record, and deep into
  // the file up to its end; lengths that end mid-record.
  const std::array<FileRange, 4> ranges = {{
      {0, 100000},
      {1, 16384},
      {16383, 50001},
      {kMiB + 4097, kMiB + 12345 - 4097},
  }};
  Bytes expected;
  for (const FileRange& range : ranges) {
    const auto slice = file.Slice(range.offset, range.len);
    expected.insert(expected.end(), slice.begin(), slice.end());
  }

  FallbackLog fallbacks;
  ServerConfig server_config = Tls12Server(kEcdsaAes128Gcm);
  server_config.offload.on_fallback = fallbacks.Callback();
  TestServer server(server_config, 1, [&](Connection& conn, ServerEnd& end) {
    if (conn.tx() != Offload::kKernel) {
      end.error = "the server's TX should be in the kernel before SendFile";
      return;
    }
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

  ClientConfig client_config = Tls12Client(kEcdsaAes128Gcm);
  client_config.offload.on_fallback = fallbacks.Callback();
  auto conn = ConnectTo(server.port(), client_config);
  ASSERT_TRUE(conn.ok()) << "Connect: " << conn.error().ToString();
  ExpectOffloaded(conn->tx(), conn->rx(), Offload::kKernel, Offload::kKernel, "the client");
  EXPECT_EQ(conn->session().protocol, "TLSv1.2");
  Bytes received;
  received.reserve(expected.size());
  EXPECT_EQ(ReadToEnd(*conn, received), "");
  EXPECT_EQ(ShutdownText(*conn), "");
  EXPECT_EQ(received.size(), expected.size());
  EXPECT_EQ(Sha256Hex(received), Sha256Hex(expected)) << "the client should receive exactly the file ranges sent";
  conn->Close();

  const ServerEnd& end = server.Join()[0];
  EXPECT_EQ(end.error, "");
  EXPECT_EQ(end.bytes_out, expected.size());
  ExpectOffloaded(end, Offload::kKernel, Offload::kKernel, "the server");
  EXPECT_EQ(end.session.protocol, "TLSv1.2");
  EXPECT_TRUE(fallbacks.reports().empty()) << "nothing should have fallen back: " << FirstReason(fallbacks.reports());
}

// --- c. Resumption: abbreviated handshakes ----------------------------------------

enum class ResumeBy { kTicket, kSessionId };

// Sessions the session-ID server's cache dropped (SSL_CTX_sess_set_remove_cb).
std::atomic<int> g_sessions_removed{0};
void CountRemovedSession(SSL_CTX* /*ctx*/, SSL_SESSION* /*session*/) { ++g_sessions_removed; }

std::string ResumeByName(const ::testing::TestParamInfo<ResumeBy>& param_info) {
  return param_info.param == ResumeBy::kTicket ? "Ticket" : "SessionId";
}

class Tls12ResumptionKernelTest : public ::testing::TestWithParam<ResumeBy> {};

// In an abbreviated TLS 1.2 handshake the server sends its ChangeCipherSpec
// and Finished first, the client last: the opposite order of a full one.
// Both directions' first record under the new keys is still the Finished
// (sequence number 0), so after offload data must flow both ways. The plain
// OpenSSL client keeps everything in userspace and checks the server's
// records itself.
TEST_P(Tls12ResumptionKernelTest, AbbreviatedHandshakeOffloadsBothWays) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  const bool by_ticket = GetParam() == ResumeBy::kTicket;
  FallbackLog fallbacks;
  ServerConfig server_config;
  UniqueSslCtx server_ctx;
  if (by_ticket) {
    server_config = Tls12Server(kEcdsaAes128Gcm);  // OpenSSL's default: TLS 1.2 tickets on.
  } else {
    // Session IDs only: tickets off (num_tickets is TLS 1.3's; TLS 1.2 needs
    // SSL_OP_NO_TICKET), a server-side session cache.
    server_ctx = NewTls12Context(/*server=*/true, /*no_ticket=*/true);
    ASSERT_TRUE(server_ctx) << "building the server context: " << OpenSslErrors();
    g_sessions_removed = 0;
    SSL_CTX_sess_set_remove_cb(server_ctx.get(), CountRemovedSession);
    server_config = ServerFor();
    server_config.ssl_ctx = server_ctx.get();
    server_config.num_tickets = 0;
  }
  server_config.offload.on_fallback = fallbacks.Callback();
  TestServer server(server_config, 2, Echo);
  ASSERT_TRUE(server.ok()) << server.listen_error();
  const UniqueSslCtx client_ctx = NewTls12Context(/*server=*/false, /*no_ticket=*/!by_ticket);
  ASSERT_TRUE(client_ctx) << "building the client context: " << OpenSslErrors();

  UniqueSession session;
  {
    SCOPED_TRACE("full handshake");
    PlainPeer first;
    ASSERT_EQ(ConnectPlain(client_ctx.get(), server.port(), nullptr, first), "");
    EXPECT_EQ(SSL_version(first.ssl.get()), TLS1_2_VERSION);
    EXPECT_EQ(SSL_session_reused(first.ssl.get()), 0);
    const Bytes data = RandomBytes(20000);
    Bytes echoed;
    ASSERT_EQ(PlainEchoThrough(first.ssl.get(), data, echoed), "");
    EXPECT_EQ(Sha256Hex(echoed), Sha256Hex(data)) << "the echoed bytes should be the bytes sent";
    session.reset(SSL_get1_session(first.ssl.get()));
    ASSERT_TRUE(session && SSL_SESSION_is_resumable(session.get()) == 1)
        << "the client should hold a resumable session";
    if (by_ticket) {
      EXPECT_EQ(SSL_SESSION_has_ticket(session.get()), 1) << "the server should have issued a TLS 1.2 ticket";
    } else {
      EXPECT_EQ(SSL_SESSION_has_ticket(session.get()), 0) << "the server should not have issued a ticket";
      unsigned int id_len = 0;
      SSL_SESSION_get_id(session.get(), &id_len);
      EXPECT_GT(id_len, 0u) << "the session should have an ID to resume by";
    }
  }
  if (!by_ticket) {
    // OpenSSL's SSL_free drops a session from the cache unless the SSL is
    // marked SSL_SENT_SHUTDOWN (ssl_clear_bad_session): an SSL freed after
    // offload must not look like a failed connection.
    ASSERT_TRUE(server.WaitHandshaken(1));
    EXPECT_EQ(g_sessions_removed.load(), 0) << "the full handshake's session should stay in the server's cache";
    EXPECT_EQ(SSL_CTX_sess_number(server_ctx.get()), 1) << "the server's cache should hold the full handshake's session";
  }
  {
    SCOPED_TRACE("abbreviated handshake");
    PlainPeer second;
    ASSERT_EQ(ConnectPlain(client_ctx.get(), server.port(), session.get(), second), "");
    ASSERT_EQ(SSL_session_reused(second.ssl.get()), 1) << "the second handshake should resume";
    ASSERT_TRUE(server.WaitHandshaken(2)) << "the server should have finished handshake and offload";
    // Several records each way, across the record size limit.
    const Bytes data = RandomBytes(70000);
    Bytes echoed;
    ASSERT_EQ(PlainEchoThrough(second.ssl.get(), data, echoed), "");
    EXPECT_EQ(echoed.size(), data.size());
    EXPECT_EQ(Sha256Hex(echoed), Sha256Hex(data)) << "the echoed bytes should be the bytes sent";
  }

  const std::vector<ServerEnd>& ends = server.Join();
  EXPECT_EQ(ends[0].error, "");
  EXPECT_EQ(ends[1].error, "");
  ExpectOffloaded(ends[0], Offload::kKernel, Offload::kKernel, "the server (full handshake)");
  ExpectOffloaded(ends[1], Offload::kKernel, Offload::kKernel, "the server (resumed)");
  EXPECT_EQ(ends[0].session.protocol, "TLSv1.2");
  EXPECT_EQ(ends[1].session.protocol, "TLSv1.2");
  EXPECT_FALSE(ends[0].session.resumed);
  EXPECT_TRUE(ends[1].session.resumed) << "SessionInfo::resumed should say the second handshake resumed";
  EXPECT_EQ(ends[1].bytes_in, 70000u);
  EXPECT_EQ(ends[1].bytes_out, 70000u);
  EXPECT_TRUE(fallbacks.reports().empty()) << "nothing should have fallen back: " << FirstReason(fallbacks.reports());
}

// By session ID this needs the session to survive in the server's cache
// when the library frees the SSL after offload (it once did not).
INSTANTIATE_TEST_SUITE_P(Tls12, Tls12ResumptionKernelTest,
                         ::testing::Values(ResumeBy::kTicket, ResumeBy::kSessionId), ResumeByName);

// --- d. CBC stays in userspace -----------------------------------------------------

// The bring-your-own-OpenSSL path with TLS 1.2: the application's own
// context and handshake (PrepareContext, PrepareSsl, SSL_accept), then
// OffloadSsl; the library's client on the other end.
TEST(Tls12KernelTest, BringYourOwnOpenSslServerOffloadsBothWays) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  UniqueSslCtx ctx = NewTls12Context(/*server=*/true, /*no_ticket=*/false);
  ASSERT_TRUE(ctx);
  ASSERT_TRUE(PrepareContext(ctx.get()).ok());
  auto listener = detail::ListenTcp("127.0.0.1", "0");
  ASSERT_TRUE(listener.ok()) << listener.error().ToString();
  sockaddr_in addr{};
  socklen_t addr_len = sizeof(addr);
  ASSERT_EQ(::getsockname(listener->get(), reinterpret_cast<sockaddr*>(&addr), &addr_len), 0);
  const auto port = ntohs(addr.sin_port);

  const Bytes payload = RandomBytes(100'000);
  std::string server_error;
  Offload server_tx = Offload::kUser, server_rx = Offload::kUser;
  std::string server_protocol;
  std::thread server([&] {
    const int fd = ::accept4(listener->get(), nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      server_error = "accept failed";
      return;
    }
    SetIoTimeout(fd, std::chrono::seconds(30));
    SSL* ssl = SSL_new(ctx.get());
    if (!PrepareSsl(ssl).ok() || SSL_set_fd(ssl, fd) != 1 || SSL_accept(ssl) != 1) {
      server_error = "BYO handshake failed: " + OpenSslErrors();
      SSL_free(ssl);
      ::close(fd);
      return;
    }
    OffloadOptions options;
    options.rx = RxOffload::kOn;
    options.on_fallback = [&](const OffloadReport& report) { server_error = "fell back: " + report.reason; };
    auto conn = OffloadSsl(ssl, options);  // Owns ssl and fd from here.
    if (!conn.ok()) {
      server_error = "OffloadSsl: " + conn.error().ToString();
      SSL_free(ssl);
      ::close(fd);
      return;
    }
    server_tx = conn->tx();
    server_rx = conn->rx();
    server_protocol = conn->session().protocol;
    std::vector<std::byte> buf(20000);
    for (;;) {
      auto got = conn->Read(buf);
      if (!got.ok()) {
        server_error = "server Read: " + got.error().ToString();
        return;
      }
      if (got->end_of_stream) break;
      if (auto put = conn->WriteAll(std::span(buf.data(), got->bytes)); !put.ok()) {
        server_error = "server Write: " + put.error().ToString();
        return;
      }
    }
    if (auto shut = conn->Shutdown(); !shut.ok()) server_error = "server Shutdown: " + shut.error().ToString();
  });

  auto conn = Connect("127.0.0.1", port, Tls12Client(kEcdsaAes128Gcm));
  ASSERT_TRUE(conn.ok()) << "Connect: " << conn.error().ToString();
  SetIoTimeout(conn->fd(), std::chrono::seconds(30));
  EXPECT_EQ(conn->tx(), Offload::kKernel);
  EXPECT_EQ(conn->rx(), Offload::kKernel);
  Bytes echoed;
  // The FIN goes out only after the whole echo came back: the server has
  // offloaded by then (the kernel refuses the ULP on a socket whose peer
  // already closed, and the library would rightly stay in OpenSSL).
  std::thread writer([&] {
    EXPECT_TRUE(conn->WriteAll(std::as_bytes(std::span(payload.data(), payload.size()))).ok());
  });
  std::vector<std::byte> buf(20000);
  bool shut_down = false;
  for (;;) {
    if (!shut_down && echoed.size() == payload.size()) {
      writer.join();
      ASSERT_TRUE(conn->Shutdown().ok());
      shut_down = true;
    }
    auto got = conn->Read(buf);
    ASSERT_TRUE(got.ok()) << got.error().ToString();
    if (got->end_of_stream) break;
    const auto* bytes = reinterpret_cast<const std::uint8_t*>(buf.data());
    echoed.insert(echoed.end(), bytes, bytes + got->bytes);
  }
  if (!shut_down) writer.join();
  server.join();
  EXPECT_EQ(server_error, "");
  EXPECT_EQ(server_tx, Offload::kKernel);
  EXPECT_EQ(server_rx, Offload::kKernel);
  EXPECT_EQ(server_protocol, "TLSv1.2");
  EXPECT_EQ(Sha256Hex(echoed), Sha256Hex(payload));
}

TEST(Tls12KernelTest, CbcSuiteStaysInUserspaceAndWorks) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  constexpr const char* kCbc = "ECDHE-ECDSA-AES128-SHA256";
  FallbackLog server_fallbacks;
  FallbackLog client_fallbacks;
  ServerConfig server_config = Tls12Server(kCbc);
  server_config.offload.on_fallback = server_fallbacks.Callback();
  TestServer server(server_config, 1, Echo);
  ASSERT_TRUE(server.ok()) << server.listen_error();
  ClientConfig client_config = Tls12Client(kCbc);
  client_config.offload.on_fallback = client_fallbacks.Callback();
  auto conn = ConnectTo(server.port(), client_config);
  ASSERT_TRUE(conn.ok()) << "Connect: " << conn.error().ToString();
  ASSERT_TRUE(server.WaitHandshaken(1)) << "the server should have finished its handshake";
  ExpectOffloaded(conn->tx(), conn->rx(), Offload::kUser, Offload::kUser, "the client (CBC)");
  EXPECT_EQ(conn->session().protocol, "TLSv1.2");
  EXPECT_EQ(conn->session().cipher_suite, "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256");

  const Bytes data = RandomBytes(100 * kKiB + 1);
  Bytes echoed;
  ASSERT_EQ(EchoThrough(*conn, data, Pace::kLockstep, echoed), "");
  EXPECT_EQ(echoed.size(), data.size());
  EXPECT_EQ(Sha256Hex(echoed), Sha256Hex(data)) << "the echoed bytes should be the bytes sent";
  conn->Close();

  const ServerEnd& end = server.Join()[0];
  EXPECT_EQ(end.error, "");
  ExpectOffloaded(end, Offload::kUser, Offload::kUser, "the server (CBC)");
  EXPECT_EQ(end.bytes_in, data.size());
  EXPECT_NE(end.fallback_reason.find("cipher not offloadable"), std::string::npos)
      << "the server's fallback reason: " << end.fallback_reason;
  const auto server_reports = server_fallbacks.reports();
  const auto client_reports = client_fallbacks.reports();
  ASSERT_EQ(server_reports.size(), 1u) << "on_fallback should be called once on the server";
  ASSERT_EQ(client_reports.size(), 1u) << "on_fallback should be called once on the client";
  for (const OffloadReport* report : {&server_reports[0], &client_reports[0]}) {
    EXPECT_EQ(report->tx, Offload::kUser);
    EXPECT_EQ(report->rx, Offload::kUser);
    EXPECT_NE(report->reason.find("cipher not offloadable"), std::string::npos) << report->reason;
  }
}

// --- e. Renegotiation refused ------------------------------------------------------

// A plain OpenSSL client (renegotiation allowed on its side) echoes some
// data through the offloaded server, then starts a renegotiation: its
// ClientHello reaches the server's kernel RX as a handshake record. The
// server answers, as OpenSSL does, with a warning no_renegotiation and
// goes on; this client then gives up with handshake_failure (OpenSSL's
// SSL_R_NO_RENEGOTIATION), which ends the server's Read.
TEST(Tls12KernelTest, RenegotiationIsRefusedWithNoRenegotiation) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  constexpr std::size_t kEchoLen = 3000;
  std::optional<Error> read_error;
  Bytes server_received;
  TestServer server(Tls12Server(kEcdsaAes128Gcm), 1, [&](Connection& conn, ServerEnd& end) {
    std::array<std::byte, 16 * kKiB> buf{};
    for (;;) {
      auto got = conn.Read(buf);
      if (!got.ok()) {
        read_error = got.error();
        return;
      }
      if (got->would_block || got->end_of_stream) {
        end.error = got->would_block ? "server Read timed out" : "close_notify where renegotiation was expected";
        return;
      }
      const auto* bytes = reinterpret_cast<const std::uint8_t*>(buf.data());
      server_received.insert(server_received.end(), bytes, bytes + got->bytes);
      if (std::string error = WriteAll(conn, std::span(bytes, got->bytes)); !error.empty()) {
        end.error = "server " + error;
        return;
      }
    }
  });
  ASSERT_TRUE(server.ok()) << server.listen_error();
  const UniqueSslCtx client_ctx = NewTls12Context(/*server=*/false, /*no_ticket=*/false);
  ASSERT_TRUE(client_ctx) << OpenSslErrors();
  SSL_CTX_clear_options(client_ctx.get(), SSL_OP_NO_RENEGOTIATION);
  PlainPeer client;
  ASSERT_EQ(ConnectPlain(client_ctx.get(), server.port(), nullptr, client), "");
  ASSERT_EQ(SSL_version(client.ssl.get()), TLS1_2_VERSION);
  ASSERT_TRUE(server.WaitHandshaken(1)) << "the server should have finished handshake and offload";

  const Bytes data = RandomBytes(kEchoLen);
  Bytes echoed;
  ASSERT_EQ(SslWriteAll(client.ssl.get(), data), "");
  ASSERT_EQ(SslReadExactly(client.ssl.get(), data.size(), echoed), "");
  EXPECT_EQ(echoed, data) << "data should flow before the renegotiation";

  ERR_clear_error();
  ASSERT_EQ(SSL_renegotiate(client.ssl.get()), 1) << "the client should be able to start a renegotiation: "
                                                 << OpenSslErrors();
  ERR_clear_error();
  const int ret = SSL_do_handshake(client.ssl.get());
  const int code = SSL_get_error(client.ssl.get(), ret);
  const unsigned long last_error = ERR_peek_last_error();
  const std::string client_failure = SslFailure(client.ssl.get(), ret, "SSL_do_handshake");
  EXPECT_NE(ret, 1) << "the renegotiation must not complete";
  EXPECT_EQ(code, SSL_ERROR_SSL) << "the client should fail on the server's alert: " << client_failure;
  EXPECT_EQ(ERR_GET_REASON(last_error), SSL_R_NO_RENEGOTIATION)
      << "the client should have received a no_renegotiation warning: " << client_failure;

  const ServerEnd& end = server.Join()[0];
  EXPECT_EQ(end.error, "");
  ExpectOffloaded(end, Offload::kKernel, Offload::kKernel, "the server");
  EXPECT_EQ(server_received, data);
  ASSERT_TRUE(read_error) << "the server's Read should end with the client's alert";
  EXPECT_EQ(read_error->category, ErrorCategory::kAlert) << read_error->ToString();
  EXPECT_EQ(read_error->tls_alert, SSL_AD_HANDSHAKE_FAILURE) << read_error->ToString();
}

// A peer that sends a renegotiation ClientHello and then simply goes on
// (here a ktls client, writing the record through its kernel TX): the
// server warns with no_renegotiation and keeps serving it, as OpenSSL
// does: the data sent after the ClientHello is read and echoed. The client
// did not ask to renegotiate, so the warning ends its reads with
// handshake_failure, again as OpenSSL's client answers it.
TEST(Tls12KernelTest, RenegotiationAttemptGetsAWarningAndTheServerGoesOn) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  constexpr std::size_t kEchoLen = 3000;
  TestServer server(Tls12Server(kEcdsaAes128Gcm), 1, Echo);
  ASSERT_TRUE(server.ok()) << server.listen_error();
  ClientConfig config = ClientFor();
  config.max_version = TlsVersion::kTls12;
  auto conn = ConnectTo(server.port(), config);
  ASSERT_TRUE(conn.ok()) << "Connect: " << conn.error().ToString();
  ASSERT_EQ(conn->tx(), Offload::kKernel);
  ASSERT_EQ(conn->rx(), Offload::kKernel);

  const Bytes first = RandomBytes(kEchoLen);
  const Bytes second = RandomBytes(kEchoLen);
  Bytes echoed;
  EXPECT_EQ(WriteAll(*conn, first), "");
  EXPECT_EQ(ReadExactly(*conn, first.size(), echoed), "");
  // A ClientHello header and a few body bytes: the server drops the rest of
  // the record with it, as OpenSSL does.
  const Bytes client_hello = {1, 0, 0, 4, 3, 3, 0, 0};
  const ssize_t sent =
      detail::SendControlRecord(conn->fd(), detail::uapi::kRecordHandshake, client_hello, MSG_NOSIGNAL);
  EXPECT_EQ(sent, static_cast<ssize_t>(client_hello.size()))
      << (sent < 0 ? std::strerror(static_cast<int>(-sent)) : "a short write");
  EXPECT_EQ(WriteAll(*conn, second), "");
  const std::string read_error = ReadExactly(*conn, second.size(), echoed);
  EXPECT_NE(read_error.find("no_renegotiation"), std::string::npos) << read_error;
  EXPECT_NE(read_error.find("(handshake_failure)"), std::string::npos) << read_error;
  conn->Close();

  const ServerEnd& end = server.Join()[0];
  EXPECT_EQ(end.bytes_in, first.size() + second.size()) << "the server should read on after its warning";
  EXPECT_NE(end.error.find("(handshake_failure)"), std::string::npos)
      << "the server's Read ends with the client's alert: " << end.error;
  ExpectOffloaded(end, Offload::kKernel, Offload::kKernel, "the server");
  EXPECT_EQ(echoed, first) << "the warning comes before the second echo";
}

// --- f. /proc/net/tls_stat -----------------------------------------------------------

long long CounterDelta(const std::map<std::string, long long>& before, const std::map<std::string, long long>& after,
                       const std::string& name) {
  const auto b = before.find(name);
  const auto a = after.find(name);
  if (b == before.end() || a == after.end()) return -1;
  return a->second - b->second;
}

TEST(Tls12KernelTest, TlsStatCountsBothEndsInSoftwareKtls) {
  KTLS_REQUIRE_KTLS_OR_SKIP();  // Also runs the process-wide probe first: its sockets count too.
  const auto before = ReadTlsStat();
  ASSERT_TRUE(before.count("TlsTxSw") && before.count("TlsRxSw"))
      << "/proc/net/tls_stat should list TlsTxSw and TlsRxSw where kTLS is available";
  {
    TestServer server(Tls12Server(kEcdsaAes128Gcm), 1, Echo);
    ASSERT_TRUE(server.ok()) << server.listen_error();
    auto conn = ConnectTo(server.port(), Tls12Client(kEcdsaAes128Gcm));
    ASSERT_TRUE(conn.ok()) << "Connect: " << conn.error().ToString();
    ASSERT_TRUE(server.WaitHandshaken(1)) << "the server should have finished handshake and offload";
    ExpectOffloaded(conn->tx(), conn->rx(), Offload::kKernel, Offload::kKernel, "the client");
    EXPECT_EQ(conn->session().protocol, "TLSv1.2");
    const Bytes data = RandomBytes(40000);
    Bytes echoed;
    ASSERT_EQ(EchoThrough(*conn, data, Pace::kConcurrent, echoed), "");
    EXPECT_EQ(Sha256Hex(echoed), Sha256Hex(data));
    const ServerEnd& end = server.Join()[0];
    EXPECT_EQ(end.error, "");
    ExpectOffloaded(end, Offload::kKernel, Offload::kKernel, "the server");
  }
  const auto after = ReadTlsStat();
  EXPECT_EQ(CounterDelta(before, after, "TlsTxSw"), 2) << "one TX per end of the pair, in software kTLS";
  EXPECT_EQ(CounterDelta(before, after, "TlsRxSw"), 2) << "one RX per end of the pair, in software kTLS";
}

}  // namespace
}  // namespace ktls::testing
