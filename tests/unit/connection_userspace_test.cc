// Connections whose directions stay in OpenSSL: the fallback every host
// gets when the kernel cannot take over. The ULP is made to fail through the
// seam, so these run the same on any host, with or without kTLS.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/self_signed.h"
#include "kernel/tls_uapi.h"
#include "ktls/client.h"
#include "ktls/move.h"
#include "ktls/server.h"
#include "tests/support/fault_syscalls.h"
#include "tests/support/sockets.h"
#include "tests/support/tls_peers.h"

namespace ktls {
namespace {

using testing::Fault;
using testing::Syscall;

std::span<const std::byte> AsBytes(const std::vector<std::uint8_t>& v) {
  return std::as_bytes(std::span(v.data(), v.size()));
}

// ReadAll reads until end_of_stream or error; returns what was read.
std::vector<std::uint8_t> ReadAll(Connection& conn, Error* error_out = nullptr) {
  std::vector<std::uint8_t> out;
  std::vector<std::byte> buf(70000);
  for (;;) {
    auto got = conn.Read(buf);
    if (!got.ok()) {
      if (error_out) *error_out = got.error();
      return out;
    }
    if (got->end_of_stream) return out;
    const auto* p = reinterpret_cast<const std::uint8_t*>(buf.data());
    out.insert(out.end(), p, p + got->bytes);
  }
}

// TempFileWith: an unlinked temporary file holding content, to send from;
// -1 on failure. The caller closes it.
// EchoUntilCloseNotify: the server side of an echo, then its close_notify.
void EchoUntilCloseNotify(Connection& conn) {
  std::vector<std::byte> buf(50000);
  for (;;) {
    auto got = conn.Read(buf);
    ASSERT_TRUE(got.ok()) << got.error().ToString();
    if (got->end_of_stream) break;
    ASSERT_TRUE(conn.WriteAll(std::span(buf.data(), got->bytes)).ok());
  }
  ASSERT_TRUE(conn.Shutdown().ok());
}

int TempFileWith(const std::vector<std::uint8_t>& content) {
  char path[] = "/tmp/ktls-sendfile-XXXXXX";
  const int file = ::mkstemp(path);
  if (file < 0) return -1;
  ::unlink(path);
  if (!testing::WriteAll(file, content)) {
    ::close(file);
    return -1;
  }
  return file;
}

class UserspaceConnection : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string error;
    ASSERT_TRUE(tools::MakeSelfSigned(cert_, error)) << error;
    testing::ClearFaults();
    // The kernel refuses the "tls" ULP: everything stays in OpenSSL.
    testing::InjectFault(Fault{.call = Syscall::kSetSockOpt, .err = ENOENT, .level = detail::uapi::kSolTcp,
                               .name = detail::uapi::kTcpUlp, .times = -1});
    ServerConfig config;
    config.cert_file = cert_.cert_file;
    config.key_file = cert_.key_file;
    config.alpn = {"echo/1"};
    config.offload.on_fallback = [this](const OffloadReport& report) { server_reason_ = report.reason; };
    auto listener = Listener::Listen("127.0.0.1:0", config);
    ASSERT_TRUE(listener.ok()) << listener.error().ToString();
    listener_ = std::make_unique<Listener>(std::move(listener).value());
  }
  void TearDown() override { testing::ClearFaults(); }

  ClientConfig ClientFor() {
    ClientConfig config;
    config.ca_file = cert_.cert_file;
    config.sni = "localhost";
    config.alpn = {"echo/1"};
    return config;
  }

  tools::SelfSigned cert_;
  std::unique_ptr<Listener> listener_;
  std::string server_reason_;
};

// Echo with one thread writing while another reads the same connection:
// OpenSSL forbids concurrent calls on one SSL, so the Connection must
// serialise them without blocking the reader against the writer.
TEST_F(UserspaceConnection, ConcurrentReadAndWriteEchoIsExact) {
  std::thread server([&] {
    auto conn = listener_->Accept();
    ASSERT_TRUE(conn.ok()) << conn.error().ToString();
    EchoUntilCloseNotify(*conn);
  });
  auto conn = Connect("127.0.0.1", static_cast<std::uint16_t>(listener_->port()), ClientFor());
  ASSERT_TRUE(conn.ok()) << conn.error().ToString();
  EXPECT_EQ(conn->tx(), Offload::kUser);
  EXPECT_EQ(conn->rx(), Offload::kUser);
  EXPECT_EQ(conn->session().protocol, "TLSv1.3");
  EXPECT_EQ(conn->session().alpn, "echo/1");

  const auto payload = testing::RandomBytes(6 * 1024 * 1024 + 17);
  std::thread writer([&] {
    for (std::size_t off = 0; off < payload.size(); off += 100'003) {
      const std::size_t len = std::min<std::size_t>(100'003, payload.size() - off);
      auto put = conn->WriteAll(AsBytes(payload).subspan(off, len));
      ASSERT_TRUE(put.ok()) << put.error().ToString();
    }
    ASSERT_TRUE(conn->Shutdown().ok());
  });
  Error error;
  const auto echoed = ReadAll(*conn, &error);
  writer.join();
  server.join();
  EXPECT_EQ(error.detail, "") << error.ToString();
  EXPECT_EQ(testing::Sha256Hex(echoed), testing::Sha256Hex(payload));
  // The ULP fault refused it; a library built without kernel TLS never asks.
  EXPECT_NE(server_reason_.find(KTLS_KERNEL_TLS ? "TCP_ULP" : "built without kernel TLS"), std::string::npos)
      << server_reason_;
}

TEST_F(UserspaceConnection, FinWithoutCloseNotifyIsTruncationNotEndOfStream) {
  Error server_error;
  std::vector<std::uint8_t> got;
  std::thread server([&] {
    auto conn = listener_->Accept();
    ASSERT_TRUE(conn.ok()) << conn.error().ToString();
    got = ReadAll(*conn, &server_error);
  });
  auto conn = Connect("127.0.0.1", static_cast<std::uint16_t>(listener_->port()), ClientFor());
  ASSERT_TRUE(conn.ok()) << conn.error().ToString();
  const std::vector<std::uint8_t> hello = {'h', 'i'};
  ASSERT_TRUE(conn->WriteAll(AsBytes(hello)).ok());
  ::shutdown(conn->fd(), SHUT_WR);  // FIN, no close_notify.
  server.join();
  EXPECT_EQ(got, hello);
  EXPECT_EQ(server_error.category, ErrorCategory::kTruncated) << server_error.ToString();
}

// A record longer than TLS allows: OpenSSL refuses it and sends
// record_overflow. The server's error names the alert it sent, as it does
// with RX in the kernel, and the client receives that alert.
TEST_F(UserspaceConnection, BadRecordErrorNamesTheAlertSent) {
  constexpr int kAlertRecordOverflow = 22;
  Error server_error;
  std::vector<std::uint8_t> got;
  std::thread server([&] {
    auto conn = listener_->Accept();
    ASSERT_TRUE(conn.ok()) << conn.error().ToString();
    got = ReadAll(*conn, &server_error);
  });
  auto conn = Connect("127.0.0.1", static_cast<std::uint16_t>(listener_->port()), ClientFor());
  ASSERT_TRUE(conn.ok()) << conn.error().ToString();
  const std::vector<std::uint8_t> hello = {'h', 'i'};
  ASSERT_TRUE(conn->WriteAll(AsBytes(hello)).ok());
  const std::vector<std::uint8_t> oversized_header = {23, 3, 3, 0x41, 0x01};  // 2^14 + 257 bytes.
  ASSERT_TRUE(testing::WriteAll(conn->fd(), oversized_header));
  server.join();
  EXPECT_EQ(got, hello);
  EXPECT_EQ(server_error.category, ErrorCategory::kProtocol) << server_error.ToString();
  EXPECT_EQ(server_error.tls_alert, kAlertRecordOverflow) << server_error.ToString();
  EXPECT_NE(server_error.detail.find("(record_overflow)"), std::string::npos) << server_error.ToString();
  Error client_error;
  ReadAll(*conn, &client_error);
  EXPECT_EQ(client_error.category, ErrorCategory::kAlert) << client_error.ToString();
  EXPECT_EQ(client_error.tls_alert, kAlertRecordOverflow) << client_error.ToString();
}

TEST_F(UserspaceConnection, SendFileFromOffsetsWithoutKernelTx) {
  const auto content = testing::RandomBytes(300'000);
  const int file = TempFileWith(content);
  ASSERT_GE(file, 0);

  const std::vector<std::pair<off_t, std::size_t>> pieces = {{0, 1}, {1, 16383}, {16384, 16385}, {150'000, 150'000}};
  std::vector<std::uint8_t> received;
  std::thread server([&] {
    auto conn = listener_->Accept();
    ASSERT_TRUE(conn.ok()) << conn.error().ToString();
    received = ReadAll(*conn);
  });
  auto conn = Connect("127.0.0.1", static_cast<std::uint16_t>(listener_->port()), ClientFor());
  ASSERT_TRUE(conn.ok()) << conn.error().ToString();
  std::vector<std::uint8_t> expected;
  for (auto [offset, count] : pieces) {
    std::size_t sent = 0;
    while (sent < count) {
      auto r = conn->SendFile(file, offset + static_cast<off_t>(sent), count - sent);
      ASSERT_TRUE(r.ok()) << r.error().ToString();
      ASSERT_GT(r->bytes, 0u);
      sent += r->bytes;
    }
    expected.insert(expected.end(), content.begin() + offset, content.begin() + offset + static_cast<off_t>(count));
  }
  ASSERT_TRUE(conn->Shutdown().ok());
  server.join();
  ::close(file);
  EXPECT_EQ(testing::Sha256Hex(received), testing::Sha256Hex(expected));
}

// WriteFlags::kMore with TX in OpenSSL: the held bytes lead the next
// record. The reader is OpenSSL with read-ahead off, whose every Read
// returns one record's plaintext, so each Read below is one record.
TEST_F(UserspaceConnection, WriteMoreSharesTheNextRecord) {
  const auto content = testing::RandomBytes(40'000);
  const int file = TempFileWith(content);
  ASSERT_GE(file, 0);
  const std::string header = "HTTP/1.1 200 OK\r\n\r\n";
  const auto header_bytes = std::as_bytes(std::span(header.data(), header.size()));
  std::vector<std::vector<std::uint8_t>> records;
  std::thread server([&] {
    auto conn = listener_->Accept();
    ASSERT_TRUE(conn.ok()) << conn.error().ToString();
    std::vector<std::byte> buf(70000);
    for (;;) {
      auto got = conn->Read(buf);
      ASSERT_TRUE(got.ok()) << got.error().ToString();
      if (got->end_of_stream) return;
      const auto* p = reinterpret_cast<const std::uint8_t*>(buf.data());
      records.emplace_back(p, p + got->bytes);
    }
  });
  auto conn = Connect("127.0.0.1", static_cast<std::uint16_t>(listener_->port()), ClientFor());
  ASSERT_TRUE(conn.ok()) << conn.error().ToString();
  // 1: header (held) + a small body in one Write: one record.
  auto held = conn->Write(header_bytes, WriteFlags::kMore);
  ASSERT_TRUE(held.ok()) << held.error().ToString();
  EXPECT_EQ(held->bytes, header.size()) << "held bytes count as written";
  ASSERT_TRUE(conn->WriteAll(AsBytes(std::vector<std::uint8_t>{'b', 'o', 'd', 'y'})).ok());
  // 2: header (held) + a file: the first record is the header and the
  // file's first bytes, 16 KiB in all.
  ASSERT_TRUE(conn->Write(header_bytes, WriteFlags::kMore).ok());
  std::size_t sent = 0;
  while (sent < content.size()) {
    auto r = conn->SendFile(file, static_cast<off_t>(sent), content.size() - sent);
    ASSERT_TRUE(r.ok()) << r.error().ToString();
    sent += r->bytes;
  }
  // 3: without kMore, a header is a record of its own.
  ASSERT_TRUE(conn->Write(header_bytes).ok());
  ASSERT_TRUE(conn->WriteAll(AsBytes(std::vector<std::uint8_t>{'x'})).ok());
  // 4: held bytes go out before close_notify.
  ASSERT_TRUE(conn->Write(header_bytes, WriteFlags::kMore).ok());
  ASSERT_TRUE(conn->Shutdown().ok());
  server.join();
  ::close(file);

  const std::vector<std::uint8_t> head(header.begin(), header.end());
  auto joined = [](std::vector<std::uint8_t> a, const std::vector<std::uint8_t>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  };
  ASSERT_GE(records.size(), 6u);
  EXPECT_EQ(records[0], joined(head, {'b', 'o', 'd', 'y'}));
  const auto first_part = static_cast<long>(16384 - head.size());
  EXPECT_EQ(records[1], joined(head, std::vector<std::uint8_t>(content.begin(), content.begin() + first_part)));
  std::vector<std::uint8_t> file_rest;
  std::size_t i = 2;
  while (i < records.size() && file_rest.size() < content.size() - static_cast<std::size_t>(first_part)) {
    file_rest = joined(file_rest, records[i++]);
  }
  EXPECT_EQ(file_rest, std::vector<std::uint8_t>(content.begin() + first_part, content.end()));
  ASSERT_EQ(records.size(), i + 3);
  EXPECT_EQ(records[i], head);
  EXPECT_EQ(records[i + 1], std::vector<std::uint8_t>{'x'});
  EXPECT_EQ(records[i + 2], head);
}

TEST_F(UserspaceConnection, WrongCaFailsHandshakeNamingVerification) {
  std::thread server([&] { (void)listener_->Accept(); });
  tools::SelfSigned other;
  std::string error;
  ASSERT_TRUE(tools::MakeSelfSigned(other, error)) << error;
  ClientConfig config = ClientFor();
  config.ca_file = other.cert_file;
  auto conn = Connect("127.0.0.1", static_cast<std::uint16_t>(listener_->port()), config);
  server.join();
  ASSERT_FALSE(conn.ok());
  EXPECT_NE(conn.error().detail.find("certificate verif"), std::string::npos) << conn.error().ToString();
}

// OffloadOptions::keep_peer_certificates = false: the server's SessionInfo
// keeps no certificate of the client (that is the memory it saves on every
// connection), and the rest of the session as before. The client, with the
// default, still keeps the server's.
TEST_F(UserspaceConnection, PeerCertificatesAreNotKeptWhenAskedNotTo) {
  ServerConfig config;
  config.cert_file = cert_.cert_file;
  config.key_file = cert_.key_file;
  config.client_ca_file = cert_.cert_file;  // Mutual TLS; the client presents the same certificate.
  config.alpn = {"echo/1"};
  config.offload.keep_peer_certificates = false;
  auto listener = Listener::Listen("127.0.0.1:0", config);
  ASSERT_TRUE(listener.ok()) << listener.error().ToString();
  std::optional<Result<Connection>> accepted;
  std::thread server([&] { accepted.emplace(listener->Accept()); });
  ClientConfig client_config = ClientFor();
  client_config.cert_file = cert_.cert_file;
  client_config.key_file = cert_.key_file;
  auto conn = Connect("127.0.0.1", static_cast<std::uint16_t>(listener->port()), client_config);
  server.join();
  ASSERT_TRUE(conn.ok()) << conn.error().ToString();
  ASSERT_TRUE(accepted.has_value() && accepted->ok()) << (accepted ? accepted->error().ToString() : "no accept");
  const SessionInfo& session = (*accepted)->session();
  EXPECT_TRUE(session.peer_certificates.empty()) << "the client's certificate should not have been kept";
  EXPECT_EQ(session.protocol, "TLSv1.3");
  EXPECT_EQ(session.alpn, "echo/1");
  EXPECT_FALSE(session.cipher_suite.empty());
  EXPECT_EQ(conn->session().peer_certificates.size(), 1u) << "the client keeps the server's certificate by default";
}

TEST_F(UserspaceConnection, EmptyConnectionIsUsageError) {
  Connection empty;
  std::byte b[1];
  EXPECT_EQ(empty.Read(b).error().category, ErrorCategory::kUsage);
  EXPECT_EQ(empty.SpliceRead(1, 1).error().category, ErrorCategory::kUsage);
  EXPECT_EQ(empty.SpliceWrite(0, 1).error().category, ErrorCategory::kUsage);
  EXPECT_EQ(empty.fd(), -1);
  EXPECT_EQ(empty.Export().error().category, ErrorCategory::kUsage);
}

// A connection with its directions in OpenSSL cannot move to another
// process: Export and SendConnection say why, and it goes on here.
TEST_F(UserspaceConnection, CannotMoveWithDirectionsInOpenSslAndGoesOn) {
  int unix_pair[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, unix_pair), 0);
  std::string export_error, send_error;
  std::thread server([&] {
    auto conn = listener_->Accept();
    ASSERT_TRUE(conn.ok()) << conn.error().ToString();
    auto exported = conn->Export();
    ASSERT_FALSE(exported.ok());
    EXPECT_EQ(exported.error().category, ErrorCategory::kUnsupported);
    export_error = exported.error().detail;
    auto sent = SendConnection(unix_pair[0], *conn);
    ASSERT_FALSE(sent.ok());
    send_error = sent.error().detail;
    EchoUntilCloseNotify(*conn);
  });
  auto conn = Connect("127.0.0.1", static_cast<std::uint16_t>(listener_->port()), ClientFor());
  ASSERT_TRUE(conn.ok()) << conn.error().ToString();
  const auto payload = testing::RandomBytes(100'000);
  ASSERT_TRUE(conn->WriteAll(AsBytes(payload)).ok());
  ASSERT_TRUE(conn->Shutdown().ok());
  Error error;
  const auto echoed = ReadAll(*conn, &error);
  server.join();
  EXPECT_EQ(error.detail, "");
  EXPECT_EQ(testing::Sha256Hex(echoed), testing::Sha256Hex(payload));
  EXPECT_NE(export_error.find("TX is in OpenSSL"), std::string::npos) << export_error;
  EXPECT_EQ(send_error, export_error);
  // Nothing was sent: the other end has nothing to read.
  char byte;
  EXPECT_EQ(::recv(unix_pair[1], &byte, 1, MSG_DONTWAIT), -1);
  ::close(unix_pair[0]);
  ::close(unix_pair[1]);
}

// The splice copy path: a library built without kernel TLS has no splice
// (SpliceRead and SpliceWrite answer kUnsupported before they get here:
// no_kernel_tls_test.cc), so these tests are in the other build only.
#if KTLS_KERNEL_TLS
// Pipe: both ends of a pipe (pipe2 flags), closed on destruction.
struct Pipe {
  explicit Pipe(int flags) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC | flags) == 0) read_end.reset(fds[0]), write_end.reset(fds[1]);
  }
  detail::UniqueFd read_end;
  detail::UniqueFd write_end;
};

// With both directions in OpenSSL, SpliceRead and SpliceWrite copy, and
// say so: an echo through a pipe is exact, and every byte was copied.
TEST_F(UserspaceConnection, SpliceEchoCopiesEveryByteThroughOpenSsl) {
  testing::ServerEnd end;
  std::thread server([&] {
    auto conn = listener_->Accept();
    ASSERT_TRUE(conn.ok()) << conn.error().ToString();
    testing::SpliceEcho(*conn, end);
  });
  auto conn = Connect("127.0.0.1", static_cast<std::uint16_t>(listener_->port()), ClientFor());
  ASSERT_TRUE(conn.ok()) << conn.error().ToString();
  const auto payload = testing::RandomBytes(2 * 1024 * 1024 + 5);
  std::vector<std::uint8_t> echoed;
  EXPECT_EQ(testing::EchoThrough(*conn, payload, testing::Pace::kConcurrent, echoed), "");
  server.join();
  EXPECT_EQ(end.error, "");
  EXPECT_EQ(testing::Sha256Hex(echoed), testing::Sha256Hex(payload));
  EXPECT_EQ(end.bytes_in, payload.size());
  EXPECT_EQ(end.copied_in, payload.size());
  EXPECT_EQ(end.copied_out, payload.size());
}

// A pipe with less room than a record: SpliceRead keeps what the pipe
// cannot take and delivers it first (to the next SpliceRead, or to Read),
// reports a full pipe as Wait::kPipe, and loses nothing; with a blocking
// pipe it never blocks in it either. SpliceWrite from an empty pipe is
// Wait::kPipe; a fd that is no pipe is a usage error.
class UserspaceSplicePipe : public UserspaceConnection, public ::testing::WithParamInterface<int> {};

TEST_P(UserspaceSplicePipe, SmallPipeLosesNothingAndNeverBlocks) {
  const auto payload = testing::RandomBytes(300'000);
  std::thread server([&] {
    auto conn = listener_->Accept();
    ASSERT_TRUE(conn.ok()) << conn.error().ToString();
    ASSERT_TRUE(conn->WriteAll(AsBytes(payload)).ok());
    ASSERT_TRUE(conn->Shutdown().ok());
    (void)ReadAll(*conn);
  });
  auto conn = Connect("127.0.0.1", static_cast<std::uint16_t>(listener_->port()), ClientFor());
  ASSERT_TRUE(conn.ok()) << conn.error().ToString();
  Pipe pipe(GetParam());
  ASSERT_TRUE(pipe.read_end.valid()) << std::strerror(errno);
  ASSERT_EQ(::fcntl(pipe.write_end.get(), F_SETPIPE_SZ, 4096), 4096);
  // The parameter is the write end's mode, which SpliceRead meets; this
  // test reads the other end without waiting.
  ASSERT_EQ(::fcntl(pipe.read_end.get(), F_SETFL, O_NONBLOCK), 0);

  auto empty = conn->SpliceWrite(pipe.read_end.get(), 100);
  ASSERT_TRUE(empty.ok()) << empty.error().ToString();
  EXPECT_TRUE(empty->would_block);
  EXPECT_EQ(empty->wait, Wait::kPipe);
  const detail::UniqueFd dev_null(::open("/dev/null", O_WRONLY | O_CLOEXEC));
  auto not_a_pipe = conn->SpliceRead(dev_null.get(), 100);
  ASSERT_FALSE(not_a_pipe.ok());
  EXPECT_EQ(not_a_pipe.error().category, ErrorCategory::kUsage);

  std::vector<std::uint8_t> received;
  std::uint8_t buf[8192];
  bool saw_full_pipe = false;
  bool read_held_bytes = false;
  for (;;) {
    auto got = conn->SpliceRead(pipe.write_end.get(), 64 * 1024);
    ASSERT_TRUE(got.ok()) << got.error().ToString();
    if (got->end_of_stream) break;
    EXPECT_EQ(got->copied, got->bytes);
    if (got->would_block) {
      ASSERT_EQ(got->wait, Wait::kPipe);
      saw_full_pipe = true;
      const ssize_t n = ::read(pipe.read_end.get(), buf, sizeof(buf));
      ASSERT_GT(n, 0);
      received.insert(received.end(), buf, buf + n);
      if (!read_held_bytes) {
        // What the pipe had no room for comes first to Read too.
        std::byte b[10];
        auto held = conn->Read(b);
        ASSERT_TRUE(held.ok()) << held.error().ToString();
        ASSERT_GT(held->bytes, 0u);
        const auto* p = reinterpret_cast<const std::uint8_t*>(b);
        received.insert(received.end(), p, p + held->bytes);
        read_held_bytes = true;
      }
    }
  }
  for (ssize_t n; (n = ::read(pipe.read_end.get(), buf, sizeof(buf))) > 0;) {
    received.insert(received.end(), buf, buf + n);
  }
  ASSERT_TRUE(conn->Shutdown().ok());
  server.join();
  EXPECT_TRUE(saw_full_pipe);
  EXPECT_TRUE(read_held_bytes);
  EXPECT_EQ(testing::Sha256Hex(received), testing::Sha256Hex(payload));
}

INSTANTIATE_TEST_SUITE_P(PipeModes, UserspaceSplicePipe, ::testing::Values(O_NONBLOCK, 0),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return info.param == 0 ? "BlockingPipe" : "NonBlockingPipe";
                         });
#endif  // KTLS_KERNEL_TLS

}  // namespace
}  // namespace ktls
