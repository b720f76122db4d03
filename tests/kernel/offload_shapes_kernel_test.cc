// tests/kernel/offload_shapes_kernel_test.cc: every handshake shape that
// moves a sequence number, and every way an offloaded connection can end.
//
// A record sequence number that is off by one in either direction does not
// show until data flows: the kernel then fails the read with EBADMSG (ktls
// reports bad_record_mac), or the peer's OpenSSL fails to decrypt. So every
// shape here is followed by data in both directions, checked by SHA-256.
//
//  a. The server sends 0, 1 or 5 session tickets before offload; the
//     library's client, with RX in the kernel, consumes them.
//  b. Mutual TLS (client Certificate, CertificateVerify).
//  c. Session resumption by ticket.
//  d. HelloRetryRequest (a second ClientHello).
//  e. A client that sends application data in the same TCP segment as its
//     Finished: read by the kernel after offload, or, with read-ahead on,
//     buffered by OpenSSL and drained by ktls before offload.
//  f. How RX ends: close_notify, a FIN without it, a fatal alert, bad bytes
//     (a record that fails authentication, an oversized record, bytes that
//     are no record, each answered with its alert), a reset; and the
//     close_notify our Shutdown sends, as a plain OpenSSL peer sees it.
//
// Peers are the library (Listener, Connect, the bring-your-own API) where it
// can make the shape, and plain OpenSSL where the test needs control that the
// library's client does not offer.
#include <netinet/in.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <poll.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <future>
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
#include "conn/kernel_io.h"
#include "core/openssl_ptr.h"
#include "ktls/client.h"
#include "ktls/connection.h"
#include "ktls/offload.h"
#include "ktls/server.h"
#include "ktls/types.h"
#include "tests/support/fault_syscalls.h"
#include "tests/support/kernel_env.h"
#include "tests/support/sockets.h"
#include "tests/support/tls_peers.h"

namespace ktls::testing {
namespace {

using Bytes = std::vector<std::uint8_t>;
using detail::UniqueBio;
using detail::UniqueSession;
using detail::UniqueSsl;
using detail::UniqueSslCtx;
using namespace plain_openssl;  // NOLINT: OpenSslErrors, SslWriteAll, ... (tls_peers.h)

constexpr std::size_t kKiB = 1024;
// A plain OpenSSL peer's echo: write this much, read it back, repeat (one
// SSL object must never be used by two threads at once).
constexpr std::size_t kLockstepChunk = 16 * kKiB;
// TLS alert descriptions (RFC 8446 6).
constexpr std::uint8_t kAlertLevelFatal = 2;
constexpr std::uint8_t kAlertHandshakeFailure = 40;

// Plain OpenSSL peers: no ktls anywhere, RX and TX in userspace.

// PlainPeer: an OpenSSL connection ktls does not touch. The socket is owned
// here, not by the SSL.
struct PlainPeer {
  UniqueFd fd;
  UniqueSsl ssl;
};

// NewPlainPeer wraps fd in a fresh SSL from ctx.
std::string NewPlainPeer(SSL_CTX* ctx, UniqueFd fd, PlainPeer& out) {
  out.fd = std::move(fd);
  if (!out.fd) return "no socket";
  out.ssl.reset(SSL_new(ctx));
  if (!out.ssl || SSL_set_fd(out.ssl.get(), out.fd.get()) != 1) return "SSL_new/SSL_set_fd: " + OpenSslErrors();
  return {};
}

// ConnectPlain: a plain OpenSSL client handshake with the server on port,
// resuming session if given.
std::string ConnectPlain(SSL_CTX* ctx, std::uint16_t port, SSL_SESSION* session, PlainPeer& out) {
  if (std::string error = NewPlainPeer(ctx, ConnectLoopback(port, kIoTimeout), out); !error.empty()) return error;
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

// ---------------------------------------------------------------------------
// a. Session tickets before offload.

class OffloadTicketsKernelTest : public ::testing::TestWithParam<int> {};

// The server's tickets go out under the application key before the server
// offloads, so its TX sequence number starts at the number of tickets. The
// library's client offloads RX before they arrive: the kernel hands them to
// ktls as handshake records, which it must hand to OpenSSL as sessions
// (resumption_kernel_test.cc resumes with them), never surfacing them as
// data or errors, even when a read buffer is smaller than a ticket.
TEST_P(OffloadTicketsKernelTest, ServerTicketsBeforeOffloadKeepDataFlowing) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  const int num_tickets = GetParam();
  ServerConfig server_config = ServerFor();
  server_config.num_tickets = num_tickets;
  TestServer server(server_config, 1, Echo);
  ASSERT_TRUE(server.ok()) << server.listen_error();
  auto conn = ConnectTo(server.port(), ClientFor());
  ASSERT_TRUE(conn.ok()) << "Connect: " << conn.error().ToString();
  ExpectOffloaded(conn->tx(), conn->rx(), Offload::kKernel, Offload::kKernel, "the client");

  // First a short echo read back through a 3-byte buffer: the tickets come
  // first, in pieces.
  const Bytes hello = RandomBytes(1000);
  ASSERT_EQ(WriteAll(*conn, hello), "");
  Bytes echoed;
  std::array<std::byte, 3> tiny{};
  while (echoed.size() < hello.size()) {
    auto got = conn->Read(tiny);
    ASSERT_TRUE(got.ok()) << "a ticket must never surface as an error: " << got.error().ToString();
    ASSERT_FALSE(got->end_of_stream || got->would_block) << "after " << echoed.size() << " bytes";
    const auto* bytes = reinterpret_cast<const std::uint8_t*>(tiny.data());
    echoed.insert(echoed.end(), bytes, bytes + got->bytes);
  }
  EXPECT_EQ(echoed, hello);
  EXPECT_EQ(conn->tickets_relayed(), static_cast<std::uint64_t>(num_tickets))
      << "every ticket the server sent should have reached OpenSSL by the first read";
  EXPECT_EQ(conn->tickets_dropped(), 0u) << (conn->tickets_dropped_reason() ? conn->tickets_dropped_reason() : "");

  const Bytes data = RandomBytes(100 * kKiB + 1);
  echoed.clear();
  ASSERT_EQ(EchoThrough(*conn, data, Pace::kConcurrent, echoed), "");
  EXPECT_EQ(Sha256Hex(echoed), Sha256Hex(data)) << "the echoed bytes should be the bytes sent";
  EXPECT_EQ(conn->tickets_relayed(), static_cast<std::uint64_t>(num_tickets));
  const ServerEnd& end = server.Join()[0];
  EXPECT_EQ(end.error, "");
  ExpectOffloaded(end, Offload::kKernel, Offload::kKernel, "the server");
  EXPECT_EQ(end.bytes_in, hello.size() + data.size());
}

INSTANTIATE_TEST_SUITE_P(NumTickets, OffloadTicketsKernelTest, ::testing::Values(0, 1, 5),
                         [](const ::testing::TestParamInfo<int>& param_info) {
                           return std::to_string(param_info.param) + "Tickets";
                         });

// ---------------------------------------------------------------------------
// b. Mutual TLS.

Bytes CertificateDer(const std::string& pem_file) {
  std::FILE* file = std::fopen(pem_file.c_str(), "r");
  if (file == nullptr) return {};
  detail::UniqueX509 cert(PEM_read_X509(file, nullptr, nullptr, nullptr));
  std::fclose(file);
  if (!cert) return {};
  const int len = i2d_X509(cert.get(), nullptr);
  if (len <= 0) return {};
  Bytes der(static_cast<std::size_t>(len));
  unsigned char* out = der.data();
  i2d_X509(cert.get(), &out);
  return der;
}

// The client's Certificate and CertificateVerify add records to its TX
// under the handshake key; its application records still start at zero.
TEST(OffloadShapesKernelTest, MutualTlsClientCertificate) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  const TempCert client_cert;
  ServerConfig server_config = ServerFor();
  server_config.client_ca_file = client_cert.cert_file;
  TestServer server(server_config, 1, Echo);
  ASSERT_TRUE(server.ok()) << server.listen_error();
  ClientConfig client_config = ClientFor();
  client_config.cert_file = client_cert.cert_file;
  client_config.key_file = client_cert.key_file;
  auto conn = ConnectTo(server.port(), client_config);
  ASSERT_TRUE(conn.ok()) << "Connect with a client certificate: " << conn.error().ToString();
  ASSERT_TRUE(server.WaitHandshaken(1)) << "the server should have finished handshake and offload";
  ExpectOffloaded(conn->tx(), conn->rx(), Offload::kKernel, Offload::kKernel, "the client");

  const Bytes data = RandomBytes(64 * kKiB + 1);
  Bytes echoed;
  ASSERT_EQ(EchoThrough(*conn, data, Pace::kConcurrent, echoed), "");
  EXPECT_EQ(Sha256Hex(echoed), Sha256Hex(data)) << "the echoed bytes should be the bytes sent";
  const ServerEnd& end = server.Join()[0];
  EXPECT_EQ(end.error, "");
  ExpectOffloaded(end, Offload::kKernel, Offload::kKernel, "the server");
  ASSERT_FALSE(end.session.peer_certificates.empty())
      << "the server's SessionInfo should carry the client's certificate";
  EXPECT_EQ(end.session.peer_certificates[0], CertificateDer(client_cert.cert_file))
      << "the first peer certificate should be the client's leaf";
  ASSERT_FALSE(conn->session().peer_certificates.empty());
  EXPECT_EQ(conn->session().peer_certificates[0], CertificateDer(TestCert().cert_file));
}

// keep_peer_certificates = false: the same mutual-TLS connection is
// offloaded both ways (the SSL is freed) and echoes, and the server's
// SessionInfo holds no certificate.
TEST(OffloadShapesKernelTest, MutualTlsWithoutKeepingPeerCertificates) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  const TempCert client_cert;
  ServerConfig server_config = ServerFor();
  server_config.client_ca_file = client_cert.cert_file;
  server_config.offload.keep_peer_certificates = false;
  TestServer server(server_config, 1, Echo);
  ASSERT_TRUE(server.ok()) << server.listen_error();
  ClientConfig client_config = ClientFor();
  client_config.cert_file = client_cert.cert_file;
  client_config.key_file = client_cert.key_file;
  auto conn = ConnectTo(server.port(), client_config);
  ASSERT_TRUE(conn.ok()) << "Connect with a client certificate: " << conn.error().ToString();
  ASSERT_TRUE(server.WaitHandshaken(1)) << "the server should have finished handshake and offload";

  const Bytes data = RandomBytes(20000);
  Bytes echoed;
  ASSERT_EQ(EchoThrough(*conn, data, Pace::kLockstep, echoed), "");
  EXPECT_EQ(Sha256Hex(echoed), Sha256Hex(data)) << "the echoed bytes should be the bytes sent";
  const ServerEnd& end = server.Join()[0];
  EXPECT_EQ(end.error, "");
  ExpectOffloaded(end, Offload::kKernel, Offload::kKernel, "the server");
  EXPECT_TRUE(end.session.peer_certificates.empty()) << "the client's certificate should not have been kept";
  EXPECT_EQ(end.session.protocol, "TLSv1.3");
}

// ---------------------------------------------------------------------------
// c. Session resumption.

// A plain OpenSSL client (RX in userspace, so it keeps the tickets) makes a
// full handshake, then resumes with one of its tickets. The resumed
// handshake has no Certificate messages and its own ticket count.
TEST(OffloadShapesKernelTest, ResumedSessionByTicket) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  TestServer server(ServerFor(), 2, Echo);
  ASSERT_TRUE(server.ok()) << server.listen_error();
  const UniqueSslCtx client_ctx = NewTestContext(false);
  ASSERT_TRUE(client_ctx);

  UniqueSession session;
  {
    PlainPeer first;
    ASSERT_EQ(ConnectPlain(client_ctx.get(), server.port(), nullptr, first), "");
    const Bytes data = RandomBytes(20000);
    Bytes echoed;
    ASSERT_EQ(PlainEchoThrough(first.ssl.get(), data, echoed), "") << "full handshake";
    EXPECT_EQ(Sha256Hex(echoed), Sha256Hex(data));
    session.reset(SSL_get1_session(first.ssl.get()));
    ASSERT_TRUE(session && SSL_SESSION_is_resumable(session.get()) == 1)
        << "the client should hold a resumable session from the server's tickets";
  }
  PlainPeer second;
  ASSERT_EQ(ConnectPlain(client_ctx.get(), server.port(), session.get(), second), "");
  EXPECT_EQ(SSL_session_reused(second.ssl.get()), 1) << "the second handshake should resume";
  const Bytes data = RandomBytes(70000);
  Bytes echoed;
  ASSERT_EQ(PlainEchoThrough(second.ssl.get(), data, echoed), "") << "resumed handshake";
  EXPECT_EQ(Sha256Hex(echoed), Sha256Hex(data)) << "the echoed bytes should be the bytes sent";

  const std::vector<ServerEnd>& ends = server.Join();
  EXPECT_EQ(ends[0].error, "");
  EXPECT_EQ(ends[1].error, "");
  ExpectOffloaded(ends[0], Offload::kKernel, Offload::kKernel, "the server (full handshake)");
  ExpectOffloaded(ends[1], Offload::kKernel, Offload::kKernel, "the server (resumed)");
  EXPECT_FALSE(ends[0].session.resumed);
  EXPECT_TRUE(ends[1].session.resumed) << "SessionInfo::resumed should say the second handshake resumed";
}

// ---------------------------------------------------------------------------
// d. HelloRetryRequest.

// CountClientHellos: a BIO callback on the client's write BIO that counts
// ClientHello messages in the records written (plaintext, so visible).
long CountClientHellos(BIO* bio, int oper, const char* argp, std::size_t len, int /*argi*/, long /*argl*/, int ret,
                       std::size_t* /*processed*/) {
  if (oper != BIO_CB_WRITE || argp == nullptr) return ret;
  auto* count = reinterpret_cast<int*>(BIO_get_callback_arg(bio));
  const auto* bytes = reinterpret_cast<const std::uint8_t*>(argp);
  for (std::size_t at = 0; at + 6 <= len;) {
    const std::size_t record_len = std::size_t{bytes[at + 3]} << 8 | bytes[at + 4];
    if (bytes[at] == 22 && bytes[at + 5] == 1) ++*count;  // handshake record, client_hello
    at += 5 + record_len;
  }
  return ret;
}

// The client's groups are "X25519:P-384", the server's only P-384. OpenSSL
// sends a key share for its first group only, so the server must answer
// the first ClientHello with a HelloRetryRequest and the client sends a
// second one. The client is the bring-your-own API, so the test can watch
// its socket and ask for the negotiated group before offloading.
TEST(OffloadShapesKernelTest, HelloRetryRequest) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  const UniqueSslCtx server_ctx = NewTestContext(true);
  const UniqueSslCtx client_ctx = NewTestContext(false);
  ASSERT_TRUE(server_ctx && client_ctx);
  ASSERT_EQ(SSL_CTX_set1_groups_list(server_ctx.get(), "P-384"), 1);
  ASSERT_EQ(SSL_CTX_set1_groups_list(client_ctx.get(), "X25519:P-384"), 1);
  ServerConfig server_config;
  server_config.offload.rx = RxOffload::kOn;  // Kernel RX on 6.1 too (kAuto would keep it in OpenSSL).
  server_config.ssl_ctx = server_ctx.get();
  TestServer server(server_config, 1, Echo);
  ASSERT_TRUE(server.ok()) << server.listen_error();

  ASSERT_TRUE(PrepareContext(client_ctx.get()).ok());
  PlainPeer client;
  ASSERT_EQ(NewPlainPeer(client_ctx.get(), ConnectLoopback(server.port(), kIoTimeout), client), "");
  ASSERT_TRUE(PrepareSsl(client.ssl.get()).ok());
  int client_hellos = 0;
  BIO* wbio = SSL_get_wbio(client.ssl.get());
  BIO_set_callback_arg(wbio, reinterpret_cast<char*>(&client_hellos));
  BIO_set_callback_ex(wbio, CountClientHellos);
  ERR_clear_error();
  const int ret = SSL_connect(client.ssl.get());
  ASSERT_EQ(ret, 1) << SslFailure(client.ssl.get(), ret, "SSL_connect");
  EXPECT_EQ(SSL_get_negotiated_group(client.ssl.get()), NID_secp384r1) << "the handshake should settle on P-384";
  EXPECT_EQ(client_hellos, 2) << "a HelloRetryRequest should have made the client send a second ClientHello";
  BIO_set_callback_ex(wbio, nullptr);

  OffloadOptions options;
  options.rx = RxOffload::kOn;  // Kernel RX on 6.1 too.
  auto conn = OffloadSsl(client.ssl.get(), options);
  ASSERT_TRUE(conn.ok()) << "OffloadSsl: " << conn.error().ToString();
  client.ssl.release();  // The Connection owns the SSL and the socket now.
  client.fd.release();
  ExpectOffloaded(conn->tx(), conn->rx(), Offload::kKernel, Offload::kKernel, "the client");
  ASSERT_TRUE(SetIoTimeout(conn->fd(), kIoTimeout));
  ASSERT_TRUE(server.WaitHandshaken(1)) << "the server should have finished handshake and offload";
  const Bytes data = RandomBytes(50000);
  Bytes echoed;
  ASSERT_EQ(EchoThrough(*conn, data, Pace::kConcurrent, echoed), "");
  EXPECT_EQ(Sha256Hex(echoed), Sha256Hex(data)) << "the echoed bytes should be the bytes sent";
  const ServerEnd& end = server.Join()[0];
  EXPECT_EQ(end.error, "");
  ExpectOffloaded(end, Offload::kKernel, Offload::kKernel, "the server");
}

// ---------------------------------------------------------------------------
// e. Application data right behind the client's Finished.

// HoldState: a client write BIO that, from the moment the server's Finished
// has been read, holds everything OpenSSL writes until Release sends it in
// one send(): the client's Finished and the application data written right
// after SSL_connect arrive at the server together.
struct HoldState {
  int fd = -1;
  bool holding = false;
  Bytes held;
};

int HoldWrite(BIO* bio, const char* data, int len) {
  auto* state = static_cast<HoldState*>(BIO_get_data(bio));
  const auto* bytes = reinterpret_cast<const std::uint8_t*>(data);
  if (state->holding) {
    state->held.insert(state->held.end(), bytes, bytes + len);
    return len;
  }
  return testing::WriteAll(state->fd, std::span(bytes, static_cast<std::size_t>(len))) ? len : -1;
}

long HoldCtrl(BIO* /*bio*/, int cmd, long /*num*/, void* /*ptr*/) { return cmd == BIO_CTRL_FLUSH ? 1 : 0; }

int HoldCreate(BIO* bio) {
  BIO_set_init(bio, 1);
  return 1;
}

BIO* NewHoldBio(HoldState* state) {
  static BIO_METHOD* method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "test hold");
    BIO_meth_set_write(m, HoldWrite);
    BIO_meth_set_ctrl(m, HoldCtrl);
    BIO_meth_set_create(m, HoldCreate);
    return m;
  }();
  BIO* bio = BIO_new(method);
  if (bio != nullptr) BIO_set_data(bio, state);
  return bio;
}

void HoldAfterServerFinished(int write_p, int /*version*/, int content_type, const void* buf, std::size_t len,
                             SSL* /*ssl*/, void* arg) {
  constexpr std::uint8_t kFinished = 20;
  if (write_p == 0 && content_type == SSL3_RT_HANDSHAKE && len > 0 &&
      static_cast<const std::uint8_t*>(buf)[0] == kFinished) {
    static_cast<HoldState*>(arg)->holding = true;
  }
}

// ConnectPlainWithDataBehindFinished: a plain OpenSSL client handshake on
// fd whose Finished goes out in one send() with early (SSL_write right
// after SSL_connect).
std::string ConnectPlainWithDataBehindFinished(SSL_CTX* ctx, UniqueFd fd, std::span<const std::uint8_t> early,
                                               HoldState& hold, PlainPeer& out) {
  if (std::string error = NewPlainPeer(ctx, std::move(fd), out); !error.empty()) return error;
  hold.fd = out.fd.get();
  BIO* wbio = NewHoldBio(&hold);
  if (wbio == nullptr) return "BIO_new: " + OpenSslErrors();
  SSL_set0_wbio(out.ssl.get(), wbio);
  SSL_set_msg_callback(out.ssl.get(), HoldAfterServerFinished);
  SSL_set_msg_callback_arg(out.ssl.get(), &hold);
  ERR_clear_error();
  const int ret = SSL_connect(out.ssl.get());
  if (ret != 1) return SslFailure(out.ssl.get(), ret, "SSL_connect");
  if (!hold.holding) return "the client never saw the server's Finished";
  if (std::string error = SslWriteAll(out.ssl.get(), early); !error.empty()) return error;
  hold.holding = false;
  if (!testing::WriteAll(hold.fd, hold.held)) return std::string("send of Finished + data: ") + std::strerror(errno);
  hold.held.clear();
  return {};
}

// With the library's Listener (read-ahead off) OpenSSL reads exactly the
// Finished; the data behind it waits in the socket and the kernel decrypts
// it after RX offload. It must come out first, in order.
TEST(OffloadShapesKernelTest, ClientDataBehindFinishedReachesListenerInOrder) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  TestServer server(ServerFor(), 1, Echo);
  ASSERT_TRUE(server.ok()) << server.listen_error();
  const UniqueSslCtx client_ctx = NewTestContext(false);
  ASSERT_TRUE(client_ctx);
  const Bytes early = RandomBytes(40000);  // Three records.
  HoldState hold;
  PlainPeer client;
  ASSERT_EQ(ConnectPlainWithDataBehindFinished(client_ctx.get(), ConnectLoopback(server.port(), kIoTimeout), early,
                                               hold, client),
            "");

  Bytes echoed;
  ASSERT_EQ(SslReadExactly(client.ssl.get(), early.size(), echoed), "");
  EXPECT_EQ(Sha256Hex(echoed), Sha256Hex(early)) << "the data sent behind Finished should come back first, in order";
  const Bytes later = RandomBytes(50000);
  echoed.clear();
  ASSERT_EQ(PlainEchoThrough(client.ssl.get(), later, echoed), "");
  EXPECT_EQ(Sha256Hex(echoed), Sha256Hex(later));
  const ServerEnd& end = server.Join()[0];
  EXPECT_EQ(end.error, "");
  ExpectOffloaded(end, Offload::kKernel, Offload::kKernel, "the server");
  EXPECT_EQ(end.bytes_in, early.size() + later.size());
}

// CountedHandshake: what the tests that count a server handshake's calls
// start from: a server context with both directions for the kernel (RX on
// 6.1 too), a plain client context, and a loopback TCP pair.
struct CountedHandshake {
  std::optional<ServerContext> context;
  UniqueSslCtx client_ctx;
  SocketPair pair;
};

void SetUpCountedHandshake(CountedHandshake& out) {
  ServerConfig config = ServerFor();
  config.offload.rx = RxOffload::kOn;
  auto context = ServerContext::Create(config);
  ASSERT_TRUE(context.ok()) << context.error().ToString();
  out.context.emplace(std::move(context).value());
  out.client_ctx = NewTestContext(false);
  ASSERT_TRUE(out.client_ctx);
  out.pair = LoopbackTcpPair();
  ASSERT_TRUE(out.pair.client.valid() && out.pair.server.valid());
  ASSERT_TRUE(SetIoTimeout(out.pair.client.get(), kIoTimeout));
}

// ktls's own handshake reads each of the client's flights in one call and
// takes nothing past the client's Finished: the ClientHello in one read
// (nothing can follow it before the server answers), then, once the
// server has sent its flight, the client's Finished and the data behind it
// (one send) in one peek, of which exactly the Finished is then taken. Its
// two sends are the server's flight and, at the end, the session tickets.
// OpenSSL's socket BIO without read-ahead takes two reads a record (six
// here) and sends three times. The data behind Finished must still reach
// the kernel (RX), whole.
TEST(OffloadShapesKernelTest, ServerHandshakeReadsEachFlightOnceAndNothingBehindIt) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  CountedHandshake setup;
  ASSERT_NO_FATAL_FAILURE(SetUpCountedHandshake(setup));
  auto& context = setup.context;
  const UniqueSslCtx& client_ctx = setup.client_ctx;
  SocketPair& pair = setup.pair;
  const Bytes early = RandomBytes(300);  // One record, in the same send as Finished.
  HoldState hold;
  PlainPeer client;
  std::string client_error;
  std::thread client_thread([&] {
    client_error = ConnectPlainWithDataBehindFinished(client_ctx.get(), std::move(pair.client), early, hold, client);
  });
  // The ClientHello is there before the handshake starts, so no read waits.
  pollfd pfd{pair.server.get(), POLLIN, 0};
  ASSERT_EQ(::poll(&pfd, 1, 10'000), 1);
  ClearFaults();
  auto conn = context->Handshake(pair.server.release());
  const int reads = CallCount(Syscall::kRecvMsg);
  const int sends = CallCount(Syscall::kSendMsg);
  client_thread.join();
  ASSERT_EQ(client_error, "");
  ASSERT_TRUE(conn.ok()) << conn.error().ToString();
  ExpectOffloaded(conn->tx(), conn->rx(), Offload::kKernel, Offload::kKernel, "the server");
  EXPECT_EQ(reads, 3) << "read the ClientHello, peek at CCS + Finished + data, take CCS + Finished";
  EXPECT_EQ(sends, 2) << "the server's flight, then both session tickets in one send";
  Bytes got;
  ASSERT_EQ(ReadExactly(*conn, early.size(), got), "");
  EXPECT_EQ(Sha256Hex(got), Sha256Hex(early)) << "the data behind Finished, through the kernel";
}

// An event loop's handshake (StartHandshake, Step) reads as few times as
// the blocking one: having sent its flight, the server cannot have the
// client's answer yet, so Step asks the loop to wait without trying a read
// that would fail. The loop here is edge-triggered epoll, registered before
// the handshake: its last read left the queue empty, so the answer's
// arrival is an edge it sees. Three reads in all, as blocking: the
// ClientHello, a peek at the client's last flight, the take of it.
TEST(OffloadShapesKernelTest, EventLoopHandshakeWaitsForTheAnswerBeforeReading) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  CountedHandshake setup;
  ASSERT_NO_FATAL_FAILURE(SetUpCountedHandshake(setup));
  auto& context = setup.context;
  const UniqueSslCtx& client_ctx = setup.client_ctx;
  SocketPair& pair = setup.pair;
  UniqueFd epoll(::epoll_create1(EPOLL_CLOEXEC));
  ASSERT_TRUE(epoll.valid()) << std::strerror(errno);
  epoll_event event{};
  event.events = EPOLLIN | EPOLLET;
  ASSERT_EQ(::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, pair.server.get(), &event), 0) << std::strerror(errno);
  PlainPeer client;
  ASSERT_EQ(NewPlainPeer(client_ctx.get(), std::move(pair.client), client), "");
  std::string client_error;
  std::thread client_thread([&] {
    ERR_clear_error();
    const int ret = SSL_connect(client.ssl.get());
    if (ret != 1) client_error = SslFailure(client.ssl.get(), ret, "SSL_connect");
  });
  // The ClientHello is there before the handshake starts, and the loop has
  // had its edge: from here only new bytes wake it.
  epoll_event hello{};
  ASSERT_EQ(::epoll_wait(epoll.get(), &hello, 1, 10'000), 1);
  ClearFaults();
  auto handshake = context->StartHandshake(pair.server.release());
  ASSERT_TRUE(handshake.ok()) << handshake.error().ToString();
  int waits = 0;
  for (;;) {
    auto wait = handshake->Step();
    ASSERT_TRUE(wait.ok()) << wait.error().ToString();
    if (*wait == Wait::kNone) break;
    ASSERT_LT(++waits, 10) << "the handshake should wait once, for the client's Finished";
    epoll_event ready{};
    ASSERT_EQ(::epoll_wait(epoll.get(), &ready, 1, 10'000), 1) << "an edge-triggered loop missed the client's answer";
  }
  auto conn = handshake->Finish();
  const int reads = CallCount(Syscall::kRecvMsg);
  const int sends = CallCount(Syscall::kSendMsg);
  client_thread.join();
  ASSERT_EQ(client_error, "");
  ASSERT_TRUE(conn.ok()) << conn.error().ToString();
  ExpectOffloaded(conn->tx(), conn->rx(), Offload::kKernel, Offload::kKernel, "the server");
  EXPECT_EQ(reads, 3) << "read the ClientHello, peek at CCS + Finished, take them; no read right after the flight";
  EXPECT_EQ(sends, 2) << "the server's flight, then both session tickets in one send";
  // Through the kernel both ways.
  const Bytes ping = RandomBytes(100);
  ASSERT_EQ(WriteAll(*conn, ping), "");
  Bytes got;
  ASSERT_EQ(SslReadExactly(client.ssl.get(), ping.size(), got), "");
  EXPECT_EQ(got, ping);
}

// OffloadByoServerKernelTest: a bring-your-own server (PrepareSsl,
// SSL_accept, OffloadSsl, then Echo) on its own thread, and a plain OpenSSL
// client in the test, over one loopback TCP pair.
class OffloadByoServerKernelTest : public ::testing::Test {
 protected:
  using Hook = std::function<void(SSL*)>;

  void SetUp() override {
    server_ctx_ = NewTestContext(true);
    client_ctx_ = NewTestContext(false);
    ASSERT_TRUE(server_ctx_ && client_ctx_);
    ASSERT_TRUE(PrepareContext(server_ctx_.get()).ok());
    pair_ = LoopbackTcpPair();
    ASSERT_TRUE(SetIoTimeout(pair_.client.get(), kIoTimeout) && SetIoTimeout(pair_.server.get(), kIoTimeout));
    dog_.Watch(pair_.server.get());
  }

  void TearDown() override {
    if (server_.joinable()) JoinServer("the test body ended before joining the server");
  }

  // StartServer runs the server; before_accept runs after PrepareSsl,
  // before_offload after SSL_accept.
  void StartServer(Hook before_accept, Hook before_offload) {
    server_ = std::thread([this, before_accept = std::move(before_accept), before_offload = std::move(before_offload)] {
      PlainPeer peer;
      if (end_.error = NewPlainPeer(server_ctx_.get(), std::move(pair_.server), peer); !end_.error.empty()) return;
      if (auto prepared = PrepareSsl(peer.ssl.get()); !prepared.ok()) {
        end_.error = "PrepareSsl: " + prepared.error().ToString();
        return;
      }
      if (before_accept) before_accept(peer.ssl.get());
      ERR_clear_error();
      const int ret = SSL_accept(peer.ssl.get());
      if (ret != 1) {
        end_.error = SslFailure(peer.ssl.get(), ret, "SSL_accept");
        return;
      }
      if (before_offload) before_offload(peer.ssl.get());
      OffloadOptions options;
      options.rx = RxOffload::kOn;  // Kernel RX on 6.1 too.
      options.on_fallback = [this](const OffloadReport& report) { end_.fallback_reason = report.reason; };
      auto conn = OffloadSsl(peer.ssl.get(), options);
      if (!conn.ok()) {
        end_.error = "OffloadSsl: " + conn.error().ToString();
        return;
      }
      peer.ssl.release();  // The Connection owns the SSL and the socket now.
      peer.fd.release();
      end_.tx = conn->tx();
      end_.rx = conn->rx();
      Echo(*conn, end_);
    });
  }

  // JoinServer waits for the server; a client that failed (client_error not
  // empty) first shuts its socket so the server stops waiting for it.
  void JoinServer(const std::string& client_error = "") {
    if (!client_error.empty()) ::shutdown(client_.fd.get(), SHUT_RDWR);
    server_.join();
    EXPECT_FALSE(dog_.fired()) << "the test ran past its deadline; its sockets were shut down";
  }

  UniqueSslCtx server_ctx_;
  UniqueSslCtx client_ctx_;
  SocketPair pair_;
  Watchdog dog_{kTestDeadline};
  ServerEnd end_;  // Written by the server thread; read after JoinServer.
  HoldState hold_;
  PlainPeer client_;
  std::thread server_;
};

class OffloadReadAheadKernelTest : public OffloadByoServerKernelTest,
                                   public ::testing::WithParamInterface<std::size_t> {};

// A bring-your-own server that turns read-ahead back on after PrepareSsl:
// reading the client's Finished, OpenSSL also pulls in the records behind
// it (all of them, or up to a partial record with 40000 bytes: its buffer
// holds about one full record). ktls must drain them before RX goes to the
// kernel, and deliver their plaintext first.
TEST_P(OffloadReadAheadKernelTest, BufferedRecordsAreDrainedBeforeRxOffload) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  bool had_buffered_records = false;
  StartServer([](SSL* ssl) { SSL_set_read_ahead(ssl, 1); },
              [&](SSL* ssl) { had_buffered_records = SSL_has_pending(ssl) == 1; });

  const Bytes early = RandomBytes(GetParam());
  std::string client_error =
      ConnectPlainWithDataBehindFinished(client_ctx_.get(), std::move(pair_.client), early, hold_, client_);
  Bytes echoed;
  if (client_error.empty()) client_error = SslReadExactly(client_.ssl.get(), early.size(), echoed);
  const Bytes later = RandomBytes(30000);
  Bytes later_echoed;
  if (client_error.empty()) client_error = PlainEchoThrough(client_.ssl.get(), later, later_echoed);
  JoinServer(client_error);

  EXPECT_EQ(client_error, "");
  EXPECT_EQ(end_.error, "");
  EXPECT_TRUE(had_buffered_records)
      << "OpenSSL should have read records past the Finished (the point of this test)";
  ExpectOffloaded(end_, Offload::kKernel, Offload::kKernel, "the read-ahead server");
  EXPECT_EQ(Sha256Hex(echoed), Sha256Hex(early)) << "the buffered data should come back first, in order";
  EXPECT_EQ(Sha256Hex(later_echoed), Sha256Hex(later)) << "data after offload should follow it";
  EXPECT_EQ(end_.bytes_in, early.size() + later.size());
}

INSTANTIATE_TEST_SUITE_P(EarlyBytes, OffloadReadAheadKernelTest, ::testing::Values(6000, 40000),
                         [](const ::testing::TestParamInfo<std::size_t>& param_info) {
                           return std::to_string(param_info.param) + "Bytes";
                         });

// A client that sends its request, close_notify and FIN right behind its
// Finished: by the time the server offloads, its socket is in CLOSE_WAIT,
// where the kernel refuses the tls ULP (ENOTCONN). The server must say so
// through on_fallback and serve the connection in OpenSSL. (A bring-your-own
// server, so the test can wait for the FIN before offloading.)
TEST_F(OffloadByoServerKernelTest, ClientFinBeforeOffloadLeavesServerInOpenSsl) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  bool saw_fin_before_offload = false;
  StartServer(nullptr, [&](SSL* ssl) {
    pollfd hup{SSL_get_fd(ssl), POLLRDHUP, 0};
    saw_fin_before_offload = ::poll(&hup, 1, 10'000) == 1 && (hup.revents & POLLRDHUP) != 0;
  });

  const Bytes request = RandomBytes(20000);
  std::string client_error =
      ConnectPlainWithDataBehindFinished(client_ctx_.get(), std::move(pair_.client), request, hold_, client_);
  if (client_error.empty() && SSL_shutdown(client_.ssl.get()) < 0) client_error = "SSL_shutdown: " + OpenSslErrors();
  if (client_error.empty() && ::shutdown(client_.fd.get(), SHUT_WR) != 0) client_error = "shutdown(SHUT_WR)";
  Bytes echoed;
  if (client_error.empty()) client_error = SslReadExactly(client_.ssl.get(), request.size(), echoed);
  if (client_error.empty()) client_error = SslExpectCloseNotify(client_.ssl.get());
  JoinServer(client_error);

  EXPECT_EQ(client_error, "");
  EXPECT_EQ(end_.error, "");
  EXPECT_TRUE(saw_fin_before_offload) << "the client's FIN should have arrived before the offload";
  EXPECT_EQ(ExpectedOffload(end_.tx, end_.rx), ExpectedOffload(Offload::kUser, Offload::kUser))
      << "the kernel refuses the tls ULP on a socket in CLOSE_WAIT";
  EXPECT_NE(end_.fallback_reason.find("TCP_ULP"), std::string::npos)
      << "on_fallback should name TCP_ULP: " << end_.fallback_reason;
  EXPECT_EQ(Sha256Hex(echoed), Sha256Hex(request)) << "OpenSSL should serve the request and close_notify";
  EXPECT_EQ(end_.bytes_in, request.size());
}

// ---------------------------------------------------------------------------
// f. How RX ends.

// RxEnding: what the server read until its connection ended.
struct RxEnding {
  Bytes data;
  bool end_of_stream = false;
  std::optional<Error> error;       // The error that ended reading, if any.
  std::optional<Error> later_error;  // A further Read's error, if any.
};

// ReadUntilEnding: the server handler for these tests. Reads until
// end_of_stream or an error, then reads once more.
Handler ReadUntilEnding(RxEnding& ending) {
  return [&ending](Connection& conn, ServerEnd& end) {
    std::array<std::byte, 16 * kKiB> buf{};
    for (;;) {
      auto got = conn.Read(buf);
      if (!got.ok()) {
        ending.error = got.error();
        break;
      }
      if (got->would_block) {
        end.error = "server Read timed out";
        return;
      }
      if (got->end_of_stream) {
        ending.end_of_stream = true;
        break;
      }
      const auto* bytes = reinterpret_cast<const std::uint8_t*>(buf.data());
      ending.data.insert(ending.data.end(), bytes, bytes + got->bytes);
    }
    auto again = conn.Read(buf);
    if (!again.ok()) ending.later_error = again.error();
    if (ending.end_of_stream && !(again.ok() && again->end_of_stream)) {
      end.error = "a Read after close_notify should report end_of_stream again";
    }
    if (ending.end_of_stream) end.error = ShutdownText(conn);
  };
}

std::string CategoryOf(const std::optional<Error>& error) {
  return error ? std::string(ErrorCategoryName(error->category)) + " (" + error->ToString() + ")" : "no error";
}

TEST(OffloadEndOfStreamKernelTest, PeerCloseNotifyIsEndOfStream) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  RxEnding ending;
  TestServer server(ServerFor(), 1, ReadUntilEnding(ending));
  ASSERT_TRUE(server.ok()) << server.listen_error();
  auto conn = ConnectTo(server.port(), ClientFor());
  ASSERT_TRUE(conn.ok()) << "Connect: " << conn.error().ToString();
  ASSERT_TRUE(server.WaitHandshaken(1)) << "the server should have finished handshake and offload";
  const Bytes data = RandomBytes(5000);
  ASSERT_EQ(WriteAll(*conn, data), "");
  ASSERT_EQ(ShutdownText(*conn), "");
  Bytes nothing;
  EXPECT_EQ(ReadToEnd(*conn, nothing), "") << "the server answers with its own close_notify";
  EXPECT_TRUE(nothing.empty());
  const ServerEnd& end = server.Join()[0];
  EXPECT_EQ(end.error, "");
  ExpectOffloaded(end, Offload::kKernel, Offload::kKernel, "the server");
  EXPECT_EQ(ending.data, data);
  EXPECT_TRUE(ending.end_of_stream) << "close_notify should end the stream cleanly, got " << CategoryOf(ending.error);
}

// A FIN without close_notify, from a kTLS peer (shutdown(SHUT_WR) on its
// socket) or from a plain OpenSSL peer that closes its socket: the data
// before it is delivered, then truncation, distinct from a clean end.
TEST(OffloadEndOfStreamKernelTest, FinWithoutCloseNotifyIsTruncation) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  {
    SCOPED_TRACE("the library's client shuts its socket's write side");
    RxEnding ending;
    TestServer server(ServerFor(), 1, ReadUntilEnding(ending));
    ASSERT_TRUE(server.ok()) << server.listen_error();
    auto conn = ConnectTo(server.port(), ClientFor());
    ASSERT_TRUE(conn.ok()) << "Connect: " << conn.error().ToString();
    ASSERT_TRUE(server.WaitHandshaken(1)) << "the server should have finished handshake and offload";
    const Bytes data = RandomBytes(5000);
    ASSERT_EQ(WriteAll(*conn, data), "");
    ASSERT_EQ(::shutdown(conn->fd(), SHUT_WR), 0);
    const ServerEnd& end = server.Join()[0];
    EXPECT_EQ(end.error, "");
    ExpectOffloaded(end, Offload::kKernel, Offload::kKernel, "the server");
    EXPECT_EQ(ending.data, data);
    EXPECT_FALSE(ending.end_of_stream);
    ASSERT_TRUE(ending.error) << "a FIN without close_notify should be an error";
    EXPECT_EQ(ending.error->category, ErrorCategory::kTruncated) << ending.error->ToString();
    ASSERT_TRUE(ending.later_error);
    EXPECT_EQ(ending.later_error->category, ErrorCategory::kClosed) << ending.later_error->ToString();
  }
  {
    SCOPED_TRACE("a plain OpenSSL client closes its socket");
    RxEnding ending;
    ServerConfig config = ServerFor();
    config.num_tickets = 0;  // Unread tickets at close would make the client's close an RST.
    TestServer server(config, 1, ReadUntilEnding(ending));
    ASSERT_TRUE(server.ok()) << server.listen_error();
    const UniqueSslCtx client_ctx = NewTestContext(false);
    ASSERT_TRUE(client_ctx);
    PlainPeer client;
    ASSERT_EQ(ConnectPlain(client_ctx.get(), server.port(), nullptr, client), "");
    ASSERT_TRUE(server.WaitHandshaken(1)) << "the server should have finished handshake and offload";
    const Bytes data = RandomBytes(5000);
    ASSERT_EQ(SslWriteAll(client.ssl.get(), data), "");
    client.ssl.reset();  // No SSL_shutdown: no close_notify.
    client.fd.reset();
    const ServerEnd& end = server.Join()[0];
    EXPECT_EQ(end.error, "");
    ExpectOffloaded(end, Offload::kKernel, Offload::kKernel, "the server");
    EXPECT_EQ(ending.data, data);
    ASSERT_TRUE(ending.error) << "a FIN without close_notify should be an error";
    EXPECT_EQ(ending.error->category, ErrorCategory::kTruncated) << ending.error->ToString();
  }
}

// The library's client, TX in the kernel, sends a fatal handshake_failure
// alert record by hand after some data.
TEST(OffloadEndOfStreamKernelTest, PeerFatalAlertIsAnAlertError) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  RxEnding ending;
  TestServer server(ServerFor(), 1, ReadUntilEnding(ending));
  ASSERT_TRUE(server.ok()) << server.listen_error();
  auto conn = ConnectTo(server.port(), ClientFor());
  ASSERT_TRUE(conn.ok()) << "Connect: " << conn.error().ToString();
  ASSERT_TRUE(server.WaitHandshaken(1)) << "the server should have finished handshake and offload";
  ASSERT_EQ(conn->tx(), Offload::kKernel) << "the alert is sent through the client's kernel TX";
  const Bytes data = RandomBytes(3000);
  ASSERT_EQ(WriteAll(*conn, data), "");
  const std::array<std::uint8_t, 2> alert = {kAlertLevelFatal, kAlertHandshakeFailure};
  const ssize_t sent = detail::SendControlRecord(conn->fd(), 21, alert, MSG_NOSIGNAL);
  ASSERT_EQ(sent, 2) << (sent < 0 ? std::strerror(static_cast<int>(-sent)) : "a short write");

  const ServerEnd& end = server.Join()[0];
  EXPECT_EQ(end.error, "");
  ExpectOffloaded(end, Offload::kKernel, Offload::kKernel, "the server");
  EXPECT_EQ(ending.data, data) << "the data before the alert should be delivered";
  ASSERT_TRUE(ending.error) << "a fatal alert should be an error"
                            << (ending.end_of_stream ? ", not end_of_stream" : "");
  EXPECT_EQ(ending.error->category, ErrorCategory::kAlert) << ending.error->ToString();
  EXPECT_EQ(ending.error->tls_alert, kAlertHandshakeFailure);
  EXPECT_NE(ending.error->detail.find("handshake_failure"), std::string::npos)
      << "the error should name the alert: " << ending.error->detail;
  ASSERT_TRUE(ending.later_error);
  EXPECT_EQ(ending.later_error->category, ErrorCategory::kClosed) << ending.later_error->ToString();
}

class OffloadResetKernelTest : public ::testing::TestWithParam<RxOffload> {};

// A reset is no truncation, even once its error is gone: kTLS's sendmsg
// consumes a pending reset's error (sk_err) while still returning the bytes
// it took, as when a client vanishes in the middle of a large send, and the
// next read then sees only an end of stream. Here the server consumes the
// error itself (SO_ERROR) once the client's reset is in, then reads: that
// must be ECONNRESET, with RX in the kernel or in OpenSSL.
TEST_P(OffloadResetKernelTest, ResetIsReportedAfterItsErrorWasConsumed) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  ServerConfig config = ServerFor();
  config.offload.rx = GetParam();
  const Bytes data = RandomBytes(3000);
  std::promise<void> data_read;
  int consumed_error = 0;
  std::optional<Error> read_error;
  TestServer server(config, 1, [&](Connection& conn, ServerEnd& end) {
    Bytes got;
    end.error = ReadExactly(conn, data.size(), got);
    data_read.set_value();
    if (!end.error.empty()) return;
    pollfd pfd{conn.fd(), 0, 0};  // POLLERR and POLLHUP are always reported.
    if (::poll(&pfd, 1, static_cast<int>(std::chrono::milliseconds(kIoTimeout).count())) != 1) {
      end.error = "the client's reset did not arrive";
      return;
    }
    socklen_t len = sizeof(consumed_error);
    ::getsockopt(conn.fd(), SOL_SOCKET, SO_ERROR, &consumed_error, &len);
    std::array<std::byte, 64> buf{};
    auto again = conn.Read(buf);
    if (!again.ok()) read_error = again.error();
  });
  ASSERT_TRUE(server.ok()) << server.listen_error();
  auto conn = ConnectTo(server.port(), ClientFor());
  ASSERT_TRUE(conn.ok()) << "Connect: " << conn.error().ToString();
  ASSERT_TRUE(server.WaitHandshaken(1)) << "the server should have finished handshake and offload";
  ASSERT_EQ(WriteAll(*conn, data), "");
  data_read.get_future().wait();
  const linger reset{1, 0};  // close() sends a reset.
  ASSERT_EQ(::setsockopt(conn->fd(), SOL_SOCKET, SO_LINGER, &reset, sizeof(reset)), 0);
  conn->Close();

  const ServerEnd& end = server.Join()[0];
  EXPECT_EQ(end.error, "");
  ExpectOffloaded(end, Offload::kKernel, GetParam() == RxOffload::kOn ? Offload::kKernel : Offload::kUser,
                  "the server");
  EXPECT_EQ(consumed_error, ECONNRESET) << "the reset should have been pending";
  ASSERT_TRUE(read_error) << "a Read after a reset should fail";
  EXPECT_EQ(read_error->category, ErrorCategory::kIo) << read_error->ToString();
  EXPECT_EQ(read_error->sys_errno, ECONNRESET) << read_error->ToString();
}

INSTANTIATE_TEST_SUITE_P(Rx, OffloadResetKernelTest, ::testing::Values(RxOffload::kOn, RxOffload::kOff),
                         [](const ::testing::TestParamInfo<RxOffload>& param_info) {
                           return std::string(param_info.param == RxOffload::kOn ? "InKernel" : "InOpenSsl");
                         });

// BadBytes: what a plain OpenSSL client writes straight onto its socket
// after some good records (head, then random_len random bytes), and the
// alert the server must answer with.
struct BadBytes {
  const char* name;
  std::vector<std::uint8_t> head;
  std::size_t random_len;
  int alert;
};

void PrintTo(const BadBytes& bad, std::ostream* out) { *out << bad.name; }

class OffloadBadRecordKernelTest : public ::testing::TestWithParam<BadBytes> {};

// Bad bytes after offload are fatal: the server's Read reports them as a
// protocol error naming the alert, and the server tells the peer so through
// its kernel TX, whatever the kernel's RX refused them with (EBADMSG,
// EMSGSIZE, EINVAL). The records before are delivered.
TEST_P(OffloadBadRecordKernelTest, IsFatalAndAnsweredWithTheRightAlert) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  const BadBytes& bad = GetParam();
  RxEnding ending;
  TestServer server(ServerFor(), 1, ReadUntilEnding(ending));
  ASSERT_TRUE(server.ok()) << server.listen_error();
  const UniqueSslCtx client_ctx = NewTestContext(false);
  ASSERT_TRUE(client_ctx);
  PlainPeer client;
  ASSERT_EQ(ConnectPlain(client_ctx.get(), server.port(), nullptr, client), "");
  ASSERT_TRUE(server.WaitHandshaken(1)) << "the server should have finished handshake and offload";
  const Bytes data = RandomBytes(3000);
  ASSERT_EQ(SslWriteAll(client.ssl.get(), data), "");
  Bytes bytes = bad.head;
  const Bytes tail = RandomBytes(bad.random_len);
  bytes.insert(bytes.end(), tail.begin(), tail.end());
  ASSERT_TRUE(testing::WriteAll(client.fd.get(), bytes));

  const ServerEnd& end = server.Join()[0];
  EXPECT_EQ(end.error, "");
  ExpectOffloaded(end, Offload::kKernel, Offload::kKernel, "the server");
  EXPECT_EQ(ending.data, data) << "the records before the bad bytes should be delivered";
  ASSERT_TRUE(ending.error) << "bad bytes should be an error";
  EXPECT_EQ(ending.error->category, ErrorCategory::kProtocol) << ending.error->ToString();
  EXPECT_EQ(ending.error->tls_alert, bad.alert) << ending.error->ToString();
  EXPECT_NE(ending.error->detail.find(std::string(AlertName(bad.alert))), std::string::npos)
      << "the error should name the alert: " << ending.error->detail;

  // The client reads the server's tickets, then its alert.
  std::uint8_t byte = 0;
  std::size_t n = 0;
  ERR_clear_error();
  const int ret = SSL_read_ex(client.ssl.get(), &byte, 1, &n);
  ASSERT_NE(ret, 1) << "no data should follow";
  EXPECT_EQ(SSL_get_error(client.ssl.get(), ret), SSL_ERROR_SSL) << SslFailure(client.ssl.get(), ret, "SSL_read");
  EXPECT_EQ(ERR_GET_REASON(ERR_peek_last_error()), SSL_AD_REASON_OFFSET + bad.alert)
      << "the client should have received a " << AlertName(bad.alert) << " alert: " << OpenSslErrors();
}

INSTANTIATE_TEST_SUITE_P(
    Bytes, OffloadBadRecordKernelTest,
    ::testing::Values(
        // An application-data record of 32 random bytes: no key makes that a
        // valid AEAD ciphertext and tag (the kernel: EBADMSG).
        BadBytes{"RecordFailingAuthentication", {23, 3, 3, 0, 32}, 32, 20},
        // Longer than a TLS 1.3 record may be, 2^14 + 256 (EMSGSIZE).
        BadBytes{"OversizedRecord", {23, 3, 3, 0x41, 0x01}, 4096, 22},
        // Plain text where a record belongs: "ET" is no record version
        // (EINVAL), and OpenSSL answers such bytes with protocol_version.
        BadBytes{"BytesThatAreNoRecord",
                 {'G', 'E', 'T', ' ', '/', ' ', 'H', 'T', 'T', 'P', '/', '1', '.', '1', '\r', '\n', '\r', '\n'},
                 0,
                 70}),
    [](const ::testing::TestParamInfo<BadBytes>& param_info) { return std::string(param_info.param.name); });

// ConnectPlainTo: a plain OpenSSL client of server, handshaken (the SSL
// keeps its own reference to the context).
void ConnectPlainTo(const TestServer& server, PlainPeer& client) {
  ASSERT_TRUE(server.ok()) << server.listen_error();
  const UniqueSslCtx client_ctx = NewTestContext(false);
  ASSERT_TRUE(client_ctx);
  ASSERT_EQ(ConnectPlain(client_ctx.get(), server.port(), nullptr, client), "");
}

// Our Shutdown, with TX in the kernel, sends close_notify as an alert
// record: a plain OpenSSL client reads the data, then SSL_ERROR_ZERO_RETURN.
TEST(OffloadEndOfStreamKernelTest, ShutdownSendsCloseNotifyToPlainPeer) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  const Bytes data = RandomBytes(3000);
  RxEnding ending;
  TestServer server(ServerFor(), 1, [&](Connection& conn, ServerEnd& end) {
    if (end.error = WriteAll(conn, data); !end.error.empty()) return;
    if (end.error = ShutdownText(conn); !end.error.empty()) return;
    Bytes rest;
    end.error = ReadToEnd(conn, rest);  // The client's close_notify.
  });
  PlainPeer client;
  ASSERT_NO_FATAL_FAILURE(ConnectPlainTo(server, client));
  Bytes received;
  ASSERT_EQ(SslReadExactly(client.ssl.get(), data.size(), received), "");
  EXPECT_EQ(received, data);
  EXPECT_EQ(SslExpectCloseNotify(client.ssl.get()), "")
      << "the plain peer should see our close_notify as SSL_ERROR_ZERO_RETURN";
  EXPECT_EQ(SSL_shutdown(client.ssl.get()), 1) << "both close_notify alerts exchanged";
  const ServerEnd& end = server.Join()[0];
  EXPECT_EQ(end.error, "");
  ExpectOffloaded(end, Offload::kKernel, Offload::kKernel, "the server");
}

// Shutdown sends our FIN after close_notify (with kCloseNotifyOnly it
// leaves it to Close); the lingering close that follows (a blocking Close
// while the peer has not closed yet) sends it if Shutdown did not, and
// never shuts the socket a second time.
class ShutdownFinKernelTest : public ::testing::TestWithParam<ShutdownFlags> {};

TEST_P(ShutdownFinKernelTest, ThenALingeringCloseShutTheSocketOnce) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  std::atomic<int> after_shutdown = -1;
  std::atomic<int> after_close = -1;
  TestServer server(ServerFor(), 1, [&](Connection& conn, ServerEnd& end) {
    ClearFaults();
    if (end.error = WriteAll(conn, Bytes{'x'}); !end.error.empty()) return;
    if (auto shut = conn.Shutdown(GetParam()); !shut.ok()) {
      end.error = shut.error().ToString();
      return;
    }
    after_shutdown = CallCount(Syscall::kShutdown);
    conn.Close();  // Lingers until the client closes.
    after_close = CallCount(Syscall::kShutdown);
  });
  PlainPeer client;
  ASSERT_NO_FATAL_FAILURE(ConnectPlainTo(server, client));
  Bytes received;
  ASSERT_EQ(SslReadExactly(client.ssl.get(), 1, received), "");
  EXPECT_EQ(SslExpectCloseNotify(client.ssl.get()), "");
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // The server is lingering by now.
  client = PlainPeer();  // Closes the socket.
  EXPECT_EQ(server.Join()[0].error, "");
  EXPECT_EQ(after_shutdown.load(), GetParam() == ShutdownFlags::kNone ? 1 : 0);
  EXPECT_EQ(after_close.load(), 1);
}

// A lingering close whose peer has closed already (the usual end of a
// client's connection) learns it from its first read and shuts nothing:
// close() follows at once.
TEST(ShutdownFinKernelTest, ALingeringCloseAfterThePeerClosedShutsNothing) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  std::atomic<int> shutdowns = -1;
  std::atomic<int> reads = -1;
  ServerConfig config = ServerFor();
  config.offload.rx = RxOffload::kOn;  // Kernel RX on 6.1 too: its reads are counted.
  TestServer server(config, 1, [&](Connection& conn, ServerEnd& end) {
    if (end.error = WriteAll(conn, Bytes{'x'}); !end.error.empty()) return;
    if (auto shut = conn.Shutdown(ShutdownFlags::kCloseNotifyOnly); !shut.ok()) {
      end.error = shut.error().ToString();
      return;
    }
    pollfd pfd{conn.fd(), POLLRDHUP, 0};  // The client's FIN, unread.
    if (::poll(&pfd, 1, 10'000) != 1) {
      end.error = "the client did not close";
      return;
    }
    ClearFaults();
    conn.Close();  // Owes a linger: it has not read the client's end yet.
    shutdowns = CallCount(Syscall::kShutdown);
    reads = CallCount(Syscall::kRecvMsg);
  });
  PlainPeer client;
  ASSERT_NO_FATAL_FAILURE(ConnectPlainTo(server, client));
  Bytes received;
  ASSERT_EQ(SslReadExactly(client.ssl.get(), 1, received), "");
  EXPECT_EQ(SslExpectCloseNotify(client.ssl.get()), "");
  client = PlainPeer();  // Closes the socket.
  EXPECT_EQ(server.Join()[0].error, "");
  EXPECT_EQ(shutdowns.load(), 0) << "no FIN of our own before close(), which sends it";
  EXPECT_EQ(reads.load(), 1) << "one read, which finds the client's end";
}

// A lingering close reads on through a KeyUpdate: the kernel pauses RX
// after its record (Linux 6.14+), and what follows needs the next key, so
// the linger re-keys RX, as Read does; closing with the rest unread would
// reset the connection. A kernel that cannot re-key ends the linger there.
TEST(ShutdownFinKernelTest, ALingeringCloseReadsThroughAKeyUpdate) {
  KTLS_REQUIRE_KTLS_OR_SKIP();
  std::atomic<std::uint64_t> rx_key_updates = 99;
  ServerConfig config = ServerFor();
  config.offload.rx = RxOffload::kOn;  // Kernel RX on 6.1 too.
  TestServer server(config, 1, [&](Connection& conn, ServerEnd& end) {
    if (end.error = WriteAll(conn, Bytes{'x'}); !end.error.empty()) return;
    if (auto shut = conn.Shutdown(ShutdownFlags::kNone); !shut.ok()) {
      end.error = shut.error().ToString();
      return;
    }
    conn.Close();  // Lingers until the client closes.
    rx_key_updates = conn.rx_key_updates();
  });
  PlainPeer client;
  ASSERT_NO_FATAL_FAILURE(ConnectPlainTo(server, client));
  Bytes received;
  ASSERT_EQ(SslReadExactly(client.ssl.get(), 1, received), "");
  EXPECT_EQ(SslExpectCloseNotify(client.ssl.get()), "");
  // The server lingers now: a KeyUpdate, then data under the next key.
  ASSERT_EQ(SSL_key_update(client.ssl.get(), SSL_KEY_UPDATE_NOT_REQUESTED), 1);
  ASSERT_EQ(SslWriteAll(client.ssl.get(), Bytes(1000, 'y')), "");
  client = PlainPeer();  // Closes the socket.
  EXPECT_EQ(server.Join()[0].error, "");
  EXPECT_EQ(rx_key_updates.load(), CachedCapabilities().rekey ? 1U : 0U)
      << "the linger should re-key RX at the KeyUpdate where the kernel can";
}

INSTANTIATE_TEST_SUITE_P(Flags, ShutdownFinKernelTest,
                         ::testing::Values(ShutdownFlags::kNone, ShutdownFlags::kCloseNotifyOnly),
                         [](const ::testing::TestParamInfo<ShutdownFlags>& info) {
                           return std::string(info.param == ShutdownFlags::kNone ? "Fin" : "CloseNotifyOnly");
                         });

}  // namespace
}  // namespace ktls::testing
