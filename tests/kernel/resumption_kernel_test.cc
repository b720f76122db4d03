// tests/kernel/resumption_kernel_test.cc: a client with RX in the kernel
// keeps the server's session tickets and resumes with them, and resumed
// connections are offloaded like full ones.
//
//  a. TLS 1.3, ktls server sending 1 or 2 tickets: the first connection
//     relays every ticket to OpenSSL (none dropped), the config's session
//     cache holds them, the next Connect resumes (SessionInfo::resumed) with
//     both directions in the kernel on both ends, moves data intact, and on
//     a kernel that rekeys, updates keys both ways. tls_stat proves offload.
//  b. The same with client certificates (the client's RX count must not
//     depend on what the client sent).
//  c. TLS 1.2 with a session ID and with a ticket.
//  d. OffloadOptions::session_tickets off: nothing relayed, every ticket
//     dropped with the reason, no resumption.
//  e. A plain OpenSSL server sending a ticket whenever it likes: between
//     data records, after the client's close_notify (OpenSSL 3 keeps such a
//     ticket, so ktls does too), and after a KeyUpdate (7.2: the old key is
//     gone, the ticket is dropped with that reason; the connection goes on).
//     A ticket read through a 1-byte buffer costs two recvmsg, not one a
//     byte: the rest of a control record goes to ktls's own buffer.
//  f. A malformed ticket gets OpenSSL's decode_error on the wire, from ktls
//     with RX in the kernel.
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <functional>
#include <future>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "core/openssl_ptr.h"
#include "keys/tls13_key_schedule.h"
#include "ktls/client.h"
#include "ktls/connection.h"
#include "ktls/handshake.h"
#include "ktls/probe.h"
#include "ktls/server.h"
#include "ktls/session_cache.h"
#include "net/pending_handshake.h"
#include "tests/support/fault_syscalls.h"
#include "tests/support/kernel_env.h"
#include "tests/support/record_codec.h"
#include "tests/support/sockets.h"
#include "tests/support/tls_peers.h"

namespace ktls::testing {
namespace {

using Bytes = std::vector<std::uint8_t>;
using detail::UniqueSsl;
using detail::UniqueSslCtx;
using plain_openssl::OpenSslErrors;
using plain_openssl::SslExpectAlert;
using plain_openssl::SslExpectCloseNotify;
using plain_openssl::SslWriteAll;

constexpr std::size_t kKiB = 1024;

std::string DropReason(const Connection& conn) {
  return conn.tickets_dropped_reason() != nullptr ? conn.tickets_dropped_reason() : "(none)";
}

// EchoSome writes len random bytes and reads them back, 16 KiB at a time,
// leaving the connection open (the tickets come before the echo).
void EchoSome(Connection& conn, std::size_t len) {
  const Bytes data = RandomBytes(len);
  Bytes echoed;
  for (std::size_t offset = 0; offset < data.size(); offset += 16 * kKiB) {
    const auto chunk = std::span(data).subspan(offset, std::min(16 * kKiB, data.size() - offset));
    ASSERT_EQ(WriteAll(conn, chunk), "");
    ASSERT_EQ(ReadExactly(conn, chunk.size(), echoed), "");
  }
  EXPECT_EQ(Sha256Hex(echoed), Sha256Hex(data));
}

// CloseBoth sends close_notify and reads to the server's.
void CloseBoth(Connection& conn) {
  ASSERT_EQ(ShutdownText(conn), "");
  Bytes rest;
  EXPECT_EQ(ReadToEnd(conn, rest), "");
  EXPECT_TRUE(rest.empty());
}

// FullThenResumed: two connections to server with one config; the first
// must be a full handshake that leaves `tickets` sessions, the second must
// resume. Checks offload and data on both.
void FullThenResumed(const ServerConfig& server_config, ClientConfig client_config, std::uint64_t tickets,
                     bool tls13) {
  (void)CachedCapabilities();
  TestServer server(server_config, 2, Echo);
  ASSERT_TRUE(server.ok()) << server.listen_error();
  {
    auto first = ConnectTo(server.port(), client_config);
    ASSERT_TRUE(first.ok()) << first.error().ToString();
    EXPECT_FALSE(first->session().resumed);
    ExpectOffloaded(first->tx(), first->rx(), Offload::kKernel, Offload::kKernel, "the first client");
    EchoSome(*first, 1000);
    if (tls13) {
      EXPECT_EQ(first->tickets_relayed(), tickets);
      EXPECT_EQ(first->tickets_dropped(), 0u) << DropReason(*first);
    }
    EXPECT_EQ(client_config.session_cache->size(), tls13 ? tickets : 1u);
    CloseBoth(*first);
  }
  const auto before = ReadTlsStat();
  auto second = ConnectTo(server.port(), client_config);
  ASSERT_TRUE(second.ok()) << second.error().ToString();
  EXPECT_TRUE(second->session().resumed) << "the second connection should resume with a stored session";
  ExpectOffloaded(second->tx(), second->rx(), Offload::kKernel, Offload::kKernel, "the resumed client");
  EchoSome(*second, 256 * kKiB + 7);
  if (tls13 && CachedCapabilities().rekey) {
    // Key updates on a resumed connection: ours, and the server's answer.
    auto updated = second->UpdateKeys(/*request_peer_update=*/true);
    ASSERT_TRUE(updated.ok()) << updated.error().ToString();
    EchoSome(*second, 64 * kKiB);
    EXPECT_EQ(second->tx_key_updates(), 1u);
    EXPECT_EQ(second->rx_key_updates(), 1u);
  }
  CloseBoth(*second);
  const auto& ends = server.Join();
  ASSERT_EQ(ends.size(), 2u);
  for (const ServerEnd& end : ends) {
    EXPECT_EQ(end.error, "");
    ExpectOffloaded(end, Offload::kKernel, Offload::kKernel, "the server");
  }
  EXPECT_TRUE(ends[1].session.resumed) << "the server should agree that it resumed";
  // Both ends of the resumed connection went to software kTLS, each way.
  EXPECT_EQ(TlsStatDelta(before, "TlsTxSw"), 2);
  EXPECT_EQ(TlsStatDelta(before, "TlsRxSw"), 2);
}

// --- a. TLS 1.3 tickets ----------------------------------------------------------

class Tls13ClientResumptionKernelTest : public ::testing::TestWithParam<int> {};

TEST_P(Tls13ClientResumptionKernelTest, TicketsThatArriveAfterRxOffloadResume) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  ServerConfig server_config = ServerFor();
  server_config.num_tickets = GetParam();
  FullThenResumed(server_config, ClientFor(), static_cast<std::uint64_t>(GetParam()), /*tls13=*/true);
}

INSTANTIATE_TEST_SUITE_P(NumTickets, Tls13ClientResumptionKernelTest, ::testing::Values(1, 2),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return std::to_string(info.param) + "Tickets";
                         });

TEST(ClientResumptionKernelTest, EachTls13TicketIsUsedOnce) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  ServerConfig server_config = ServerFor();
  server_config.num_tickets = 1;
  TestServer server(server_config, 3, Echo);
  ASSERT_TRUE(server.ok()) << server.listen_error();
  ClientConfig config = ClientFor();
  config.offload.session_tickets = false;  // Only the first connection's ticket is kept.
  std::vector<bool> resumed;
  for (int i = 0; i < 3; ++i) {
    if (i == 0) config.offload.session_tickets = true;
    auto conn = ConnectTo(server.port(), config);
    ASSERT_TRUE(conn.ok()) << conn.error().ToString();
    EchoSome(*conn, 100);
    resumed.push_back(conn->session().resumed);
    CloseBoth(*conn);
    config.offload.session_tickets = false;
  }
  EXPECT_EQ(resumed, (std::vector<bool>{false, true, false}))
      << "one ticket resumes one connection (RFC 8446 C.4)";
  server.Join();
}

// --- b. Client certificates -------------------------------------------------------

TEST(ClientResumptionKernelTest, WithClientCertificates) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  ServerConfig server_config = ServerFor();
  server_config.client_ca_file = TestCert().cert_file;
  ClientConfig client_config = ClientFor();
  client_config.cert_file = TestCert().cert_file;
  client_config.key_file = TestCert().key_file;
  FullThenResumed(server_config, client_config, 2, /*tls13=*/true);
}

// --- c. TLS 1.2 ----------------------------------------------------------------

class Tls12ClientResumptionKernelTest : public ::testing::TestWithParam<bool> {};

// A TLS 1.2 server context of our own: with use_tickets false, resumption
// goes by session ID (the server's cache).
UniqueSslCtx Tls12ServerContext(bool use_tickets) {
  UniqueSslCtx ctx(SSL_CTX_new(TLS_server_method()));
  if (!ctx || SSL_CTX_use_certificate_chain_file(ctx.get(), TestCert().cert_file.c_str()) != 1 ||
      SSL_CTX_use_PrivateKey_file(ctx.get(), TestCert().key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
    return nullptr;
  }
  SSL_CTX_set_max_proto_version(ctx.get(), TLS1_2_VERSION);
  SSL_CTX_set_options(ctx.get(), SSL_OP_NO_RENEGOTIATION | (use_tickets ? 0 : SSL_OP_NO_TICKET));
  SSL_CTX_set_session_cache_mode(ctx.get(), SSL_SESS_CACHE_SERVER);
  return ctx;
}

TEST_P(Tls12ClientResumptionKernelTest, ResumesBySessionIdOrTicket) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  UniqueSslCtx ctx = Tls12ServerContext(GetParam());
  ASSERT_TRUE(ctx) << OpenSslErrors();
  ServerConfig server_config = ServerFor();
  server_config.ssl_ctx = ctx.get();
  ClientConfig client_config = ClientFor();
  client_config.max_version = TlsVersion::kTls12;
  FullThenResumed(server_config, client_config, 0, /*tls13=*/false);
}

INSTANTIATE_TEST_SUITE_P(Kinds, Tls12ClientResumptionKernelTest, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? std::string("Ticket") : std::string("SessionId");
                         });

// --- b2. Sessions stand for whom they authenticated -------------------------------

// UseAndClose: a connection with config that must succeed; its tickets go
// into the config's cache. Returns whether it resumed.
bool UseAndClose(std::uint16_t port, const ClientConfig& config) {
  auto conn = ConnectTo(port, config);
  EXPECT_TRUE(conn.ok()) << conn.error().ToString();
  if (!conn.ok()) return false;
  EchoSome(*conn, 100);
  CloseBoth(*conn);
  return conn->session().resumed;
}

// A resumed handshake shows no certificate: a session made for one name
// must not stand for another (RFC 8446 4.6.1). The test certificate is for
// localhost and 127.0.0.1, not for other.example.
TEST(ClientResumptionKernelTest, ASessionIsNotResumedForAnotherName) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  TestServer server(ServerFor(), 5, Echo);
  ASSERT_TRUE(server.ok()) << server.listen_error();
  const ClientConfig config = ClientFor();  // 127.0.0.1, verified as an IP address.
  EXPECT_FALSE(UseAndClose(server.port(), config));
  ASSERT_EQ(config.session_cache->size(), 2u);

  ClientConfig other = config;  // Shares the cache.
  other.sni = "other.example";
  auto refused = ConnectTo(server.port(), other);
  ASSERT_FALSE(refused.ok()) << "a session made for 127.0.0.1 let other.example through unverified (resumed "
                             << refused->session().resumed << ")";
  EXPECT_NE(refused.error().ToString().find("hostname mismatch"), std::string::npos) << refused.error().ToString();
  EXPECT_EQ(config.session_cache->size(), 2u) << "the failed connection took a session";

  ClientConfig named = config;
  named.sni = "localhost";  // In the certificate, but another name: its own sessions.
  EXPECT_FALSE(UseAndClose(server.port(), named));
  EXPECT_TRUE(UseAndClose(server.port(), named));
  EXPECT_TRUE(UseAndClose(server.port(), config)) << "the first connection's sessions are still there";
  server.Join();
}

// A session brought in with SessionCache::Put under another host is
// resumed only if its certificate matches that host: 127.0.0.2 is not in
// the test certificate.
TEST(ClientResumptionKernelTest, APutSessionIsResumedOnlyWhereItsCertificateMatches) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  TestServer server(ServerFor(), 3, Echo);
  ASSERT_TRUE(server.ok()) << server.listen_error();
  const ClientConfig config = ClientFor();
  EXPECT_FALSE(UseAndClose(server.port(), config));
  detail::UniqueSession session(config.session_cache->Take("127.0.0.1", server.port(), /*only_verified=*/true));
  ASSERT_TRUE(session);

  ClientConfig moved = ClientFor();  // A cache of its own.
  moved.session_cache->Put("127.0.0.2", server.port(), session.get());
  auto handshake = StartClientHandshake(ConnectLoopback(server.port()).release(), "127.0.0.2", server.port(), moved);
  ASSERT_TRUE(handshake.ok()) << handshake.error().ToString();
  auto refused = detail::FinishBlocking(std::move(handshake).value());
  ASSERT_FALSE(refused.ok()) << "a session for 127.0.0.1 let 127.0.0.2 through unverified (resumed "
                             << refused->session().resumed << ")";
  EXPECT_NE(refused.error().ToString().find("IP address mismatch"), std::string::npos) << refused.error().ToString();
  EXPECT_EQ(moved.session_cache->size(), 1u) << "the session was handed out";

  moved.session_cache->Put("127.0.0.1", server.port(), session.get());
  EXPECT_TRUE(UseAndClose(server.port(), moved)) << "where the certificate matches, it resumes";
  server.Join();
}

// A session stands for the client certificate shown in its handshake: a
// config without one must not resume it (the server, which requires one,
// then refuses the full handshake).
TEST(ClientResumptionKernelTest, SessionsMadeWithAClientCertificateStayWithIt) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  ServerConfig server_config = ServerFor();
  server_config.client_ca_file = TestCert().cert_file;
  TestServer server(server_config, 3, Echo);
  ASSERT_TRUE(server.ok()) << server.listen_error();
  ClientConfig with_cert = ClientFor();
  with_cert.cert_file = TestCert().cert_file;
  with_cert.key_file = TestCert().key_file;
  EXPECT_FALSE(UseAndClose(server.port(), with_cert));

  ClientConfig without = with_cert;  // Shares the cache.
  without.cert_file.clear();
  without.key_file.clear();
  auto conn = ConnectTo(server.port(), without);
  if (conn.ok()) {
    ASSERT_FALSE(conn->session().resumed) << "resumed the session made with another client's certificate";
    // TLS 1.3: the server's refusal of a full handshake without a
    // certificate comes after the client's Finished, at the first read.
    Bytes got;
    EXPECT_NE(ReadExactly(*conn, 1, got), "") << "the server took a client without a certificate";
  }
  EXPECT_TRUE(UseAndClose(server.port(), with_cert)) << "the config with the certificate resumes";
  server.Join();
}

// Connect with no host would reach this machine (getaddrinfo), and a
// verifying client with no name to verify would accept any certificate a
// trusted CA signed.
TEST(ClientResumptionKernelTest, NoNameToVerifyIsAUsageError) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  auto connected = Connect("", 443, ClientFor());
  ASSERT_FALSE(connected.ok());
  EXPECT_EQ(connected.error().category, ErrorCategory::kUsage) << connected.error().ToString();
  SocketPair pair = LoopbackTcpPair();
  auto started = StartClientHandshake(pair.client.release(), "", 443, ClientFor());
  ASSERT_FALSE(started.ok());
  EXPECT_EQ(started.error().category, ErrorCategory::kUsage) << started.error().ToString();
  ClientConfig unverified = ClientFor();
  unverified.verify = false;  // Nothing to verify: no name needed.
  SocketPair other = LoopbackTcpPair();
  EXPECT_TRUE(StartClientHandshake(other.client.release(), "", 443, unverified).ok());
}

// --- d. Tickets off -------------------------------------------------------------

TEST(ClientResumptionKernelTest, TicketsOffKeepsNothingAndSaysWhy) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  TestServer server(ServerFor(), 2, Echo);
  ASSERT_TRUE(server.ok()) << server.listen_error();
  ClientConfig config = ClientFor();
  config.offload.session_tickets = false;
  for (int i = 0; i < 2; ++i) {
    auto conn = ConnectTo(server.port(), config);
    ASSERT_TRUE(conn.ok()) << conn.error().ToString();
    ExpectOffloaded(conn->tx(), conn->rx(), Offload::kKernel, Offload::kKernel, "the client");
    EchoSome(*conn, 1000);
    EXPECT_FALSE(conn->session().resumed);
    EXPECT_EQ(conn->tickets_relayed(), 0u);
    EXPECT_EQ(conn->tickets_dropped(), 2u);
    EXPECT_NE(DropReason(*conn).find("session_tickets"), std::string::npos) << DropReason(*conn);
    CloseBoth(*conn);
  }
  EXPECT_EQ(config.session_cache->size(), 0u);
  server.Join();
}

// --- e. Tickets whenever the server likes -----------------------------------------

// PlainServer: a plain OpenSSL TLS 1.3 server on one end of a loopback pair,
// sending no tickets of its own accord; script does the rest.
class PlainServer {
 public:
  explicit PlainServer(std::function<std::string(SSL*)> script) : ctx_(NewTestContext(/*server=*/true)) {
    SSL_CTX_set_num_tickets(ctx_.get(), 0);
    pair_ = LoopbackTcpPair();
    SetIoTimeout(pair_.server.get(), std::chrono::seconds(20));
    thread_ = std::thread([this, script = std::move(script)] {
      UniqueSsl ssl(SSL_new(ctx_.get()));
      SSL_set_fd(ssl.get(), pair_.server.get());
      ERR_clear_error();
      result_ = SSL_accept(ssl.get()) == 1 ? script(ssl.get()) : "SSL_accept: " + OpenSslErrors();
    });
  }
  ~PlainServer() {
    if (thread_.joinable()) thread_.join();
  }
  // Client: the library's client on the other end (takes the socket).
  Result<Connection> Client(const ClientConfig& config) {
    auto handshake = StartClientHandshake(pair_.client.release(), "127.0.0.1", 443, config);
    if (!handshake.ok()) return std::move(handshake).error();
    return detail::FinishBlocking(std::move(handshake).value());
  }
  std::string Join() {
    thread_.join();
    return result_;
  }

 private:
  UniqueSslCtx ctx_;
  SocketPair pair_;
  std::thread thread_;
  std::string result_;
};

std::string SendTicket(SSL* ssl) {
  ERR_clear_error();
  if (SSL_new_session_ticket(ssl) != 1 || SSL_do_handshake(ssl) != 1) return "sending a ticket: " + OpenSslErrors();
  return {};
}

std::string ReadText(Connection& conn, std::size_t len) {
  Bytes got;
  if (std::string error = ReadExactly(conn, len, got); !error.empty()) return "<" + error + ">";
  return std::string(got.begin(), got.end());
}

TEST(ClientResumptionKernelTest, ATicketBetweenDataRecordsAndOneAfterOurCloseNotifyAreRelayed) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  std::promise<void> client_closed;
  PlainServer server([&client_closed](SSL* ssl) -> std::string {
    if (std::string e = SslWriteAll(ssl, Bytes{'a'}); !e.empty()) return e;
    if (std::string e = SendTicket(ssl); !e.empty()) return e;
    if (std::string e = SslWriteAll(ssl, Bytes{'b'}); !e.empty()) return e;
    client_closed.get_future().wait();
    if (std::string e = SendTicket(ssl); !e.empty()) return e;
    if (std::string e = SslWriteAll(ssl, Bytes{'c'}); !e.empty()) return e;
    return SslExpectCloseNotify(ssl) + (SSL_shutdown(ssl) >= 0 ? "" : "SSL_shutdown failed");
  });
  ClientConfig config = ClientFor();
  auto conn = server.Client(config);
  ASSERT_TRUE(conn.ok()) << conn.error().ToString();
  ExpectOffloaded(conn->tx(), conn->rx(), Offload::kKernel, Offload::kKernel, "the client");
  EXPECT_EQ(ReadText(*conn, 2), "ab");
  EXPECT_EQ(conn->tickets_relayed(), 1u);
  ASSERT_EQ(ShutdownText(*conn), "");
  client_closed.set_value();
  EXPECT_EQ(ReadText(*conn, 1), "c");
  Bytes rest;
  EXPECT_EQ(ReadToEnd(*conn, rest), "");
  EXPECT_EQ(conn->tickets_relayed(), 2u) << "OpenSSL 3 keeps a ticket that comes after our close_notify";
  EXPECT_EQ(conn->tickets_dropped(), 0u) << DropReason(*conn);
  EXPECT_EQ(config.session_cache->size(), 2u);
  EXPECT_EQ(server.Join(), "");
}

TEST(ClientResumptionKernelTest, ATicketReadThroughATinyBufferTakesTwoRecvmsg) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  std::promise<void> sent;
  PlainServer server([&sent](SSL* ssl) -> std::string {
    std::string e = SendTicket(ssl);
    if (e.empty()) e = SslWriteAll(ssl, Bytes{'a'});
    sent.set_value();
    return e.empty() ? SslExpectCloseNotify(ssl) + (SSL_shutdown(ssl) >= 0 ? "" : "SSL_shutdown failed") : e;
  });
  ClientConfig config = ClientFor();
  auto conn = server.Client(config);
  ASSERT_TRUE(conn.ok()) << conn.error().ToString();
  ExpectOffloaded(conn->tx(), conn->rx(), Offload::kKernel, Offload::kKernel, "the client");
  sent.get_future().wait();  // Both records are in our receive queue.
  ClearFaults();
  std::array<std::byte, 1> one{};
  auto got = conn->Read(one);
  ASSERT_TRUE(got.ok()) << got.error().ToString();
  EXPECT_EQ(got->bytes, 1u);
  EXPECT_EQ(one[0], std::byte{'a'});
  EXPECT_EQ(conn->tickets_relayed(), 1u) << DropReason(*conn);
  // One byte of the ticket's record, the rest of it, then the data record.
  EXPECT_EQ(CallCount(Syscall::kRecvMsg), 3);
  ASSERT_EQ(ShutdownText(*conn), "");
  Bytes rest;
  EXPECT_EQ(ReadToEnd(*conn, rest), "");
  EXPECT_EQ(server.Join(), "");
}

TEST(ClientResumptionKernelTest, ATicketAfterThePeersKeyUpdate) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  const bool rekey = CachedCapabilities().rekey;
  PlainServer server([](SSL* ssl) -> std::string {
    if (std::string e = SendTicket(ssl); !e.empty()) return e;
    if (SSL_key_update(ssl, SSL_KEY_UPDATE_NOT_REQUESTED) != 1) return "SSL_key_update: " + OpenSslErrors();
    if (std::string e = SslWriteAll(ssl, Bytes{'k'}); !e.empty()) return e;
    if (std::string e = SendTicket(ssl); !e.empty()) return e;
    if (std::string e = SslWriteAll(ssl, Bytes{'t'}); !e.empty()) return e;
    std::array<char, 1> byte{};
    (void)SSL_read(ssl, byte.data(), 1);  // Until the client is done.
    return {};
  });
  auto conn = server.Client(ClientFor());
  ASSERT_TRUE(conn.ok()) << conn.error().ToString();
  if (!rekey) {
    // 6.1 with RX forced into the kernel: a KeyUpdate ends the connection
    // (the README's policy); the ticket before it was relayed.
    Bytes got;
    const std::string error = ReadExactly(*conn, 2, got);
    EXPECT_NE(error.find("KeyUpdate"), std::string::npos) << error;
    EXPECT_EQ(conn->tickets_relayed(), 1u);
    ::shutdown(conn->fd(), SHUT_RDWR);
    server.Join();
    return;
  }
  EXPECT_EQ(ReadText(*conn, 2), "kt");
  EXPECT_EQ(conn->rx_key_updates(), 1u);
  EXPECT_EQ(conn->tickets_relayed(), 1u);
  EXPECT_EQ(conn->tickets_dropped(), 1u);
  EXPECT_NE(DropReason(*conn).find("KeyUpdate"), std::string::npos) << DropReason(*conn);
  ASSERT_EQ(ShutdownText(*conn), "");
  conn->Close();
  EXPECT_EQ(server.Join(), "");
}

// --- f. A malformed ticket ---------------------------------------------------------

// ServerSecret is a key-log callback that keeps SERVER_TRAFFIC_SECRET_0 in
// the SSL's app data (a std::string of hex).
void KeepServerSecret(const SSL* ssl, const char* line) {
  const std::string text = line;
  const std::string label = "SERVER_TRAFFIC_SECRET_0 ";
  if (text.rfind(label, 0) != 0) return;
  auto* out = static_cast<std::string*>(SSL_get_app_data(ssl));
  if (out != nullptr) *out = text.substr(text.rfind(' ') + 1);
}

TEST(ClientResumptionKernelTest, AMalformedTicketGetsDecodeErrorAsFromOpenSsl) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  // OpenSSL cannot be made to send a bad ticket, so the server seals one
  // itself under its first application key (sequence number 0) and writes
  // it to the socket: the nonce's length byte claims 200 bytes where 1 is.
  UniqueSslCtx ctx = NewTestContext(/*server=*/true, "TLS_AES_128_GCM_SHA256");
  ASSERT_TRUE(ctx);
  SSL_CTX_set_num_tickets(ctx.get(), 0);
  SSL_CTX_set_keylog_callback(ctx.get(), KeepServerSecret);
  SocketPair pair = LoopbackTcpPair();
  SetIoTimeout(pair.server.get(), std::chrono::seconds(20));
  std::string server_result;
  std::thread server_thread([&] {
    UniqueSsl ssl(SSL_new(ctx.get()));
    std::string secret_hex;
    SSL_set_app_data(ssl.get(), &secret_hex);
    SSL_set_fd(ssl.get(), pair.server.get());
    if (SSL_accept(ssl.get()) != 1) {
      server_result = "SSL_accept: " + OpenSslErrors();
      return;
    }
    long secret_len = 0;
    unsigned char* secret = OPENSSL_hexstr2buf(secret_hex.c_str(), &secret_len);
    auto keys = detail::DeriveTls13TrafficKeys(Cipher::kAes128Gcm,
                                               std::span<const unsigned char>(secret, static_cast<std::size_t>(secret_len)));
    OPENSSL_free(secret);
    if (!keys.ok()) {
      server_result = "keys: " + keys.error().ToString();
      return;
    }
    RecordKeys record_keys = MakeRecordKeys(TlsVersion::kTls13, Cipher::kAes128Gcm, keys->key.bytes(),
                                            keys->iv.bytes(), 0);
    const Bytes bad_ticket = {4, 0, 0, 10, 0, 0, 0, 60, 1, 2, 3, 4, 200, 9};
    const Bytes record = SealRecord(record_keys, SSL3_RT_HANDSHAKE, bad_ticket);
    if (!WriteAll(pair.server.get(), record)) {
      server_result = "writing the bad ticket failed";
      return;
    }
    server_result = SslExpectAlert(ssl.get(), SSL_R_TLSV1_ALERT_DECODE_ERROR);
  });
  auto handshake = StartClientHandshake(pair.client.release(), "127.0.0.1", 443, ClientFor());
  ASSERT_TRUE(handshake.ok()) << handshake.error().ToString();
  auto conn = detail::FinishBlocking(std::move(handshake).value());
  ASSERT_TRUE(conn.ok()) << conn.error().ToString();
  ExpectOffloaded(conn->tx(), conn->rx(), Offload::kKernel, Offload::kKernel, "the client");
  std::array<std::byte, 16> buf{};
  auto got = conn->Read(buf);
  ASSERT_FALSE(got.ok()) << "a malformed ticket must end the connection";
  EXPECT_EQ(got.error().category, ErrorCategory::kProtocol) << got.error().ToString();
  EXPECT_EQ(got.error().tls_alert, SSL_AD_DECODE_ERROR) << got.error().ToString();
  server_thread.join();
  EXPECT_EQ(server_result, "") << "the server should have received decode_error";
}

}  // namespace
}  // namespace ktls::testing
